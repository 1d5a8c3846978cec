"""The timed block, as a timing process runs it: the candidate's (evaluate.py) and the baseline's
(baseline.py) run the same code on the same inputs.

The supervisor (race.py) sends a block: the seeds of its calls' queries and keys. The process
makes those inputs, announces "start", calls the function once per input with mx.eval after
each call (MLX is lazy: an unevaluated call costs nothing), synchronises the device, announces
"end", and then sends what the block produced: a digest of its last output, which tells a
candidate that returns the baseline's exact bits. The supervisor's clock between the two
announcements is the block's time; the process's own, sent along, is only a cross-check.

The clock, mx.eval and mx.synchronize are the objects captured when this module is imported,
before any candidate: a candidate that replaces the public names changes nothing here, and
integrity.py reports that it tried.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx

from evaluators.gqa.correctness import Inputs, keys_values, queries
from evaluators.gqa.shapes import Scenario

_clock = time.perf_counter
_eval = mx.eval
_synchronize = mx.synchronize
DIGEST_SAMPLE = 1 << 20  # elements of an output hashed at most: enough to tell two kernels apart
# Runs the timed block a command asks for, announcing start, end and what it produced through the callable.
Block = Callable[[dict, Callable[[dict], None]], None]


@dataclass
class Blocks:
    """Inputs for one scenario's blocks, made from the supervisor's seeds; keys and values are
    made once per seed (they can be large: a 32k cache), queries fresh for every call, drawn
    for the whole block at once from its first seed."""

    scenario: Scenario
    _kv: dict = field(default_factory=dict)

    def inputs(self, block: dict) -> list[Inputs]:
        seeds, kv_seeds = block["seeds"], block["kv"]
        if len(seeds) != len(kv_seeds):
            raise ValueError("a block needs one key seed per query seed")
        for kv_seed in set(kv_seeds) - set(self._kv):
            if len(self._kv) >= 2:  # the supervisor alternates two sets; a third replaces them
                self._kv.clear()
            k, v = keys_values(self.scenario, kv_seed)
            _eval(k, v)
            self._kv[kv_seed] = (k, v)
        if not seeds:
            return []
        # One draw for the whole block, each call a slice of its own: three operations per call
        # made a block's inputs cost more than the block itself on the H200 (decode-128: 512
        # calls, about 26 ms of making against 20 ms of timed work, per side and block).
        stacked = queries(self.scenario, seeds[0], len(seeds))
        _eval(stacked)
        scale = self.scenario.shape.head_dim ** -0.5
        return [Inputs(stacked[i], *self._kv[kv_seed], scale, self.scenario.causal, seeds[0], kv_seed, len(seeds), i)
                for i, kv_seed in enumerate(kv_seeds)]


def run(fn: Callable, inputs: list[Inputs], announce: Callable[[dict], None]) -> tuple[float, object]:
    """Announce, call `fn` on each of `inputs` (evaluated), sync, announce: (own seconds, last output)."""
    out = None
    announce({"op": "start"})
    started = _clock()
    for x in inputs:
        out = fn(*x.args())
        _eval(out)
    _synchronize()
    seconds = _clock() - started
    announce({"op": "end", "seconds": seconds})
    return seconds, out


def digest(out) -> str:
    """A hash of the output's bits, reduced on the device: only two numbers leave it.

    Reading the output itself from the host would cost the next blocks their speed on a CUDA
    device: MLX allocates managed memory there, the read moves the output's pages to the host,
    and the allocator hands those pages to the next block's inputs, which fault them back. On
    the H200 that made MLX's prefill-2048 take 320-390 us per call instead of 200-220
    (benchmarks/results/evaluator_timing-h200-2026-12-04.md). Integer sums are exact in any
    order, so the same bits give the same digest on either side.
    """
    if not isinstance(out, mx.array):
        return f"not an array: {type(out).__name__}"
    bits = {1: mx.uint8, 2: mx.uint16}.get(out.itemsize, mx.uint32)
    flat = out.view(bits).reshape(-1)
    sample = flat[::max(1, flat.size // DIGEST_SAMPLE)].astype(mx.uint32)
    # Each element's bits weighted by a multiplier of its place: an element that moves or changes moves the sum.
    weights = mx.arange(sample.size, dtype=mx.uint32) * 2654435761 + 1
    sums = mx.stack([mx.sum(sample), mx.sum(sample * weights)])
    return hashlib.sha1(f"{out.dtype}{out.shape}{sums.tolist()}".encode()).hexdigest()[:16]


def calls_message(seconds: float, out) -> dict:
    """What a block produced, sent after its "end": the supervisor compares digests across sides."""
    return {"op": "checked", "digest": digest(out), "seconds": seconds}


def runner(fn: Callable, scenario: Scenario) -> Block:
    """Runs the blocks of `scenario` the supervisor asks for, with `fn` (the baseline's way)."""
    blocks = Blocks(scenario)

    def block(command: dict, announce: Callable[[dict], None]) -> None:
        seconds, out = run(fn, blocks.inputs(command), announce)
        announce(calls_message(seconds, out))

    return block
