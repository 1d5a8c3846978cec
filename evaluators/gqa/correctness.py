"""Is the candidate's output right? Compared with the float32 reference on fresh random inputs.

Every check draws new seeds from os.urandom, so a candidate cannot be tuned to the inputs it
will see, and calls the candidate twice with different inputs, so one that returns a cached or
stale result matches at most one of them. The candidate runs before its reference is computed
and all outputs stay alive until the end: a GPU kernel that leaves its output unwritten cannot
be handed a freed buffer that happens to hold the right answer. The reference gets inputs made
anew from the same seeds: MLX arrays can be assigned in place, and a candidate that overwrote
its inputs would otherwise be judged on its own doctored data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import numpy as np

from evaluators.gqa.reference import gqa_reference
from evaluators.gqa.shapes import Scenario

# Queries drawn wider than keys make attention peaky (scores with std ~2): outputs are then
# O(0.3), well above the half-precision tolerances, so a wrong or missing head shows.
QUERY_STD = 2.0


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def allowed(self, expected: np.ndarray) -> np.ndarray:
        return self.atol + self.rtol * np.abs(expected)


# fp32 tight. Half precision: scores of magnitude ~10 rounded to the input dtype move the
# weights by a few ulp-sized percents, so a kernel computing in its inputs' dtype is off by up
# to 0.45% (fp16) and 1.4% (bf16) of 1 + |expected| on these inputs, mx.fast's own kernel by
# about half that; the tolerances leave 3-4x room over that, and a wrong key, head or mask is
# still off by tens of percents.
TOLERANCES = {
    "float32": Tolerance(atol=1e-4, rtol=1e-4),
    "float16": Tolerance(atol=1.5e-2, rtol=1.5e-2),
    "bfloat16": Tolerance(atol=5e-2, rtol=5e-2),
}


@dataclass(frozen=True)
class Inputs:
    queries: mx.array
    keys: mx.array
    values: mx.array
    scale: float
    causal: bool
    seed: int  # the queries'
    kv_seed: int  # the keys' and values'
    # Queries drawn for a whole timed block at once (timing.Blocks): this call's are row `row`
    # of `drawn` calls' drawn from `seed`. 0 where they were drawn alone.
    drawn: int = 0
    row: int = 0

    def args(self) -> tuple:
        return self.queries, self.keys, self.values, self.scale, self.causal

    def seeds(self) -> str:
        drawn = f"[{self.row} of {self.drawn}]" if self.drawn else ""
        return f"seeds {self.seed}{drawn}/{self.kv_seed}"


def fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def queries(scenario: Scenario, seed: int, calls: int | None = None) -> mx.array:
    """One call's queries, or with `calls` that many calls' stacked on a leading axis (one draw).

    A timed block's draw is uniform, with the same spread: MLX's CPU backend draws normals five
    times slower, and a block of prefill-37's queries took 60% as long to draw as to attend to.
    The checks keep normal queries, whose tails try a kernel's softmax harder."""
    m = scenario.shape
    shape = (scenario.batch, m.query_heads, scenario.query_len, m.head_dim)
    key = mx.random.key(seed)
    if calls is None:
        drawn = QUERY_STD * mx.random.normal(shape, key=key)
    else:
        drawn = mx.random.uniform(-QUERY_STD * 3 ** 0.5, QUERY_STD * 3 ** 0.5, (calls, *shape), key=key)
    return drawn.astype(getattr(mx, scenario.dtype))


def keys_values(scenario: Scenario, kv_seed: int) -> tuple[mx.array, mx.array]:
    m = scenario.shape
    shape = (scenario.batch, m.kv_heads, scenario.key_len, m.head_dim)
    kk, kv = mx.random.split(mx.random.key(kv_seed), 2)
    dtype = getattr(mx, scenario.dtype)
    return mx.random.normal(shape, key=kk).astype(dtype), mx.random.normal(shape, key=kv).astype(dtype)


def make_inputs(scenario: Scenario, seed: int | None = None, kv_seed: int | None = None) -> Inputs:
    """Random inputs of the scenario's shape and dtype, already evaluated; the same seeds give the same inputs."""
    seed = fresh_seed() if seed is None else seed
    kv_seed = fresh_seed() if kv_seed is None else kv_seed
    q, (k, v) = queries(scenario, seed), keys_values(scenario, kv_seed)
    mx.eval(q, k, v)
    return Inputs(q, k, v, scenario.shape.head_dim ** -0.5, scenario.causal, seed, kv_seed)


def remake(scenario: Scenario, inputs: Inputs) -> Inputs:
    """A pristine copy of `inputs`, made again from their seeds."""
    if not inputs.drawn:
        return make_inputs(scenario, inputs.seed, inputs.kv_seed)
    q, (k, v) = queries(scenario, inputs.seed, inputs.drawn)[inputs.row], keys_values(scenario, inputs.kv_seed)
    mx.eval(q, k, v)
    return Inputs(q, k, v, inputs.scale, inputs.causal, inputs.seed, inputs.kv_seed, inputs.drawn, inputs.row)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    max_abs_error: float  # inf when the output could not be compared at all
    report: str  # one line: what was wrong and where, or the worst error when right
    kind: str = "wrong_output"  # when not ok: "wrong_output" or "input_overwritten"


def compare(scenario: Scenario, inputs: Inputs, got, expected: mx.array, call: str = "") -> Verdict:
    """The candidate's output `got` against the float32 reference `expected`."""
    where = f"{scenario.name}{call} ({inputs.seeds()})"
    want_shape = tuple(inputs.queries.shape)
    if not isinstance(got, mx.array):
        return Verdict(False, float("inf"), f"{where}: returned {type(got).__name__}, not an mx.array")
    if tuple(got.shape) != want_shape:
        return Verdict(False, float("inf"), f"{where}: output shape {tuple(got.shape)}, expected {want_shape}")
    if got.dtype != inputs.queries.dtype:
        return Verdict(False, float("inf"), f"{where}: output dtype {got.dtype}, expected {inputs.queries.dtype} (the queries' dtype)")
    g = np.array(got.astype(mx.float32))
    e = np.array(expected.astype(mx.float32))
    bad = ~np.isfinite(g)
    if bad.any():
        i = tuple(int(x) for x in np.argwhere(bad)[0])
        return Verdict(False, float("inf"), f"{where}: {int(bad.sum())} non-finite outputs, first at {i}: got {g[i]}, expected {e[i]:.6e}")
    error = np.abs(g - e)
    tol = TOLERANCES[scenario.dtype]
    excess = error - tol.allowed(e)
    i = np.unravel_index(int(np.argmax(excess)), excess.shape)
    i = tuple(int(x) for x in i)
    worst = (f"at (b, h, i, d) = {i}: got {g[i]:.6e}, expected {e[i]:.6e}, error {error[i]:.3e} "
             f"(allowed {tol.atol:g} + {tol.rtol:g}*|expected|)")
    max_abs = float(error.max())
    if excess[i] > 0:
        wrong = int((excess > 0).sum())
        return Verdict(False, max_abs, f"{where}: {wrong} of {error.size} outputs out of tolerance; worst {worst}")
    return Verdict(True, max_abs, f"{where}: max abs error {max_abs:.3e}")


def check(scenario: Scenario, candidate: Callable, calls: int = 2) -> Verdict:
    """Call the candidate `calls` times on different fresh inputs; each output must match its own reference."""
    runs = []
    for n in range(calls):
        inputs = make_inputs(scenario)
        got = candidate(*inputs.args())
        if isinstance(got, mx.array):
            mx.eval(got)
        runs.append((n, inputs, got))
    worst, references = Verdict(True, 0.0, ""), []
    for n, inputs, got in runs:
        verdict, pristine, expected = verify(scenario, inputs, got, f" call {n + 1} of {calls}")
        if verdict.kind == "input_overwritten":
            return verdict
        references.append((pristine, expected))
        if not verdict.ok:
            return _name_stale(scenario, verdict, got, references[:-1])
        if verdict.max_abs_error >= worst.max_abs_error:
            worst = verdict
    return worst


def verify(scenario: Scenario, inputs: Inputs, got, call: str = "") -> tuple[Verdict, Inputs, mx.array | None]:
    """`got` against the float32 reference for `inputs` as they were made: (verdict, those inputs
    made anew, the reference). A candidate that wrote into its inputs fails before any comparison."""
    pristine = remake(scenario, inputs)
    changed = overwritten(inputs, pristine)
    if changed:
        return Verdict(False, float("inf"), f"{scenario.name}{call} ({inputs.seeds()}): gqa_attention overwrote its "
                                            f"input {changed} in place", "input_overwritten"), pristine, None
    expected = gqa_reference(*pristine.args())
    mx.eval(expected)
    return compare(scenario, pristine, got, expected, call), pristine, expected


def overwritten(inputs: Inputs, pristine: Inputs) -> str | None:
    """The name of the first input that no longer equals its pristine copy, or None."""
    for name in ("queries", "keys", "values"):
        now, then = getattr(inputs, name), getattr(pristine, name)
        if now.shape != then.shape or now.dtype != then.dtype or not mx.array_equal(now, then).item():
            return name
    return None


def _name_stale(scenario: Scenario, verdict: Verdict, got, earlier: list) -> Verdict:
    """Say so when a wrong output is the right answer to an earlier call's inputs."""
    for n, (inputs, expected) in enumerate(earlier):
        if compare(scenario, inputs, got, expected).ok:
            return Verdict(False, verdict.max_abs_error,
                           f"{verdict.report}; it matches the answer to call {n + 1}'s inputs: a cached or stale result")
    return verdict
