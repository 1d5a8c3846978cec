"""The Metal GQA example (examples/gqa-metal) run on a CPU, against the evaluator's reference.

There is no Apple GPU in CI, so tests/metal_emulation compiles the Metal source MLX generates for
each kernel launch as C++ (against a small shim of Metal's types and built-ins, threads as fibers)
and runs it. Passing here proves the generated source is right as C++: indexing, strides, the
causal mask, the split/merge arithmetic, the template parameters of each setting, and that every
thread reaches every barrier and shuffle. It does not prove that Metal's compiler accepts the
source, that address spaces are right, that threadgroup memory fits, or anything about real SIMD
timing or speed: tests/test_gqa_kernels.py (marker `metal`) covers those on Apple silicon.

The three last tests show that the emulation can fail: a broken causal offset and a missing barrier
mismatch, and a barrier that only some threads reach is reported.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the Metal emulation compiles kernels with g++")

mx = pytest.importorskip("mlx.core")

from evaluators.gqa import guards  # noqa: E402
from evaluators.gqa.correctness import QUERY_STD, TOLERANCES  # noqa: E402
from evaluators.gqa.reference import gqa_reference  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "metal_emulation"))
from emulate import EmulationError, Emulator  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gqa-metal" / "attention.py"

INITIAL = {}  # the example's own, slow starting point
FAST = dict(THREADS=256, KEY_LANES=32, VEC=4, SHARE_KV=True, ONLINE_SOFTMAX=True, UNROLL=2,
            SPLIT_BLOCKS=256, MIN_SPLIT_KEYS=128)
# Two-pass softmax, two SIMD groups to merge, uneven splits (97 keys in 3).
TWO_PASS = dict(THREADS=64, KEY_LANES=8, VEC=2, UNROLL=4, SPLIT_BLOCKS=64, MIN_SPLIT_KEYS=32)
SMALL_SHARED = dict(THREADS=32, KEY_LANES=4, VEC=4, SHARE_KV=True, ONLINE_SOFTMAX=True)
# D = 96: 16 lanes of 6 elements, read 2 at a time.
ODD_DIM = dict(THREADS=128, KEY_LANES=16, VEC=8, ONLINE_SOFTMAX=True)

# (tunables, batch, query heads, KV heads, query len, key len, head dim, dtype, causal, cache len).
# A cache len gives keys and values as a view of the first `key len` rows of a longer cache.
CASES = {
    "initial-fp16-decode": (INITIAL, 1, 8, 2, 1, 50, 64, "float16", True, None),
    "fast-fp16-decode-4-splits": (FAST, 1, 8, 2, 1, 600, 128, "float16", True, None),
    "fast-fp16-decode-cache-view": (FAST, 1, 8, 2, 1, 600, 128, "float16", True, 640),
    "two-pass-bf16-decode-3-splits": (TWO_PASS, 2, 4, 2, 1, 97, 64, "bfloat16", True, None),
    "shared-fp32-causal-prefill-7-after-13": (SMALL_SHARED, 1, 4, 2, 7, 20, 64, "float32", True, None),
    "odd-dim-fp16-noncausal-prefill": (ODD_DIM, 1, 6, 2, 3, 33, 96, "float16", False, None),
}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    # One build directory for the module: cases with the same source and template arguments (the
    # two FAST decodes) reuse the compiled program.
    return Emulator(tmp_path_factory.mktemp("metal-kernels"))


def load_example(tunables: dict, text: str | None = None, tmp_path: Path | None = None):
    """A fresh copy of the example (its kernels are made on first use, so inside the trace), with
    `tunables` set; from `text` instead of the file when given."""
    path = EXAMPLE
    if text is not None:
        path = tmp_path / "attention.py"
        path.write_text(text)
    module = guards.load_candidate(path)
    for name, value in tunables.items():
        assert hasattr(module, name), name
        setattr(module, name, value)
    return module


def mutated_example(old: str, new: str) -> str:
    text = EXAMPLE.read_text()
    assert text.count(old) == 1, f"the example no longer contains exactly one {old!r}; update this test"
    return text.replace(old, new)


def in_dtype(a: np.ndarray, dtype: str) -> np.ndarray:
    """`a` rounded to `dtype`, as float32: the emulation and the reference then see equal values."""
    return np.array(mx.array(a).astype(getattr(mx, dtype)).astype(mx.float32))


def run_case(emulator, module, case, work: Path, seed: int = 0):
    """(emulated output, reference output), both float32 (B, Hq, Lq, D)."""
    _, batch, hq, hkv, lq, lk, d, dtype, causal, cache_len = case
    rng = np.random.default_rng(seed)
    queries = in_dtype(QUERY_STD * rng.standard_normal((batch, hq, lq, d), np.float32), dtype)
    cache = [in_dtype(rng.standard_normal((batch, hkv, cache_len or lk, d), np.float32), dtype) for _ in range(2)]
    keys, values = (c[:, :, :lk] for c in cache)  # a strided view when cache_len > lk
    scale = d**-0.5
    (got,) = emulator.run(lambda q, k, v: module.gqa_attention(q, k, v, scale, causal),
                          [queries, keys, values], getattr(mx, dtype), work)
    want = gqa_reference(*(mx.array(np.ascontiguousarray(a)) for a in (queries, keys, values)), scale, causal)
    return got, np.array(want)


def mismatch(got: np.ndarray, want: np.ndarray, dtype: str) -> str | None:
    """None when `got` is within the evaluator's tolerance of `want`; else where it is worst."""
    allowed = TOLERANCES[dtype].allowed(want)
    error = np.where(np.isfinite(got), np.abs(got - want), np.inf)
    bad = ~(error <= allowed)
    if not bad.any():
        return None
    worst = np.unravel_index(np.argmax(error - allowed), error.shape)
    return (f"{bad.sum()} of {bad.size} outputs out of tolerance; worst at (b, h, i, d) = {tuple(map(int, worst))}: "
            f"got {got[worst]:.6g}, want {want[worst]:.6g}, allowed +-{allowed[worst]:.3g}")


@pytest.mark.parametrize("name", CASES)
def test_emulated_kernels_match_the_reference(name, emulator, tmp_path):
    case = CASES[name]
    got, want = run_case(emulator, load_example(case[0]), case, tmp_path)
    problem = mismatch(got, want, case[7])
    assert problem is None, f"{name}: {problem}"


def test_a_broken_causal_offset_mismatches(emulator, tmp_path):
    # The mask without the cache offset (Lk - Lq): prefill rows see too few keys.
    module = load_example(SMALL_SHARED, mutated_example("qi + Lk - Lq + 1", "qi + 1"), tmp_path)
    case = CASES["shared-fp32-causal-prefill-7-after-13"]
    got, want = run_case(emulator, module, case, tmp_path)
    assert mismatch(got, want, case[7]) is not None, "the emulation did not notice a broken causal mask"


def test_a_barrier_only_some_threads_reach_is_reported(emulator, tmp_path):
    # Only lane 0 of each key slot (of 4 lanes) waits at the new barrier.
    store = "    for (int j = 0; j < HEADS; ++j) { red_m[slot][j] = m[j]; red_l[slot][j] = l[j]; }"
    old = f"  if (lane == 0)\n{store}"
    new = f"  if (lane == 0) {{\n    threadgroup_barrier(mem_flags::mem_threadgroup);\n{store}\n  }}"
    module = load_example(SMALL_SHARED, mutated_example(old, new), tmp_path)
    with pytest.raises(EmulationError, match="BARRIER DIVERGENCE"):
        run_case(emulator, module, CASES["shared-fp32-causal-prefill-7-after-13"], tmp_path)


def test_a_missing_barrier_mismatches(emulator, tmp_path):
    # Without the barrier after the merged maximum is written, threads read row_m before it is
    # set; the emulator resumes threads in a shuffled order, so some read it too early.
    old = "    row_l[j] = total;\n  }\n  threadgroup_barrier(mem_flags::mem_threadgroup);"
    module = load_example(SMALL_SHARED, mutated_example(old, "    row_l[j] = total;\n  }"), tmp_path)
    case = CASES["shared-fp32-causal-prefill-7-after-13"]
    got, want = run_case(emulator, module, case, tmp_path)
    assert mismatch(got, want, case[7]) is not None, "the emulation did not notice a missing barrier"
