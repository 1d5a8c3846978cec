"""`gitevolve promote`: the winner as one commit on top of the run's base, ready for a pull request.

The best of many noisy evaluations is partly the luckiest, so before anything is promoted the
winner and the base are evaluated again, alternately, with fresh repetitions; the commit and the
pull-request body quote those figures, and the candidate's note records them.
"""

from __future__ import annotations

import random
import re
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone

from tabulate import tabulate

from gitevolve import worktrees
from gitevolve.config import Config
from gitevolve.errors import GitevolveError
from gitevolve.loop import Evaluator, moved_since, program
from gitevolve.population import Candidate, Population, number
from gitevolve.report import format_score
from gitevolve.store import Store, format_message

SLOT = "promote"  # its own worktree: promoting while a run evaluates must not share one


@dataclass
class Remeasure:
    scores: list[float] = field(default_factory=list)
    base_scores: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)  # each of the candidate's evaluations' metrics
    base_metrics: list[dict] = field(default_factory=list)

    def ratio(self) -> tuple[float, float, float] | None:
        """The candidate's median score over the base's, and a 90% interval for it: the 5th and
        95th percentiles of the same ratio over 2,000 resamples of both sides' scores."""
        if not self.scores or not self.base_scores or min(self.base_scores) <= 0:
            return None
        draw = random.Random(0)  # the interval of the same figures is the same every time
        resampled = sorted(
            statistics.median(draw.choices(self.scores, k=len(self.scores)))
            / statistics.median(draw.choices(self.base_scores, k=len(self.base_scores)))
            for _ in range(2000))
        return self.median / self.base_median, resampled[100], resampled[1899]

    @property
    def median(self) -> float | None:
        return statistics.median(self.scores) if self.scores else None

    @property
    def base_median(self) -> float | None:
        return statistics.median(self.base_scores) if self.base_scores else None


@dataclass
class Promotion:
    branch: str
    commit: str
    winner: Candidate
    remeasure: Remeasure | None
    body: str  # the pull request's description, markdown
    where: str = "on top of the run's base"  # what the commit was made on, in words
    warnings: list[str] = field(default_factory=list)  # why the change may not change what runs


def winner(population: Population, store: Store, rev: str | None) -> Candidate:
    if rev is None:
        best = population.best()
        if best is None or best.sha == population.base:
            raise GitevolveError(f"no candidate of run {store.refs.run!r} scores above its base yet: nothing to promote "
                                 f"(run `gitevolve run{store.refs.flag}` longer, or name a candidate)")
        return best
    sha = store.resolve(rev)
    if sha == population.base:
        raise GitevolveError(f"{rev} is the base of run {store.refs.run!r}: nothing to promote")
    candidate = population.candidates.get(sha)
    if candidate is None or not candidate.alive:
        raise GitevolveError(f"{rev} is not a scored candidate of run {store.refs.run!r} (`gitevolve show {rev}{store.refs.flag}` says why)")
    return candidate


def remeasure(store: Store, config: Config, population: Population, candidate: Candidate, repeats: int) -> Remeasure:
    """`repeats` evaluations of the candidate and of the base, alternating (A B B A ...) so drift hits both."""
    evaluator = Evaluator(store, config, population.base)
    base = population.candidates[population.base]
    result = Remeasure()
    for i in range(repeats):
        for c in ((candidate, base) if i % 2 == 0 else (base, candidate)):
            path = worktrees.checkout(store, SLOT, c.sha)
            evaluation = evaluator.evaluate_at(path, c, purpose="promote", worker=config.workers + 1)
            if evaluation.status != "ok" or evaluation.score is None:
                result.failures.append(f"{c.sha[:10]}: {evaluation.reason or evaluation.status}")
                continue
            (result.scores if c is candidate else result.base_scores).append(evaluation.score)
            (result.metrics if c is candidate else result.base_metrics).append(evaluation.metrics)
    return result


def no_ops(store: Store, config: Config, population: Population, candidate: Candidate) -> list[str]:
    """Why the candidate's change may not change what runs: its program is the base's, or a
    tunable it changed is never read in its file (the name appears only where it is declared)."""
    base = population.candidates[population.base]
    if candidate.content and candidate.content == base.content:
        return ["its program is the base's (the same content): the gain can only be noise"]
    said = []
    ours, theirs = candidate.settings or {}, base.settings or {}
    for key in sorted(k for k in ours if ours.get(k) != theirs.get(k)):
        path, _, name = key.rpartition(":")
        for file in ([path] if path else config.files):
            if len(re.findall(rf"\b{re.escape(name)}\b", store.read_file(candidate.sha, file))) == 1:
                said.append(f"{name} is declared in {file} but never read there: changing it changes nothing that runs")
    return said


def lineage(population: Population, candidate: Candidate) -> list[Candidate]:
    """The chain of candidates from the base (excluded) to `candidate`, oldest first."""
    chain, c = [], candidate
    while c is not None and c.sha != population.base:
        chain.append(c)
        c = population.candidates.get(c.parent or "")
    return chain[::-1]


def parent_for(store: Store, config: Config, population: Population, on_base: bool) -> tuple[str, str]:
    """The commit the promoted one goes on, and why: the checkout's HEAD where its evolvable files
    are the base's (so the pull request keeps every commit made since), else the base only when
    asked (`on_base`): a branch on an older base would revert what changed there."""
    head, base = store.head_commit(), population.base
    if on_base or head is None or head in population.candidates:
        return base, "on top of the run's base"
    moved = moved_since(store, population, config.files)
    if moved is None:
        return head, f"on top of {store.git('rev-parse', '--abbrev-ref', 'HEAD').strip()} ({head[:10]}), whose evolvable files are the base's"
    branch, changed = moved
    raise GitevolveError(f"{', '.join(changed)} changed on {branch} since run {store.refs.run!r}'s base {base[:10]}: a "
                         f"pull request of this candidate would revert that. Evolve {branch}'s version in a new run "
                         f"(`gitevolve run --run NAME`), or promote on the old base anyway with --on-base")


def promote(store: Store, config: Config, population: Population, candidate: Candidate, *,
            branch: str | None, repeats: int, force: bool, on_base: bool = False, signoff: bool = False) -> Promotion:
    name = branch or store.refs.branch_prefix.removeprefix("refs/heads/") + "promoted"
    store.movable_branch(f"refs/heads/{name}", force=force)  # before minutes of re-measuring, not after
    parent, where = parent_for(store, config, population, on_base)
    measured = remeasure(store, config, population, candidate, repeats) if repeats else None
    if measured and measured.failures:
        raise GitevolveError(f"re-measuring failed ({'; '.join(measured.failures[:3])}): nothing was promoted")
    if measured:
        note = store.note(candidate.sha) or {}
        note["remeasured"] = {"scores": measured.scores, "base_scores": measured.base_scores,
                              "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        store.record(candidate.sha, note)
    tree = store.tree_with(parent, program(store, config, candidate).files)
    base = population.candidates.get(population.base)
    score = measured.median if measured else candidate.score
    base_score = measured.base_median if measured else (base.score if base else None)
    warnings = no_ops(store, config, population, candidate)
    body = pr_body(store, population, candidate, measured, base_score, warnings)
    subject = f"Evolved {', '.join(config.files)}: score {format_score(score)} (base {format_score(base_score)})"
    message = format_message(subject, _plain(body), {"Run": store.refs.run, "Candidate": candidate.sha})
    sha = store.commit_branch(f"refs/heads/{name}", parent, tree, message, force=force, signoff=signoff)
    return Promotion(name, sha, candidate, measured, body, where, warnings)


def pr_body(store: Store, population: Population, candidate: Candidate, measured: Remeasure | None,
            base_score: float | None, warnings: list[str] = ()) -> str:
    """The pull request's text; `base_score` is the base's re-measured score, or the run's."""
    base = population.candidates.get(population.base)
    lines = [f"Evolved by gitevolve, run `{store.refs.run}`: candidate `{candidate.sha[:10]}` "
             f"(island {candidate.island}, iteration {candidate.iteration}).", ""]
    lines += [f"**Check before merging**: {w}." for w in warnings] + ([""] if warnings else [])
    ratio = measured.ratio() if measured else None
    if measured:
        lines += [f"Re-measured just now, {len(measured.scores)} evaluations each, alternating with the base: "
                  f"median score **{format_score(measured.median)}** against **{format_score(base_score)}** for the base"
                  + (f", **{ratio[0]:.3f}x** (90% interval {ratio[1]:.3f}-{ratio[2]:.3f}x)" if ratio else "")
                  + f" (the run had scored it {format_score(candidate.score)}).",
                  f"Candidate: {', '.join(format_score(s) for s in measured.scores)} (spread {_spread(measured.scores)}); "
                  f"base: {', '.join(format_score(s) for s in measured.base_scores)} (spread {_spread(measured.base_scores)}).", ""]
        if ratio and ratio[1] <= 1.0:
            lines += ["The interval reaches 1.0x: at this many evaluations the gain is not told apart from noise.", ""]
    else:
        lines += [f"Score {format_score(candidate.score)} against {format_score(base_score)} for the base, "
                  "as the run measured them (not re-measured).", ""]
    # Both sides' figures from one sitting only: the run's were taken at different times, under
    # different load, and once made a 5x bandwidth "regression" out of noise.
    ours, theirs = (measured.metrics, measured.base_metrics) if measured else ([], [])
    numeric = sorted(k for k in set().union(*ours, *theirs) if all(number(m.get(k)) is not None for m in ours + theirs))
    if ours and theirs and numeric:
        rows = [[k, f"{statistics.median(m[k] for m in theirs):.4g}", f"{statistics.median(m[k] for m in ours):.4g}"]
                for k in numeric[:30]]
        lines += ["Metrics of the re-measure above (medians; both sides measured in this one sitting):", "",
                  tabulate(rows, headers=["metric", "base", "candidate"], tablefmt="github", disable_numparse=True), ""]
    chain = lineage(population, candidate)
    lines += [f"How it got there ({len(chain)} mutations, oldest first; `git log -p {candidate.sha[:10]}` shows each):", ""]
    previous = base.score if base else None
    for c in chain:
        lines.append(f"- `{c.sha[:10]}` {c.subject} ({format_score(previous)} -> {format_score(c.score)})")
        previous = c.score
    lines += ["", f"Reproduce: `gitevolve show {candidate.sha[:10]}{store.refs.flag}` (its score and diff); "
                  f"`gitevolve promote {candidate.sha[:10]}{store.refs.flag}` measures it again beside the base."]
    return "\n".join(lines)


def _spread(scores: list[float]) -> str:
    """Max over min, less one: how far apart one side's evaluations landed."""
    return f"{max(scores) / min(scores) - 1:.1%}" if scores and min(scores) > 0 else "-"


def _plain(markdown: str) -> str:
    return markdown.replace("**", "").replace("`", "")
