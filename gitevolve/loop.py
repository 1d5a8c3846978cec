"""One evolution run, top to bottom.

    start      the base commit and one branch per island (or the ones a previous run left)
    pending    candidates committed but never scored (a crash, a kill) are evaluated first
    each batch one mutation per worker: choose a parent on the island -> the operator proposes
               (the whole batch at once for an operator that allows it, as model calls are slow)
               -> EVOLVE-BLOCK check; then migrations when a migration generation begins ->
               commit + pin -> queued for the workers' parallel worktrees, except programs the
               run has evaluated or is evaluating, which take that result
    then the batch before it, in order: its results as they come -> note + champion branch ->
               the operator is told the scores (a search learns from them)

A batch is planned while the one before it is still being evaluated, so a worker that finishes
early takes the next batch's job instead of waiting for its batch's slowest: on one GPU a
quick-stage rejection takes 20 s and a full evaluation 80 (the H200 run of 2026-12-04). The
price is that a batch is planned without the scores of the batch just before it (with one
worker there is nothing to overlap, and each batch waits for the one before it).

Every candidate is committed and pinned before it is evaluated, and scored by one atomic ref
transaction after, so a run killed at any moment loses at most the evaluations in flight, which
the next run finds and redoes. A batch is planned from the population with every batch up to two
before it recorded, in order, with a random stream derived from (seed, iteration), so a seeded
run proposes the same candidates whatever the order in which parallel evaluations finish.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import queue
import random
import statistics
import textwrap
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable, Iterator

from gitevolve import __version__, migrate, selection, worktrees
from gitevolve.config import Config
from gitevolve.duel import Duel, clear_lead, duel, measurements
from gitevolve.errors import GitevolveError
from gitevolve.evaluate import Evaluation, evaluate, hook_environment, terminate_all
from gitevolve.mutate import MutationRejected, Observed, Operator, Program, Proposal, tunables
from gitevolve.mutate.blocks import check as check_blocks
from gitevolve.population import Candidate, Population, load, rank
from gitevolve.progress import Progress
from gitevolve.store import Store, format_message

DUPLICATE_TRIES = 8


@dataclass(frozen=True)
class Job:
    """A committed candidate waiting for its evaluation."""

    candidate: Candidate
    code_length: int
    mutation: dict = field(default_factory=dict)
    duplicate_of: str | None = None  # a candidate of the run already evaluated with this content


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    done: int = 0  # iterations of this invocation, including those that made no candidate
    made: int = 0  # candidates this invocation committed (mutations and migrations)
    evaluated: int = 0
    failed: int = 0
    duplicates: int = 0  # candidates that took an earlier evaluation's result instead of their own
    remeasured: int = 0  # evaluations of challengers and champions head to head (duel.py)
    cut: int = 0  # candidates a stage's threshold stopped before the later stages
    migrations: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # mutation failures by reason kind

    def reject(self, kind: str) -> None:
        self.rejected[kind] = self.rejected.get(kind, 0) + 1

    def per_minute(self) -> float:
        return 60.0 * self.evaluated / max(time.monotonic() - self.started, 1e-9)


# Evaluations still running this long after a time budget (as a share of it) are stopped: on one
# GPU a full evaluation takes 95 s and a duel four more, and a 4-minute run went on for 200 s more.
OVERTIME = 0.1


class OutOfTime(Exception):
    """The time budget and its overtime are spent: what was in flight stays pending."""


def run(store: Store, config: Config, operator: Operator, progress: Progress, *, islands: int, iterations: int | None,
        from_rev: str | None = None, seconds: float | None = None, retry_failed: bool = False) -> Stats:
    """Make `iterations` candidates (None: no limit), starting no new batch after `seconds` (None:
    no limit) and stopping what still runs `OVERTIME` later; the candidates committed before the
    budget began are evaluated first, whatever it is."""
    deadline = None if seconds is None else time.monotonic() + seconds
    with run_lock(store):
        population = start(store, config, islands, from_rev)
        if getattr(operator, "needs_tunables", False):  # before the base is evaluated for nothing
            refuse_nothing_to_tune(store, config, population)
        moved = None if from_rev else moved_since(store, population, config.files)
        if moved:
            branch, changed = moved
            progress.say(f"{', '.join(changed)} changed on {branch} since this run's base {population.base[:10]}: the run "
                         f"goes on evolving the base's version. To evolve {branch}'s, start a run from it "
                         f"(`gitevolve run --run NAME`), or drop this one first (`gitevolve forget {store.refs.run}`).")
        made_before = sum(c.iteration is not None for c in population.candidates.values())
        if made_before:
            budget = (f"up to {iterations} more" if iterations is not None else "as many more as the time allows")
            progress.say(f"Run {store.refs.run!r} goes on from its {len(population.candidates)} candidates: this "
                         f"invocation makes {budget} (--iterations and --time count per invocation).")
        stats = Stats()
        progress.begin(population, iterations)
        try:
            with Evaluator(store, config, population.base) as evaluator:
                again = failed_seeds(store, population, evaluator.id, retry_failed)
                if again:
                    for c, why in again:
                        progress.say(f"Evaluating the starting commit {c.sha[:10]} again: {why}.")
                    evaluator.run_batch([evaluator.resume_job(c, population, again=True) for c, _ in again], population,
                                        stats, progress)
                if population.pending():
                    progress.say(_pending_words(population))
                    evaluator.run_batch([evaluator.resume_job(c, population) for c in population.pending()], population,
                                        stats, progress)
                teach(operator, population, sorted(population.candidates.values(), key=_planned))
                for island in population.islands:
                    if not population.alive(island):
                        seed = population.candidates[population.seeds[island]]
                        raise GitevolveError(f"island {island}'s starting commit {seed.sha[:10]} did not pass the evaluator "
                                             f"({_why(store, seed.sha)}): fix it (`gitevolve show {seed.sha[:10]}{store.refs.flag}`), then "
                                             f"`gitevolve run --retry-failed{store.refs.flag}`; a changed evaluator section "
                                             f"is retried without it")
                iteration, done, queued = population.next_iteration(), 0, None
                if deadline is not None:
                    evaluator.stop_at(deadline + OVERTIME * seconds)
                while (iterations is None or done < iterations) and (deadline is None or time.monotonic() < deadline):
                    size = config.workers if iterations is None else min(config.workers, iterations - done)
                    batch = list(range(iteration, iteration + size))
                    jobs = make_batch(store, config, population, operator, batch, stats)
                    ahead = evaluator.submit(jobs, population)
                    if queued is not None:
                        evaluator.collect(queued, population, stats, progress, operator)
                    queued = ahead
                    if config.workers == 1:  # nothing to overlap: each batch is planned with the one before it scored
                        evaluator.collect(queued, population, stats, progress, operator)
                        queued = None
                    iteration += len(batch)
                    done += len(batch)
                    stats.done = done
                if queued is not None:
                    if deadline is not None and time.monotonic() >= deadline:
                        queued.cancel_waiting()  # out of time: what has not started stays pending for the next run
                    evaluator.collect(queued, population, stats, progress, operator)
        except OutOfTime:
            waiting = len(load(store, store.ref_state()).pending())
            progress.say(f"Out of time: what still ran {OVERTIME:.0%} after the budget was stopped. {waiting} candidate(s) "
                         f"are committed but not scored: `gitevolve run{store.refs.flag}` evaluates them first.")
        except KeyboardInterrupt:
            terminate_all()
            waiting = len(load(store, store.ref_state()).pending())
            progress.say(f"Interrupted. {waiting} candidate(s) are committed but not scored: `gitevolve run{store.refs.flag}` "
                         f"evaluates them first.")
            raise
        finally:
            progress.end()
        return stats


def refuse_nothing_to_tune(store: Store, config: Config, population: Population) -> None:
    """A built-in operator changes declared tunables only: with none anywhere, every mutation
    would fail and the run would end having done nothing."""
    heads = dict.fromkeys([*population.seeds.values(), *population.champions.values()])
    for sha in heads:
        if tunables.declared({path: store.read_file(sha, path) for path in config.files})[0]:
            return
    raise GitevolveError(f"nothing to evolve: {', '.join(config.files)} declare no tunables and no model is configured: "
                         f"mark a value inside an EVOLVE-BLOCK (`BLOCK = 64  # gitevolve: choices=[32, 64, 128]`, "
                         f"docs/config.md), or add an llm section (docs/models.md)")


def failed_seeds(store: Store, population: Population, evaluator_id: str, retry: bool) -> list[tuple[Candidate, str]]:
    """The starting commits whose failed evaluation does not stand: all of them with `retry`
    (the user fixed what the evaluator needed), else those an earlier evaluator section failed."""
    again = []
    for sha in dict.fromkeys(population.seeds.values()):  # islands often share one seed: evaluated once
        seed = population.candidates[sha]
        if seed.alive or seed.status == "pending":
            continue
        if retry:
            again.append((seed, "--retry-failed"))
        elif (store.note(sha) or {}).get("evaluator") != evaluator_id:
            again.append((seed, "the evaluator section changed since it failed"))
    return again


def _pending_words(population: Population) -> str:
    waiting, seeds = population.pending(), set(population.seeds.values())
    if all(c.sha in seeds for c in waiting):  # a new run: nothing was left over, the islands' start comes first
        return f"Evaluating the starting commit {', '.join(c.sha[:10] for c in waiting)} first: every island begins there."
    return f"Evaluating {len(waiting)} candidate(s) committed but not yet scored."


def _kind(reason: str) -> str:
    """A rejection's reason as a kind to count: its head, shortened at a word, never mid-word."""
    head = reason.split(":")[0].split(" (")[0].strip()
    return textwrap.shorten(head, width=60, placeholder=" ...") or "rejected"


def make_batch(store: Store, config: Config, population: Population, operator: Operator, batch: list[int],
               stats: Stats) -> list[Job]:
    """The batch's candidates, committed: its mutations, and its migrations where a generation begins."""
    plans = [p for p in (plan(store, config, population, i, stats) for i in batch) if p is not None]
    # Asked before anything is committed: a model error that stops the run leaves no half-made batch.
    proposals = propose_all(operator, plans)
    jobs = migrations(store, config, population, batch, stats)
    for p, first in zip(plans, proposals):
        job = mutation(store, population, operator, p, first, stats)
        if job is not None:
            jobs.append(job)
    stats.made += len(jobs)
    return jobs


def start(store: Store, config: Config, islands: int, from_rev: str | None) -> Population:
    """Create the run's base and island branches if they are missing, and read the population."""
    state = store.ref_state()
    if state.base is None:
        if from_rev:
            base = store.resolve(from_rev)
        else:
            base = store.head_commit() or _fail("the repository has no commit yet: commit the program to evolve first")
            refuse_uncommitted(store, config.files)
        for path in config.files:
            store.read_file(base, path)  # raises a clear error when the base lacks a file
        store.start_islands(base, {k: base for k in range(islands)}, create_base=True)
    else:
        new = range(len(state.seeds), islands)
        if from_rev and not new:
            raise GitevolveError(
                f"run {store.refs.run!r} already has {len(state.seeds)} islands from {state.base[:10]}: to start from "
                f"{from_rev}, add islands (--islands {len(state.seeds) + 1}) or start a new run (--run NAME --from {from_rev})"
            )
        if new:
            seed = store.resolve(from_rev) if from_rev else state.base
            store.start_islands(state.base, {k: seed for k in new}, create_base=False)
    return load(store, store.ref_state())


def moved_since(store: Store, population: Population, files: list[str]) -> tuple[str, list[str]] | None:
    """Where the checkout's branch moved past the run's base and changed evolvable files there:
    (the branch, the files); None when HEAD is the base or one of the run's candidates (a user
    looking at a champion), or its evolvable files are the base's."""
    head, base = store.head_commit(), population.base
    if head is None or head in population.candidates:
        return None
    changed = [path for path in store.git("diff", "--name-only", base, head, "--", *files).splitlines() if path]
    return (store.git("rev-parse", "--abbrev-ref", "HEAD").strip(), changed) if changed else None


def refuse_uncommitted_config(store: Store, name: str) -> None:
    """The candidates carry the committed settings, so the run must read those and no others."""
    if uncommitted(store, [name]):
        raise GitevolveError(f"{name}: uncommitted changes. The candidates carry the committed settings, so the run "
                             f"reads those only: commit it (`git commit {name}`), or `git stash` the edit; for one "
                             f"run, a flag overrides a setting (gitevolve run --help)")


def uncommitted(store: Store, paths: list[str]) -> list[str]:
    """Those of `paths` with changes (or untracked) in the checkout."""
    return [line[3:] for line in store.git("status", "--porcelain", "--", *paths).splitlines() if line.strip()]


def refuse_uncommitted(store: Store, files: list[str]) -> None:
    dirty = uncommitted(store, files)
    if dirty:
        names = ", ".join(dirty)
        raise GitevolveError(f"{names}: uncommitted changes. gitevolve evolves commits: commit them first (or pass --from REF)")


def migrations(store: Store, config: Config, population: Population, batch: list[int], stats: Stats) -> list[Job]:
    """Migration candidates, when the batch begins a generation that is a multiple of the interval."""
    n = len(population.islands)
    for generation in sorted({(i - 1) // n for i in batch}):
        if generation == 0 or generation % config.migration.interval or population.migrated_at(generation):
            continue
        jobs = []
        for m in migrate.plan(store, population, config, _rng(config, store, f"migration/{generation}")):
            target = {path: store.read_file(m.target, path) for path in config.files}
            subject, body = m.message(target)
            trailers = {"Island": m.target_island, "Generation": generation, "Operator": m.operator, "Migrated-From": m.source.sha}
            job = commit_job(store, population, m.target, m.files, subject, body, trailers, m.target_island, None,
                             generation, m.operator, parent_files=target)
            if job is not None:
                jobs.append(job)
                stats.migrations += 1
        return jobs
    return []


@dataclass(frozen=True)
class Plan:
    """One mutation decided before the operator is asked: the island, the parent, the random stream."""

    iteration: int
    island: int
    generation: int
    how: str
    parent: Program
    inspirations: list[Program]
    rng: random.Random


def plan(store: Store, config: Config, population: Population, iteration: int, stats: Stats) -> Plan | None:
    """The island whose turn it is and its parent, or None (counted) while the island has none."""
    island = population.islands[(iteration - 1) % len(population.islands)]
    generation = (iteration - 1) // len(population.islands)
    rng = _rng(config, store, str(iteration))
    choice = selection.choose(population, island, config, rng)
    if choice is None:
        stats.reject("no parent")
        return None
    return Plan(iteration, island, generation, choice.how, program(store, config, choice.parent, island),
                [program(store, config, c, island) for c in choice.inspirations], rng)


def propose(operator: Operator, p: Plan) -> Proposal | MutationRejected:
    """The operator's proposal, checked against the EVOLVE-BLOCK markers; a refusal is returned, not raised."""
    try:
        proposal = operator.propose(p.parent, p.inspirations, p.rng)
        for path, text in proposal.files.items():
            if path not in p.parent.files:
                raise MutationRejected(f"{path} is not an evolvable file")
            check_blocks(path, p.parent.files[path], text)
        return proposal
    except MutationRejected as e:
        return e


def propose_all(operator: Operator, plans: list[Plan]) -> list[Proposal | MutationRejected]:
    """One proposal per plan: together when the operator allows it (model calls are slow), else in turn.

    Each plan has its own random stream, so the order in which proposals are made does not
    change them. Daemon threads, so that Ctrl-C is not kept waiting for calls in flight.
    """
    if getattr(operator, "concurrency", 1) <= 1 or len(plans) <= 1:
        return [propose(operator, p) for p in plans]
    results: list = [None] * len(plans)

    def work(i: int) -> None:
        try:
            results[i] = propose(operator, plans[i])
        except BaseException as e:  # handed to the main thread, which raises it
            results[i] = e

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(plans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, MutationRejected):
            raise r
    return results


def mutation(store: Store, population: Population, operator: Operator, p: Plan, first: Proposal | MutationRejected,
             stats: Stats) -> Job | None:
    """The plan's candidate, committed; or None (counted) if none could be made."""
    outcome = first
    for attempt in range(getattr(operator, "duplicate_attempts", DUPLICATE_TRIES)):
        if attempt:
            outcome = propose(operator, p)  # the island already tried that tree: ask again
        if isinstance(outcome, MutationRejected):
            stats.reject(_kind(str(outcome)))
            return None
        trailers = {"Island": p.island, "Iteration": p.iteration, "Generation": p.generation, "Operator": outcome.operator,
                    "Parent-Selection": p.how}
        job = commit_job(store, population, p.parent.candidate.sha, outcome.files, outcome.subject, outcome.body,
                         trailers, p.island, p.iteration, p.generation, outcome.operator, outcome.meta, p.parent.files)
        if job is not None:
            return job
        if hasattr(operator, "duplicate"):
            operator.duplicate(p.parent, outcome)
    stats.reject("duplicate")
    return None


def commit_job(store: Store, population: Population, parent: str, files: dict[str, str], subject: str, body: str,
               trailers: dict, island: int, iteration: int | None, generation: int, operator: str,
               meta: dict | None = None, parent_files: dict[str, str] | None = None) -> Job | None:
    """Commit and pin a candidate unless the island already tried the same program. One that
    another island tried takes that evaluation's result instead of paying for its own."""
    tree = store.tree_with(parent, files)
    texts = {**(parent_files or {}), **files}
    settings, content = described(store, parent, tree, files, texts)
    if content in population.contents(island):
        return None
    sha = store.add_candidate(parent, tree, format_message(subject, body, {"Run": store.refs.run, **trailers}))
    candidate = Candidate(sha, parent, island, iteration, generation, "pending", tree=tree, operator=operator,
                          subject=subject, settings=settings, content=content)
    population.add(candidate)
    known = population.evaluated(content)
    return Job(candidate, sum(len(t) for t in texts.values()), meta or {}, known.sha if known else None)


def described(store: Store, parent: str, tree: str, files: dict[str, str], texts: dict[str, str]) -> tuple[dict, str]:
    """A program's tunable settings and its content: the tree it would have with every dead
    tunable at its first choice (the tree itself when none is dead or off its first choice)."""
    try:
        settings = tunables.settings(texts)
        canonical = {path: tunables.canonical(path, text) for path, text in texts.items()}
    except MutationRejected:  # a malformed declaration: judged as the text it is
        return {}, tree
    moved = {path: text for path, text in canonical.items() if text != texts[path]}
    return settings, (store.tree_with(parent, {**files, **moved}) if moved else tree)


def teach(operator: Operator, population: Population, candidates: list[Candidate]) -> None:
    """Tell an operator that learns from scores about scored candidates, on every island they belong to."""
    observe = getattr(operator, "observe", None)
    if observe is None:
        return
    for c in candidates:
        if c.status == "pending" or not c.settings:
            continue
        for island in population.islands_of(c):
            observe(island, Observed(c.settings, c.score if c.alive else None))


def _planned(c: Candidate) -> tuple:
    return (c.iteration is not None, c.iteration or 0, c.generation, c.sha)


def program(store: Store, config: Config, candidate: Candidate, island: int | None = None) -> Program:
    return Program(candidate, {path: store.read_file(candidate.sha, path) for path in config.files}, island)


@dataclass
class Queued:
    """A batch handed to the workers: each job with its evaluation to come, or None where the job
    takes the result of a program the run has evaluated or is evaluating."""

    jobs: list[Job]
    futures: list[Future | None]

    def cancel_waiting(self) -> None:
        for future in self.futures:
            if future is not None:
                future.cancel()  # only those no worker has started


class Evaluator:
    """Runs jobs' evaluations in parallel worktrees, `workers` at a time, for the whole run, and
    records the results of each batch in order.

    A job takes a free worktree slot, checks out there and gives the slot back when its
    evaluation ends, so the next job starts as soon as any worker is free and no worktree is ever
    checked out again while an evaluation still reads it (a batch with migrations holds more
    jobs than workers, and the next batch's jobs queue behind this one's).
    """

    def __init__(self, store: Store, config: Config, base: str) -> None:
        self.store, self.config, self.base = store, config, base
        self.stages = config.evaluator.stage_list()
        self.id = hashlib.sha256(json.dumps(config.evaluator.model_dump(), sort_keys=True).encode()).hexdigest()[:12]
        self.secrets = [k for k in os.environ if k.endswith(("_API_KEY", "_TOKEN", "_SECRET"))]
        if config.llm is not None and config.llm.api_key_env:  # whatever its name, the model's key stays ours
            self.secrets.append(config.llm.api_key_env)
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(config.workers):
            self.free.put(slot)
        self.pool: ThreadPoolExecutor | None = None
        self.evaluating: set[str] = set()  # contents of the jobs submitted and not yet recorded
        self.expired = False  # the run's time is up: evaluations end as interrupted, and none starts
        self.timer: threading.Timer | None = None

    def stop_at(self, when: float) -> None:
        """At `when` (time.monotonic()), stop the evaluations in flight and start no other."""
        self.timer = threading.Timer(max(when - time.monotonic(), 0.0), self.expire)
        self.timer.daemon = True
        self.timer.start()

    def expire(self) -> None:
        self.expired = True
        terminate_all()

    def stopped(self) -> BaseException:
        """What an interrupted evaluation raises: the user's Ctrl-C, or the time budget's end."""
        return OutOfTime() if self.expired else KeyboardInterrupt()

    def __enter__(self) -> "Evaluator":
        self.pool = ThreadPoolExecutor(max_workers=self.config.workers)
        return self

    def __exit__(self, *exc) -> None:
        assert self.pool is not None
        if self.timer is not None:
            self.timer.cancel()
        if exc[0] is not None:
            # Stopping: the evaluations in flight end now, the queued ones never start; all stay
            # pending (committed and pinned) for the next run.
            terminate_all()
        self.pool.shutdown(wait=True, cancel_futures=exc[0] is not None)
        self.pool = None

    def resume_job(self, candidate: Candidate, population: Population, again: bool = False) -> Job:
        """The job that evaluates a committed candidate: one a run left pending, or (`again`) one
        whose evaluation is done over, so that it takes no earlier result, not even its own."""
        texts = {path: self.store.read_file(candidate.sha, path) for path in self.config.files}
        tree = candidate.tree or self.store.repo.commit(candidate.sha).tree.hexsha
        settings, content = described(self.store, candidate.sha, tree, {}, texts)
        candidate = replace(candidate, settings=settings, content=content)
        population.add(candidate)
        known = None if again else population.evaluated(content)
        return Job(candidate, sum(len(t) for t in texts.values()), duplicate_of=known.sha if known else None)

    def run_batch(self, jobs: list[Job], population: Population, stats: Stats, progress: Progress) -> None:
        """Evaluate the jobs and record their results (in order)."""
        self.collect(self.submit(jobs, population), population, stats, progress)

    def submit(self, jobs: list[Job], population: Population) -> Queued:
        """Queue the jobs' evaluations, except for programs the run has evaluated, or one that a
        job submitted before evaluates: those take that result when they are recorded. The
        stages' bars are the champions' as of now."""
        assert self.pool is not None, "the Evaluator is used as a context manager"
        futures: list[Future | None] = []
        for job in jobs:
            content = job.candidate.content
            if job.duplicate_of or content in self.evaluating:
                futures.append(None)
                continue
            if content:
                self.evaluating.add(content)
            futures.append(self.pool.submit(self._work, job, self.bars(job.candidate, population)))
        return Queued(jobs, futures)

    def _work(self, job: Job, bars: dict[str, float]) -> Evaluation:
        slot = self.free.get()
        try:
            if self.expired:  # queued when the time ran out: it stays pending
                return Evaluation("failed", None, {}, {}, "interrupted", "", 0, 0.0, {})
            path = worktrees.checkout(self.store, slot, job.candidate.sha)
            return self.evaluate_at(path, job.candidate, bars, worker=slot)
        finally:
            self.free.put(slot)

    def collect(self, queued: Queued, population: Population, stats: Stats, progress: Progress,
                operator: Operator | None = None) -> None:
        """Record the batch's results in its jobs' order, then tell the operator its scores."""
        recorded = []
        for job, future in zip(queued.jobs, queued.futures):
            if future is not None and future.cancelled():
                self.evaluating.discard(job.candidate.content)
                continue  # stays pending: the next run evaluates it first
            if future is not None:
                result = future.result()
                self.evaluating.discard(job.candidate.content)
            else:
                original = population.evaluated(job.candidate.content)
                if original is None:  # the evaluation it waited for was cancelled or interrupted
                    continue
                job, result = replace(job, duplicate_of=original.sha), taken(self.store, original)
            scored = self.record(job, result, population, stats, progress.say)
            progress.update(population, stats, scored)
            recorded.append(population.candidates[job.candidate.sha])
        if operator is not None:
            teach(operator, population, recorded)

    def bars(self, c: Candidate, population: Population) -> dict[str, float]:
        """The scores `c` must reach at the stages with a bar relative to its island's champion
        (`within`): none for a seed, nor where the champion has no positive score at that stage."""
        champion = population.candidates.get(population.champions.get(c.island, "")) if c.island is not None else None
        if champion is None or not champion.alive:
            return {}
        return {s.name: s.within * champion.stages[s.name] for s in self.stages
                if s.within is not None and champion.stages.get(s.name, 0) > 0}

    def evaluate_at(self, path, c: Candidate, bars: dict[str, float] | None = None,
                    purpose: str = "evaluate", worker: int = 0) -> Evaluation:
        """Evaluate candidate `c`, checked out at `path` (the loop's workers, and `promote`'s re-measuring).
        `purpose` tells the hook why (GITEVOLVE_PURPOSE): a first evaluation, or a re-measure that
        decides a champion or a pull request, where a hook may trade speed for caution. `worker`
        is the slot it runs in (GITEVOLVE_WORKER), and picks its GPU where `devices` are set."""
        extra = {
            # A seed's git parent is the user's history, not a candidate: empty, as docs/hooks.md says.
            "GITEVOLVE_CANDIDATE": c.sha, "GITEVOLVE_PARENT": (c.parent or "") if c.island is not None else "",
            "GITEVOLVE_BASE": self.base,
            "GITEVOLVE_FILES": os.pathsep.join(self.config.files), "GITEVOLVE_RUN": self.store.refs.run,
            "GITEVOLVE_PURPOSE": purpose, "GITEVOLVE_WORKER": str(worker),
        }
        if self.config.devices:
            extra["CUDA_VISIBLE_DEVICES"] = self.config.devices[worker % len(self.config.devices)]
        env = hook_environment(os.environ, extra, self.secrets)
        return evaluate(path, self.stages, env, retries=self.config.evaluator.retries, bars=bars)

    def head_to_head(self, incumbent: Candidate, challenger: Candidate, note: dict, population: Population,
                     stats: Stats) -> Duel:
        """Both evaluated again, interleaved; each one's score becomes the mean of its measurements
        (the challenger's in `note`, the incumbent's note rewritten)."""
        champion = self.config.champion
        fight = duel(self.measure, incumbent, challenger, champion.remeasure, champion.margin)
        stats.remeasured += len(fight.challenger) + len(fight.incumbent)
        ours = measurements(note) + [x for x in fight.challenger if x is not None]
        note.update(score=statistics.mean(ours), measurements=ours, duel=fight.to_json(incumbent.sha))
        theirs_note = self.store.note(incumbent.sha) or {}
        theirs = measurements(theirs_note) + [x for x in fight.incumbent if x is not None]
        if theirs:
            theirs_note.update(score=statistics.mean(theirs), measurements=theirs)
            self.store.record(incumbent.sha, theirs_note)
            population.add(replace(incumbent, score=theirs_note["score"], measurements=tuple(theirs)))
        return fight

    def measure(self, c: Candidate) -> float | None:
        """One more evaluation of `c`, in a worktree of its own beside the workers': its score, None if it failed."""
        path = worktrees.checkout(self.store, self.config.workers, c.sha)
        # The next batch's evaluations go on meanwhile: the duel is a worker of its own.
        result = self.evaluate_at(path, c, purpose="remeasure", worker=self.config.workers)
        if result.reason == "interrupted":
            raise self.stopped()
        return result.score if result.status == "ok" else None

    def record(self, job: Job, result: Evaluation, population: Population, stats: Stats,
               say: Callable[[str], None] | None = None) -> Candidate:
        if result.reason == "interrupted":
            raise self.stopped()  # the run is stopping: leave the candidate unscored for the next run
        c = job.candidate
        scored = replace(c, status=result.status, score=result.score, metrics=result.metrics, stages=result.stages,
                         features={"code_length": job.code_length}, duplicate_of=job.duplicate_of)
        note = {
            "status": result.status, "score": result.score, "reason": result.reason,
            "metrics": result.metrics, "features": scored.features, "artifacts": result.artifacts,
            "island": c.island, "iteration": c.iteration, "generation": c.generation, "parent": c.parent,
            "tree": c.tree, "content": c.content, "settings": c.settings, "duplicate_of": job.duplicate_of,
            "operator": c.operator, "subject": c.subject, "mutation": job.mutation,
            "evaluator": self.id, "stage": result.stage, "stage_scores": result.stages,
            "stage_seconds": result.stage_seconds, "attempts": result.attempts,
            "seconds": round(result.seconds, 3), "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "gitevolve": __version__,
        }
        champion = None
        if c.island is not None and scored.alive:
            current = population.candidates.get(population.champions[c.island])
            # By rank (ties go to the earlier candidate), so the champion does not depend on
            # which of two equal candidates finished evaluating first.
            if current is None or not current.alive or rank(scored) > rank(current):
                champion = (c.island, population.champions[c.island])
            rules = self.config.champion
            if (champion is not None and current is not None and current.alive and rules.remeasure
                    and not clear_lead(scored.score, current.score, rules.sure)):
                fight = self.head_to_head(current, scored, note, population, stats)
                scored = replace(scored, score=note["score"], measurements=tuple(note["measurements"]))
                if say is not None:
                    say(f"{c.sha[:10]} island {c.island}: {fight.describe()}")
                if not fight.won:
                    champion = None
        moved = self.store.record(c.sha, note, champion)
        population.add(scored)
        if champion is not None:
            population.champions[c.island] = c.sha if moved else self.store.ref_state().islands[c.island]
        if job.duplicate_of:
            stats.duplicates += 1
        else:
            stats.evaluated += 1
            stats.failed += scored.status == "failed"
            stats.cut += scored.status == "rejected"
        return scored


def taken(store: Store, original: Candidate) -> Evaluation:
    """The evaluation a duplicate of `original` takes: its result, at no cost."""
    note = store.note(original.sha) or {}
    return Evaluation(original.status, original.score, dict(original.metrics), dict(note.get("artifacts") or {}),
                      note.get("reason"), str(note.get("stage", "")), 0, 0.0, dict(original.stages))


@contextmanager
def run_lock(store: Store) -> Iterator[None]:
    """One `gitevolve run` per run and repository at a time; the kernel drops the lock if we die."""
    path = worktrees.worktree_root(store).parent / f"{store.refs.run}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise GitevolveError(f"another `gitevolve run` is working on run {store.refs.run!r} here (pid {handle.read().strip() or '?'})") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def _rng(config: Config, store: Store, key: str) -> random.Random:
    if config.seed is None:
        return random.Random()
    return random.Random(f"{config.seed}/{store.refs.run}/{key}")


def _why(store: Store, sha: str) -> str:
    note = store.note(sha) or {}
    return note.get("reason") or note.get("status", "not evaluated")


def _fail(message: str):
    raise GitevolveError(message)
