"""Candidate against baseline, interleaved in one process.

Calls alternate A B B A A B ... so that drift (clocks, heat, another process) falls on both
sides alike, every call is followed by mx.eval (MLX is lazy: an unevaluated call costs nothing),
and both sides get the same inputs in the same round. Every round has inputs of its own, so a
candidate cannot memoize an earlier call's answer.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import mlx.core as mx

from evaluators.gqa.correctness import Inputs
from evaluators.gqa.guards import REAL_BASELINE


@dataclass(frozen=True)
class Side:
    seconds: tuple[float, ...]

    @property
    def median_us(self) -> float:
        return statistics.median(self.seconds) * 1e6

    @property
    def spread(self) -> float:
        return spread(self.seconds)


def spread(times) -> float:
    """Interquartile range over the median: how noisy a series of timings was (0 under 4 of them)."""
    median = statistics.median(times) if times else 0.0
    if len(times) < 4 or not median:
        return 0.0
    q1, _, q3 = statistics.quantiles(times, n=4)
    return (q3 - q1) / median


@dataclass(frozen=True)
class Race:
    candidate: Side
    baseline: Side
    last_output: mx.array  # the candidate's output of its last timed call, on last_inputs
    last_inputs: Inputs

    @property
    def speedup(self) -> float:
        return self.baseline.median_us / self.candidate.median_us

    @property
    def spread(self) -> float:
        """The noisier side's relative interquartile spread."""
        return max(self.candidate.spread, self.baseline.spread)


@dataclass(frozen=True)
class Budget:
    warmup: int = 2  # per side, untimed: compilation, allocation, caches
    min_rounds: int = 8
    max_rounds: int = 200
    seconds: float = 0.8  # per scenario, both sides together, once past min_rounds


def _timed(fn: Callable, inputs: Inputs) -> tuple[float, mx.array]:
    args = inputs.args()
    start = time.perf_counter()
    out = fn(*args)
    mx.eval(out)
    return time.perf_counter() - start, out


def race(candidate: Callable, baseline: Callable, rounds: Iterator[Inputs], budget: Budget = Budget()) -> Race:
    """Time candidate and baseline round by round, in alternating order, each round (warm-up
    included) on the next inputs from `rounds`, which are made between timed calls."""
    for _ in range(budget.warmup):
        inputs = next(rounds)
        for fn in (candidate, baseline):
            _timed(fn, inputs)
    ours, theirs = [], []
    out = inputs = None
    started = time.perf_counter()
    for r in range(max(budget.max_rounds, 1)):
        if r >= budget.min_rounds and time.perf_counter() - started > budget.seconds:
            break
        inputs = next(rounds)
        order = ((candidate, ours), (baseline, theirs)) if r % 2 == 0 else ((baseline, theirs), (candidate, ours))
        for fn, times in order:
            t, result = _timed(fn, inputs)
            times.append(t)
            if fn is candidate:
                out = result
    return Race(Side(tuple(ours)), Side(tuple(theirs)), out, inputs)


def baseline(queries, keys, values, scale, causal):
    """MLX's own attention, called through the reference saved before any candidate ran.

    It takes Hkv < Hq directly, and its "causal" mask is aligned bottom-right like ours. A single
    query row sees every key, so decode goes without the mask, as mlx-lm calls it: with
    mask="causal" MLX 0.32's CUDA backend takes a slower path (measured on the H100: ~680 us per
    call at a 32k cache against ~170 us unmasked), which would flatter every candidate.
    """
    masked = causal and queries.shape[2] > 1
    return REAL_BASELINE(queries, keys, values, scale=scale, mask="causal" if masked else None)
