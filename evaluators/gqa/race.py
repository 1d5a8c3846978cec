"""Candidate against baseline, timed by the supervisor's clock (standard library only).

Two timing processes race: the candidate's, and the baseline's, which never loads candidate code.
The supervisor sends each a block of calls (the seeds of their inputs) and times it between the
block's "start" and "end" announcements (channel.py). Blocks alternate A B B A A B ... so that
drift falls on both sides alike, both sides get the same inputs in the same round, and every
call has queries of its own, so a candidate cannot memoize an earlier call's answer.

Before each race the baseline is timed alone ("clean", within the scenario's time budget, the
candidate's process stopped): that also sets the calls per block (BLOCK_SECONDS of baseline work, so the handshake is well under 1%
of a block) and measures the handshake itself (blocks of no calls). While a baseline block
runs, the candidate's process group is stopped (SIGSTOP): no thread or process of its can take
the baseline's CPU. After the race:

    the candidate process's own clock disagrees with ours     timing_tampered
    the raced baseline's fastest block is slower than alone   baseline_slowed (transient unless 2x)
    every output's bits are the baseline's (report.py)        identical to the baseline, score 0
"""

from __future__ import annotations

import math
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

BLOCK_SECONDS = 0.02
# The queries one block makes ahead, at most. It binds only where calls are fast, on a large
# GPU: at 256 MiB prefill-2048's blocks on the H200 held 12 calls (2.6 ms), which made the
# handshake 3% of a block; at 2 GiB they hold about 97 (20 ms).
MAX_QUERY_BYTES = 2 * 2**30
MAX_CALLS = 512
PROBE_CALLS = 4
SLOW_BLOCKS = 4  # a candidate whose block of the baseline's calls would take this many blocks' time gets fewer calls
MIN_CALL_SECONDS = 5e-6
# The candidate process's clock may differ from ours by the handshake and by scheduling, never
# by this much over a whole race: beyond it, the timed process's clock or announcements were
# tampered with.
CLOCK_AGREEMENT = 0.25
HANDSHAKE_SLACK = 0.5e-3  # seconds per block, on top of four measured handshakes
# A raced baseline whose fastest block is slower than the clean phase's fastest by more than
# this was slowed down by its rival. The fastest, not the median: noise on a shared machine
# slows some blocks, a rival that slows the baseline slows every one.
# Between the margin and GROSSLY_SLOWED the result is transient (retried: it may be the machine),
# past it failed.
SLOWED_MARGIN = 0.5
GROSSLY_SLOWED = 2.0


class Cheated(Exception):
    """The race shows the candidate tampered with it: `kind` is a failure_kind."""

    def __init__(self, reason: str, kind: str, transient: bool = False, race: "Race | None" = None) -> None:
        super().__init__(reason)
        self.reason, self.kind, self.transient, self.race = reason, kind, transient, race


@dataclass(frozen=True)
class Budget:
    warmup: int = 1  # untimed blocks: compilation, allocation, caches (the candidate's, the clean baseline's)
    min_rounds: int = 8
    max_rounds: int = 200
    # Per scenario, once past min_rounds: the clean baseline's blocks and both sides' in the race.
    seconds: float = 0.8  # budget_seconds() gives a GPU less

    clean_blocks: int = 3
    block_seconds: float = BLOCK_SECONDS


@dataclass(frozen=True)
class Block:
    parent: float  # seconds between "start" and "end", by the supervisor's clock
    child: float  # the same, by the timing process's own clock
    calls: int
    digest: str  # of the block's last output

    @property
    def seconds(self) -> float:
        """The block's time: the supervisor's, or the timing process's own where that is longer.

        The supervisor stamps "start" when it reads it, so a supervisor that wakes late reads a
        block as shorter than it was (an honest program's blocks read 179 ms against its own
        clock's 323 on a loaded 2-core machine). The process's own clock is right unless it lies,
        and a lie can only make its time longer here: the larger of the two is never short."""
        return max(self.parent, self.child)

    @property
    def per_call(self) -> float:
        return self.seconds / max(self.calls, 1)


def budget_seconds(backend: str) -> float:
    """The timing budget per scenario: on a GPU little more than the minimum rounds.

    A GPU's calls are short, so four rounds of 20 ms blocks already time 80 ms of each side's
    calls per scenario (hundreds of calls), where the one-process harness timed 200 single calls
    (10-70 ms). A CPU's calls are milliseconds long: eight rounds are few calls there."""
    return 0.8 if backend == "cpu" else 0.2


def budget_rounds(backend: str) -> int:
    """The fewest rounds per scenario. On the H200, 4 rounds and 0.2 s gave the sweep pick the
    same per-scenario speedups as 8 rounds and 0.4 s (within the repeats' range on 20 of 21
    scenarios) in 64% less time per evaluation (evaluator_timing-h200-2026-12-04-budgets)."""
    return Budget.min_rounds if backend == "cpu" else 4


def budget(backend: str, seconds: float | None = None, rounds: int | None = None) -> Budget:
    """The hook's budget: the backend's defaults, or what --seconds and --rounds say."""
    return Budget(seconds=budget_seconds(backend) if seconds is None else seconds,
                  min_rounds=budget_rounds(backend) if rounds is None else rounds)


class Worker(Protocol):
    def block(self, command: dict) -> Block: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


@contextmanager
def stopped(worker: Worker) -> Iterator[None]:
    """The worker's process paused while inside (the candidate's, while the baseline runs)."""
    worker.pause()
    try:
        yield
    finally:
        worker.resume()


def spread(times: Sequence[float]) -> float:
    """Interquartile range over the median: how noisy a series of timings was (0 under 4 of them)."""
    median = statistics.median(times) if times else 0.0
    if len(times) < 4 or not median:
        return 0.0
    q1, _, q3 = statistics.quantiles(times, n=4)
    return (q3 - q1) / median


@dataclass(frozen=True)
class Side:
    blocks: tuple[Block, ...]

    @property
    def seconds(self) -> list[float]:
        return [b.per_call for b in self.blocks]

    @property
    def median_us(self) -> float:
        return statistics.median(self.seconds) * 1e6

    @property
    def fastest_us(self) -> float:
        return min(self.seconds) * 1e6

    @property
    def spread(self) -> float:
        return spread(self.seconds)


@dataclass(frozen=True)
class Clean:
    calls: int  # per block, for this scenario, both sides
    baseline: Side
    handshake: float  # seconds: a block of no calls
    seconds: float  # the whole clean phase took, wall clock
    # Its key sets, which the race uses too: the baseline's process keeps them from its clean
    # blocks instead of drawing two more (on the CPU, 2 x 55 ms at decode-1000 per side).
    kv: tuple[int, int]


@dataclass(frozen=True)
class Race:
    candidate: Side
    baseline: Side
    clean: Clean

    @property
    def speedup(self) -> float:
        return self.baseline.median_us / self.candidate.median_us

    @property
    def spread(self) -> float:
        """The noisier side's relative interquartile spread."""
        return max(self.candidate.spread, self.baseline.spread)

    @property
    def handshake_fraction(self) -> float:
        return self.clean.handshake / statistics.median(b.parent for b in self.candidate.blocks + self.baseline.blocks)


def _seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


@dataclass
class Seeds:
    """Block commands for one scenario: fresh query seeds every call, keys from two sets in turn
    (a 32k cache is large; two sets move twice its size through any on-chip cache between reads)."""

    scenario: str
    kv: tuple[int, int] = field(default_factory=lambda: (_seed(), _seed()))
    _calls: int = 0

    def block(self, calls: int) -> dict:
        kv = [self.kv[(self._calls + i) % 2] for i in range(calls)]
        self._calls += calls
        return {"op": "block", "scenario": self.scenario, "seeds": [_seed() for _ in range(calls)], "kv": kv}


def clean(baseline: Worker, scenario: str, query_bytes: int, budget: Budget = Budget()) -> Clean:
    """The baseline alone: warm-up, the calls per block, the handshake's cost, then clean blocks."""
    seeds, started = Seeds(scenario), time.monotonic()
    for _ in range(budget.warmup):
        baseline.block(seeds.block(1))
    handshake = min(baseline.block(seeds.block(0)).parent for _ in range(2))
    # A few calls, not one: a single short call's time is mostly the handshake's (a device sync
    # among them), and what is left of it after the subtraction is noise.
    probe = min(baseline.block(seeds.block(PROBE_CALLS)).parent for _ in range(2))
    per_call = max((probe - handshake) / PROBE_CALLS, probe / PROBE_CALLS / 2, MIN_CALL_SECONDS)
    most = max(1, min(MAX_CALLS, MAX_QUERY_BYTES // max(query_bytes, 1)))
    calls = max(1, min(most, math.ceil(budget.block_seconds / per_call)))
    side = Side(tuple(baseline.block(seeds.block(calls)) for _ in range(budget.clean_blocks)))
    return Clean(calls, side, handshake, time.monotonic() - started, seeds.kv)


def race(candidate: Worker, baseline: Worker, scenario: str, before: Clean, budget: Budget = Budget(),
         slowed: bool = True) -> Race:
    """Alternating blocks of `before.calls` calls (fewer for a much slower candidate:
    candidate_calls), the candidate stopped while the baseline runs; judged (without the
    baseline_slowed check unless `slowed`)."""
    seeds = Seeds(scenario, before.kv)

    def run(worker: Worker, command: dict) -> Block:
        if worker is baseline:
            with stopped(candidate):
                return baseline.block(command)
        return candidate.block(command)

    ours_calls = candidate_calls(candidate.block(seeds.block(1)), before, budget)
    for _ in range(budget.warmup):  # the baseline's process is warm from its clean blocks
        candidate.block(seeds.block(ours_calls))
    ours, theirs = [], []
    started = time.monotonic() - before.seconds
    for r in range(max(budget.max_rounds, 1)):
        if r >= budget.min_rounds and time.monotonic() - started > budget.seconds:
            break
        command = seeds.block(before.calls)
        mine = {"op": command["op"], "scenario": command["scenario"], "seeds": command["seeds"][:ours_calls],
                "kv": command["kv"][:ours_calls]}
        for worker in ((candidate, baseline) if r % 2 == 0 else (baseline, candidate)):
            if worker is candidate:
                ours.append(run(candidate, mine))
            else:
                theirs.append(run(baseline, command))
    result = Race(Side(tuple(ours)), Side(tuple(theirs)), before)
    judge(scenario, result, slowed)
    return result


def candidate_calls(probe: Block, before: Clean, budget: Budget) -> int:
    """The calls in each of the candidate's blocks: the baseline's, unless one call of the
    candidate's (`probe`, which also warms it up) shows that many would take far longer than a
    block should; then as many as fit in a block, and at least one: the first of the baseline's
    block's inputs.

    Blocks are sized on the baseline alone, so a candidate 100 times slower would take 100 times
    a block's time per block: the plain gqa-cuda program, about 150 ms a call at a 32k cache
    against MLX's 0.16 ms, 19 s for each of its nine blocks there. Its speedup is no less clear
    from shorter blocks. (Blocks of different lengths end on different inputs, so such a
    candidate is never found identical to the baseline: it is slower anyway.)"""
    if probe.per_call * before.calls <= SLOW_BLOCKS * budget.block_seconds:
        return before.calls
    return max(1, min(before.calls, math.ceil(budget.block_seconds / probe.per_call)))


def judge(scenario: str, result: Race, slowed: bool = True) -> None:
    """Raise Cheated when the race shows tampering."""
    ours = result.candidate.blocks
    parent, child = sum(b.parent for b in ours), sum(b.child for b in ours)
    # Each block's two announcements cross the pipe and the scheduler: a block of almost no work
    # is mostly that, which is no tampering. Only a process clock that reads less than ours is
    # suspect: ours reads less than the truth when we wake late, and Block.seconds takes the larger.
    slack = CLOCK_AGREEMENT * parent + len(ours) * (4 * result.clean.handshake + HANDSHAKE_SLACK)
    if parent - child > slack:
        raise Cheated(f"{scenario}: timing tampered with: the candidate's process clocked its blocks at "
                      f"{child * 1e3:.1f} ms, the supervisor at {parent * 1e3:.1f} ms", "timing_tampered")
    clean_us, raced_us = result.clean.baseline.fastest_us, result.baseline.fastest_us
    if slowed and raced_us > clean_us * (1 + SLOWED_MARGIN):
        gross = raced_us > clean_us * GROSSLY_SLOWED
        why = "the candidate slowed its rival down" if gross else "the candidate slowed it, or the machine is busy"
        raise Cheated(f"{scenario}: the baseline ran no faster than {raced_us:.1f} us per call against the "
                      f"candidate, {clean_us:.1f} us alone: {why}", "baseline_slowed", transient=not gross,
                      race=result)
