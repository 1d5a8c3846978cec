"""What `status` and `show` print: read from the store, rendered with tabulate."""

from __future__ import annotations

import json
import statistics
from datetime import datetime

from tabulate import tabulate

from gitevolve.errors import GitevolveError
from gitevolve.llm import ledger
from gitevolve.population import Candidate, Population, load
from gitevolve.store import Store


def population_of(store: Store) -> Population:
    state = store.ref_state()
    if state.base is None:
        raise GitevolveError(f"no run {store.refs.run!r} in this repository ({store.known_runs()}): start one with "
                             f"`gitevolve run{store.refs.flag}`")
    return load(store, state)


def leaderboard(store: Store, population: Population, top: int = 0) -> dict:
    """The run as data: one row per island (best first), and the top candidates overall."""
    islands = []
    for k in population.islands:
        members = population.members(k)
        champion = population.candidates.get(population.champions[k])
        islands.append({
            "island": k,
            "branch": store.refs.island(k).removeprefix("refs/heads/"),
            "champion": population.champions[k],
            "score": champion.score if champion else None,
            "remeasured": champion.remeasured if champion else None,
            "measurements": list(champion.measurements) if champion else [],
            "subject": champion.subject if champion else "",
            "candidates": len(members),
            "ok": sum(c.status == "ok" for c in members),
            "failed": sum(c.status in ("failed", "rejected") for c in members),
            "pending": sum(c.status == "pending" for c in members),
        })
    islands.sort(key=lambda row: (row["score"] is None, -(row["score"] or 0.0), row["island"]))
    alive = sorted((c for c in population.candidates.values() if c.alive), key=lambda c: -(c.score or 0.0))
    base = population.candidates.get(population.base)
    best = alive[0] if alive else None
    return {
        "run": store.refs.run,
        "base": population.base,
        "base_score": base.score if base else None,
        "best": best.sha if best else None,
        "best_score": best.score if best else None,
        "gain": gain(best.score if best else None, base.score if base else None),
        "score_is": next((c.metrics["score_is"] for c in (best, base) if c and isinstance(c.metrics.get("score_is"), str)), None),
        "candidates": len(population.candidates),
        "islands": islands,
        "top": [_row(c) for c in alive[:top]],
        "pace": pace(population),
        "models": model_usage(store, population),
    }


def gain(score: float | None, base: float | None) -> float | None:
    """How many times the base's score `score` is; None where a ratio means nothing (a score at or below 0)."""
    if score is None or base is None or score <= 0 or base <= 0:
        return None
    return score / base


def gain_words(score: float | None, base: float | None, score_is: str | None = None) -> str:
    """'1.66x the base's 0.8200 (the score: ...)', or '' where there is no ratio to give."""
    ratio = gain(score, base)
    if ratio is None:
        return ""
    return f"{ratio:.2f}x the base's {format_score(base)}" + (f" (the score: {score_is})" if score_is else "")


def pace(population: Population) -> dict:
    """How fast the run evaluates: evaluations, their rate between the first and the last to end,
    the median seconds of each stage, and the candidates that took an earlier evaluation's result."""
    evaluated = [c for c in population.candidates.values() if c.status != "pending" and c.duplicate_of is None]
    ended = sorted(c.evaluated_at for c in evaluated if c.evaluated_at)
    minutes = None
    if len(ended) > 1:
        try:
            minutes = (datetime.fromisoformat(ended[-1]) - datetime.fromisoformat(ended[0])).total_seconds() / 60
        except ValueError:
            minutes = None
    stages: dict[str, list[float]] = {}
    for c in evaluated:
        for name, seconds in c.stage_seconds.items():
            stages.setdefault(name, []).append(seconds)
    return {
        "evaluations": len(evaluated),
        "per_minute": round((len(ended) - 1) / minutes, 2) if minutes else None,
        "stage_seconds": {name: round(statistics.median(v), 3) for name, v in stages.items()},
        "stage_runs": {name: len(v) for name, v in stages.items()},
        "duplicates": sum(c.duplicate_of is not None for c in population.candidates.values()),
    }


def model_usage(store: Store, population: Population) -> list[dict]:
    """Per model: calls, tokens and failures from the run's ledger, and how its candidates scored."""
    rows = []
    for name, usage in sorted(ledger.read(store)[1]["models"].items()):
        mine = [c for c in population.candidates.values() if c.operator == f"llm:{name}"]
        failures = usage.get("failures", {})
        rows.append({
            "model": name, "calls": usage.get("calls", 0), "retries": usage.get("retries", 0),
            "replies": usage.get("replies", 0), "proposals": usage.get("proposals", 0),
            "failed": sum(failures.values()), "failures": failures,
            "prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": usage.get("completion_tokens", 0),
            "seconds_per_reply": round(usage.get("seconds", 0.0) / max(usage.get("replies", 0), 1), 2),
            "candidates": len(mine), "ok": sum(c.status == "ok" for c in mine),
            # run by the evaluator: neither waiting nor the result of a program evaluated before
            "evaluated": sum(c.status != "pending" and c.duplicate_of is None for c in mine),
            "best": max((c.score for c in mine if c.alive), default=None),
        })
    return rows


def _row(c: Candidate) -> dict:
    return {"commit": c.sha, "island": c.island, "score": c.score, "operator": c.operator, "subject": c.subject}


def format_score(score: float | None) -> str:
    """A score as every command prints it: four decimals, '-' for none."""
    return "-" if score is None else f"{score:.4f}"


def _score_cell(row: dict) -> str:
    """The run's score, with how sure it is: the number of measurements behind it and their spread
    where the champion was measured more than once, and `promote`'s re-measured score: the best of
    many noisy draws is partly the luckiest."""
    cell = format_score(row["score"])
    scores = row.get("measurements") or []
    if len(scores) > 1 and row["score"]:
        cell += f" (n={len(scores)}, ±{(max(scores) - min(scores)) / 2 / abs(row['score']):.1%})"
    if row.get("remeasured") is not None:
        cell += f" (re-measured {format_score(row['remeasured'])})"
    return cell


def _pace_line(pace: dict) -> str:
    rate = f", {pace['per_minute']:.1f} a minute" if pace.get("per_minute") else ""
    stages = ", ".join(f"{name} {seconds:.1f} s ({pace['stage_runs'][name]} runs)"
                       for name, seconds in pace["stage_seconds"].items())
    taken = f"; {pace['duplicates']} took an earlier evaluation's result" if pace["duplicates"] else ""
    return (f"{pace['evaluations']} evaluations{rate}" + (f"; median time per stage: {stages}" if stages else "")
            + taken)


def render_leaderboard(board: dict) -> str:
    rows = [
        [r["island"], r["branch"], r["champion"][:10], _score_cell(r), f"{r['ok']}/{r['failed']}/{r['pending']}", r["subject"][:60]]
        for r in board["islands"]
    ]
    lines = [
        f"run {board['run']}: {board['candidates']} candidates from base {board['base'][:10]} (score {format_score(board['base_score'])})",
        *([f"best {board['best'][:10]}: {format_score(board['best_score'])}, {gained}"]
          if (gained := gain_words(board["best_score"], board["base_score"], board["score_is"])) else []),
        *([_pace_line(board["pace"])] if board.get("pace") else []),
        "",
        tabulate(rows, headers=["island", "branch", "champion", "score", "ok/failed/pending", "champion's last change"],
                 disable_numparse=True),
    ]
    if board["top"]:
        top = [[c["commit"][:10], "seed" if c["island"] is None else c["island"], format_score(c["score"]), c["operator"], c["subject"][:60]] for c in board["top"]]
        lines += ["", tabulate(top, headers=["commit", "island", "score", "operator", "subject"], disable_numparse=True)]
    if board.get("models"):
        rows = [[m["model"], m["calls"], m["retries"], m["failed"], f"{m['prompt_tokens']:,} / {m['completion_tokens']:,}",
                 m["seconds_per_reply"], f"{m['candidates']} ({m['ok']} ok)", format_score(m["best"])] for m in board["models"]]
        lines += ["", tabulate(rows, headers=["model", "calls", "retries", "failed", "tokens in / out", "s per reply",
                                              "candidates", "best"])]
        said = [f"{m['model']}: " + ", ".join(f"{n} {kind}" for kind, n in sorted(m["failures"].items()))
                for m in board["models"] if m["failures"]]
        lines += ["failures: " + "; ".join(said)] if said else []
    return "\n".join(lines)


def show(store: Store, rev: str) -> tuple[dict | None, str]:
    """A candidate's note and its commit with the diff against its parent."""
    sha = store.resolve(rev)
    note = store.note(sha)
    parent = store.parent(sha)
    if parent is None:
        patch = store.git("show", "--stat", "--format=commit %H%n%n%B", sha)
    else:
        patch = store.git("show", "--format=commit %H%nparent %P%n%n%B", sha)
    return note, patch


def render_show(note: dict | None, patch: str, run: str) -> str:
    if note is None:
        head = f"not evaluated in run {run!r} (no note)"
    else:
        score = format_score(note.get("score"))
        where = "seed" if note.get("island") is None else f"island {note['island']}"
        head = f"{note.get('status')}  score {score}  {where}  operator {note.get('operator') or '-'}"
        if note.get("reason"):
            head += f"\nreason: {note['reason']}"
    lines = [head]
    if note and note.get("metrics"):
        lines += ["", tabulate(sorted(note["metrics"].items()), headers=["metric", "value"])]
    for name, text in sorted((note or {}).get("artifacts", {}).items()):
        lines += ["", f"--- artifact: {name} ---", text.rstrip()]
    lines += ["", patch.rstrip()]
    return "\n".join(lines)


def as_json(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=True)
