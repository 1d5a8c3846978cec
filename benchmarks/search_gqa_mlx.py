"""Whether the search operator's champion beats the tunables operator's on gqa-mlx, in a fixed time.

    python benchmarks/search_gqa_mlx.py [--minutes 10] [--seeds 0 1 2] [--operators search tunables]
        [--remeasure 2] [--keep DIR] [--json PATH] [--resume]

Issue 16's target: "on gqa-mlx, the champion after 10 minutes beats today's operator's over 3 seeds,
each champion re-measured against the base in one race". Runs the real product: per seed and
operator, a temporary git repository made by `gitevolve init --example gqa-mlx`, its `.gitevolve.yml`
given `seed: <seed>` and the operator's `mutation:` (committed: the run's base is that commit, whose
attention.py is the example's), then `gitevolve run --time <minutes>m`. The order of the operators
alternates by seed (seed 0: search then tunables, seed 1: tunables then search, ...), so that a drift
in the machine's speed falls on both.

Operators, as `.gitevolve.yml` says them: search = `mutation: {operator: search}` (Optuna's TPE, the
default of `auto` without a model), tunables = `mutation: {operator: tunables}` (the older operator
that changes tunables at random).

The run's champion is the best island champion in `gitevolve status --json`. Then the champion and
the base are checked out into two worktrees and the hook's full evaluation
(`python hooks/gqa_mlx.py --file attention.py --scenarios cpu --seconds 0.8`, the example's `full`
stage) runs in each, interleaved base, champion, champion, base (--remeasure such pairs). The ratio
is mean(champion scores) / mean(base scores): 1.10 means the champion is 10% faster than where the
run started, as measured in one sitting. A seed's "search beats tunables" is search's ratio above
tunables' ratio.

Per operator and seed the table gives the score the run saw, the re-measured ratio, the number of
evaluations (`pace` in `status --json`: duplicates excluded) and their rate; then per operator the
median ratio over seeds. Every raw score, the commits and the champions' settings (their notes)
go to benchmarks/results/search_gqa_mlx.json (or --json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

import gitevolve

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent
GITEVOLVE = [str(BIN / "gitevolve")] if (BIN / "gitevolve").exists() else [sys.executable, "-m", "gitevolve"]
HOOK = ["hooks/gqa_mlx.py", "--file", "attention.py", "--scenarios", "cpu", "--seconds", "0.8"]

MUTATION = {
    "search": "mutation: {operator: search}",
    "tunables": "mutation: {operator: tunables}",
}


def git_env() -> dict[str, str]:
    # GIT_DIR & co. set by a calling git hook would point gitevolve at another repository.
    return {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=git_env(), check=True, capture_output=True,
                          text=True).stdout.strip()


def make_repo(path: Path, operator: str, seed: int) -> None:
    """An empty commit, the gqa-mlx example committed by `gitevolve init`, then the seed and operator."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "bench")
    git(path, "config", "user.email", "bench@localhost")
    git(path, "commit", "-q", "--allow-empty", "-m", "Empty")
    subprocess.run([*GITEVOLVE, "init", "--example", "gqa-mlx"], cwd=path, env=git_env(), check=True,
                   capture_output=True, text=True)
    config = path / ".gitevolve.yml"
    text = config.read_text()
    text, seeds = re.subn(r"^seed:.*$", f"seed: {seed}", text, flags=re.M)
    text, mutations = re.subn(r"^mutation:.*$", MUTATION[operator], text, flags=re.M)
    if seeds != 1 or mutations != 1:
        raise SystemExit(f"{path.name}: .gitevolve.yml has {seeds} `seed:` and {mutations} `mutation:` lines, not one each")
    config.write_text(text)
    git(path, "commit", "-q", "-am", f"Benchmark: seed {seed}, operator {operator}")


def gitevolve_run(repo: Path, minutes: float, log: Path) -> dict:
    """`gitevolve run --time`: its seconds, start-up included, its exit status and last line."""
    began = time.monotonic()
    try:
        done = subprocess.run([*GITEVOLVE, "run", "--time", f"{minutes:g}m"], cwd=repo, env=git_env(),
                              capture_output=True, text=True, timeout=minutes * 60 + 300)
        out, rc = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        rc = "timeout"
    seconds = time.monotonic() - began
    log.write_text(out)
    lines = [line for line in out.strip().splitlines() if line.strip()]
    return {"seconds": seconds, "returncode": rc, "done": next((line for line in lines if line.startswith("Done:")), None),
            "last_line": lines[-1] if lines else ""}


def status(repo: Path) -> dict:
    done = subprocess.run([*GITEVOLVE, "status", "--json"], cwd=repo, env=git_env(), check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout)


def note(repo: Path, sha: str) -> dict | None:
    done = subprocess.run(["git", "notes", "--ref=gitevolve", "show", sha], cwd=repo, env=git_env(),
                          capture_output=True, text=True)
    if done.returncode != 0:
        return None
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"unparsed": done.stdout[:2000]}


def hook_score(checkout: Path) -> dict:
    """One full evaluation by the example's hook, in `checkout`: its score (None if it failed) and status."""
    began = time.monotonic()
    done = subprocess.run([sys.executable, *HOOK], cwd=checkout, env=git_env(), capture_output=True, text=True,
                          timeout=300)
    seconds = time.monotonic() - began
    lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"score": None, "status": "unreadable", "reason": (done.stderr or done.stdout)[-500:], "seconds": seconds}
    return {"score": result.get("score") if result.get("status") == "ok" else None, "status": result.get("status"),
            "reason": result.get("reason"), "seconds": seconds}


def remeasure(repo: Path, base: str, champion: str, pairs: int) -> dict:
    """Base and champion in one race: base, champion, champion, base, ... (`pairs` of each order)."""
    checkouts = {"base": repo.parent / f"{repo.name}-wt-base", "champion": repo.parent / f"{repo.name}-wt-champion"}
    for name, sha in (("base", base), ("champion", champion)):
        git(repo, "worktree", "add", "-q", "--detach", str(checkouts[name]), sha)
    order = [name for _ in range(pairs) for name in ("base", "champion", "champion", "base")]
    measured: dict[str, list] = {"base": [], "champion": []}
    sequence = []
    try:
        for name in order:
            result = hook_score(checkouts[name])
            measured[name].append(result["score"])
            sequence.append({"which": name, **result})
    finally:
        for path in checkouts.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=repo, env=git_env(),
                           capture_output=True)
    scores = {k: [s for s in v if s is not None] for k, v in measured.items()}
    ratio = (statistics.mean(scores["champion"]) / statistics.mean(scores["base"])
             if scores["champion"] and scores["base"] else None)
    return {"base_scores": measured["base"], "champion_scores": measured["champion"], "ratio": ratio,
            "sequence": sequence, "failed": sum(s is None for v in measured.values() for s in v)}


def run_one(args: argparse.Namespace, workdir: Path, operator: str, seed: int) -> dict:
    repo = workdir / f"{operator}-seed{seed}"
    make_repo(repo, operator, seed)
    ran = gitevolve_run(repo, args.minutes, workdir / f"{repo.name}.log")
    board = status(repo)
    base = board.get("base") or git(repo, "rev-parse", "refs/gitevolve/default/base")
    scored = [row for row in board["islands"] if row["score"] is not None]
    best = max(scored, key=lambda row: row["score"], default=None)
    result = {"seed": seed, "operator": operator, "run": ran, "base": base, "base_score": board.get("base_score"),
              "base_settings": (note(repo, base) or {}).get("settings"),
              "candidates": board.get("candidates"), "pace": board.get("pace"), "islands": board["islands"]}
    if best is None:
        return {**result, "champion": None, "score": None, "note": None, "settings": None, "remeasured": None}
    champion_note = note(repo, best["champion"])
    result.update(champion=best["champion"], score=best["score"], island=best["island"], note=champion_note,
                  settings=(champion_note or {}).get("settings"), champion_is_base=best["champion"] == base)
    result["remeasured"] = remeasure(repo, base, best["champion"], args.remeasure)
    return result


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table_row(r: dict) -> list:
    pace = r.get("pace") or {}
    ratio = (r.get("remeasured") or {}).get("ratio")
    odd = []
    if r["run"]["returncode"] != 0:
        odd.append(f"exit {r['run']['returncode']}")
    if r.get("champion_is_base"):
        odd.append("champion is the base")
    if (r.get("remeasured") or {}).get("failed"):
        odd.append(f"{r['remeasured']['failed']} re-measurements failed")
    return [r["seed"], fmt(r.get("score"), ".4f"), fmt(r.get("base_score"), ".4f"), fmt(ratio, ".3f"),
            pace.get("evaluations", "-"), fmt(pace.get("per_minute"), ".2f"), f"{r['run']['seconds']:.0f}",
            (r.get("champion") or "-")[:10], ", ".join(odd)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="each run's `gitevolve run --time`")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--operators", nargs="+", default=list(MUTATION), choices=list(MUTATION))
    parser.add_argument("--remeasure", type=int, default=2, help="pairs (base, champion, champion, base) in the race")
    parser.add_argument("--keep", type=Path, help="make the repositories here and keep them (default: a temporary dir)")
    parser.add_argument("--json", type=Path, default=RESULTS / "search_gqa_mlx.json", help="where the record goes")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in --json (an interrupted benchmark) and make only the missing ones")
    args = parser.parse_args()

    started = time.monotonic()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="gitevolve-gqa-search-"))
    runs: dict[str, list[dict]] = {o: [] for o in args.operators}
    earlier = 0.0
    if args.resume and args.json.exists():
        kept = json.loads(args.json.read_text())
        earlier = kept.get("seconds", 0.0)
        for operator in args.operators:
            runs[operator] = [r for r in kept["runs"].get(operator, []) if r["seed"] in args.seeds]
    record = {"gitevolve": gitevolve.__version__, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "hook": " ".join(["python", *HOOK]), "mutation": MUTATION, "runs": runs}

    def save() -> None:
        record["seconds"] = earlier + time.monotonic() - started
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")

    try:
        workdir.mkdir(parents=True, exist_ok=True)
        for k, seed in enumerate(args.seeds):
            order = args.operators if k % 2 == 0 else list(reversed(args.operators))
            for operator in order:
                if any(r["seed"] == seed for r in runs[operator]):
                    continue
                print(f"  {operator} seed {seed}: running {args.minutes:g} min ...", file=sys.stderr, flush=True)
                r = run_one(args, workdir, operator, seed)
                runs[operator].append(r)
                save()  # a partial record survives an interrupted benchmark
                ratio = (r.get("remeasured") or {}).get("ratio")
                print(f"  {operator} seed {seed}: champion {fmt(r.get('score'), '.4f')} in the run, "
                      f"{fmt(ratio, '.3f')} x the base re-measured, {(r.get('pace') or {}).get('evaluations')} evaluations, "
                      f"exit {r['run']['returncode']} after {r['run']['seconds']:.0f} s", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    headers = ["seed", "champion (run)", "base (run)", "re-measured / base", "evaluations", "per min", "run s",
               "champion", "notes"]
    medians = {}
    for operator in args.operators:
        rows = sorted(runs[operator], key=lambda r: r["seed"])
        ratios = [r["remeasured"]["ratio"] for r in rows if r.get("remeasured") and r["remeasured"]["ratio"] is not None]
        medians[operator] = statistics.median(ratios) if ratios else None
        print(f"\n{operator} ({MUTATION[operator]}): median re-measured ratio {fmt(medians[operator], '.3f')}")
        print(tabulate([table_row(r) for r in rows], headers=headers))

    summary = {"median_ratio": medians}
    if {"search", "tunables"} <= set(args.operators):
        by_seed = {o: {r["seed"]: (r.get("remeasured") or {}).get("ratio") for r in runs[o]} for o in ("search", "tunables")}
        beats = {seed: (None if by_seed["search"].get(seed) is None or by_seed["tunables"].get(seed) is None
                        else by_seed["search"][seed] > by_seed["tunables"][seed]) for seed in args.seeds}
        summary["search_beats_tunables"] = {str(s): b for s, b in beats.items()}
        won = sum(b is True for b in beats.values())
        print(f"\nsearch beats tunables (re-measured ratio) on {won}/{len(args.seeds)} seeds: "
              + ", ".join(f"seed {s} {'yes' if b else '-' if b is None else 'no'}" for s, b in beats.items()))
    record["summary"] = summary
    print(f"\n{len(args.seeds)} seed(s), {args.minutes:g} min each, {args.remeasure} re-measured pair(s); "
          f"{earlier + time.monotonic() - started:.0f} s in all.")
    save()
    print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
