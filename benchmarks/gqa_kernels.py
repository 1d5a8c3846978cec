"""One GQA attention candidate against MLX's and PyTorch's attention, on this machine's GPU.

    python benchmarks/gqa_kernels.py --kernel examples/gqa-cuda/attention.py
    python benchmarks/gqa_kernels.py --kernel gitevolve/island-2 --file attention.py   # a commit-ish
    python benchmarks/gqa_kernels.py --kernel K --set THREADS=128 --set SHARE_KV=True --json out.json

The candidate is a run's pick, found by the product, not by this script: `gitevolve run --time
10m` in a repository made by `gitevolve init --example gqa-cuda`, then `--kernel
gitevolve/island-K` (the island `gitevolve status` ranks first). This script only measures it.

For every scenario (decode with 40:8 and 16:8 heads against caches of 512 to 32768 tokens, decode
on a strided view of a cache as mlx-lm hands it over, batches above one, prefill of 2048 tokens)
it prints the candidate, mx.fast.scaled_dot_product_attention and, where torch sees a GPU,
torch.nn.functional.scaled_dot_product_attention, timed two ways in one process:

  per call   one call, then mx.eval (torch: torch.cuda.synchronize), as a user sees it, framework
             overhead included;
  amortised  CALLS calls on distinct K/V buffers (so the L2 cache flatters nobody) evaluated
             together, divided by CALLS: the kernel's cost with the launch overhead spread out.
             Each call's Python and graph building still counts in full: it all happens before
             the GPU starts on the first call. The GPU may run the independent calls concurrently.

Candidate and MLX alternate A B B A ... round by round, so drift falls on both alike; torch is
timed in its own loop right after (interleaving MLX and torch call by call slowed both). Medians
and the interquartile spread are reported. It also measures the device's copy and read bandwidth
(MLX and torch) and the fraction of it the candidate reaches on decode (the K/V bytes that must be
read, over its amortised time), and checks every scenario's output against the float32 reference
on fresh inputs, computed on the CPU stream (on a CUDA GPU, MLX's float32 matmuls run as TF32,
~2e-3 off in float32).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import math
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.candidate_file import candidate_file  # noqa: E402
from evaluators.gqa import baseline as mlx_baseline, guards, race  # noqa: E402
from evaluators.gqa.correctness import QUERY_STD, fresh_seed  # noqa: E402
from evaluators.gqa.reference import gqa_reference  # noqa: E402
from evaluators.gqa.shapes import ITEMSIZE  # noqa: E402
from gitevolve.mutate.tunables import parse as parse_tunables  # noqa: E402

try:
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        torch = None
except Exception:  # torch absent or broken: MLX-only comparison
    torch = None

TOLERANCE = {"float32": (1e-4, 1e-4), "float16": (1e-2, 1e-2), "bfloat16": (4e-2, 4e-2)}  # atol, rtol


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    batch: int
    query_heads: int
    kv_heads: int
    query_len: int
    key_len: int
    dtype: str = "float16"
    head_dim: int = 128
    causal: bool = True
    capacity: int = 0  # > key_len: K/V are the view [..., :key_len, :] of a buffer this long (mlx-lm's cache)

    @property
    def decode(self) -> bool:
        return self.query_len == 1

    @property
    def kv_bytes(self) -> int:
        """The bytes of K and V a decode step must read at least."""
        return 2 * self.batch * self.kv_heads * self.key_len * self.head_dim * ITEMSIZE[self.dtype]


def _decode(heads, lk, batch=1, dtype="float16", capacity=0):
    q, kv = heads
    tag = f"decode-{q}:{kv}-{lk}" + (f"-b{batch}" if batch > 1 else "") + ("" if dtype == "float16" else f"-{dtype}")
    if capacity:
        tag += f"-view{capacity}"
    return Scenario(tag, batch, q, kv, 1, lk, dtype, capacity=capacity)


def _prefill(heads, length, batch=1, dtype="float16"):
    q, kv = heads
    return Scenario(f"prefill-{q}:{kv}-{length}" + (f"-b{batch}" if batch > 1 else "")
                    + ("" if dtype == "float16" else f"-{dtype}"), batch, q, kv, length, length, dtype)


QWEN14, QWEN06 = (40, 8), (16, 8)
SETS = {
    "full": (
        *[_decode(QWEN14, n) for n in (512, 2048, 8192, 32768)],
        *[_decode(QWEN06, n) for n in (512, 2048, 8192, 32768)],
        # mlx-lm's KVCache grows in steps of 256 and hands attention keys[..., :offset, :]
        _decode(QWEN14, 8000, capacity=8192),
        _decode(QWEN14, 32700, capacity=32768),
        _decode(QWEN14, 8192, dtype="bfloat16"),
        _decode(QWEN14, 8192, batch=4),
        _decode(QWEN06, 2048, batch=8),
        _prefill(QWEN14, 2048),
        _prefill(QWEN06, 2048, dtype="bfloat16"),
    ),
    "quick": (
        _decode(QWEN14, 2048),
        _decode(QWEN14, 32768),
        _decode(QWEN14, 8000, capacity=8192),
        _prefill(QWEN14, 2048),
    ),
    # The evaluator's short calls, where the candidate trails MLX most per call (hooks/gqa_mlx.py on
    # the H100: 0.51x at 129 keys x 8, 0.70x at 128, 0.64x in float32, 0.79-0.89x for the short prompts;
    # on the H200 with the float32 phase's pick: 0.66x, 0.61x, 0.84x, 0.86-0.98x).
    "short": (
        _decode(QWEN06, 128),
        _decode(QWEN06, 129, batch=8, dtype="bfloat16"),
        _decode(QWEN14, 1000),
        _decode(QWEN06, 1023, dtype="float32"),  # the vector kernel: DOT="mma" decodes 16-bit types only
        _prefill(QWEN06, 37, batch=4, dtype="bfloat16"),
        Scenario("prefill-40:8-61-after-450", 1, 40, 8, 61, 511),
        _prefill(QWEN06, 512),
    ),
    # Small enough for MLX's CPU backend: checks this script, not a GPU.
    "cpu": (
        _decode(QWEN14, 300),
        _decode(QWEN06, 200, batch=2, dtype="bfloat16"),
        _decode(QWEN14, 250, capacity=512),
        _prefill(QWEN14, 40),
    ),
}

# ---------------------------------------------------------------------------------------------
# Inputs


def mlx_inputs(s: Scenario):
    """(queries, keys, values) as MLX arrays, evaluated; keys/values are views when s.capacity."""
    key = mx.random.key(fresh_seed())
    kq, kk, kv = mx.random.split(key, 3)
    dtype = getattr(mx, s.dtype)
    length = max(s.capacity, s.key_len)
    q = (QUERY_STD * mx.random.normal((s.batch, s.query_heads, s.query_len, s.head_dim), key=kq)).astype(dtype)
    k = mx.random.normal((s.batch, s.kv_heads, length, s.head_dim), key=kk).astype(dtype)
    v = mx.random.normal((s.batch, s.kv_heads, length, s.head_dim), key=kv).astype(dtype)
    if length > s.key_len:
        k, v = k[:, :, : s.key_len, :], v[:, :, : s.key_len, :]
    mx.eval(q, k, v)
    return q, k, v


def torch_inputs(s: Scenario):
    dtype = getattr(torch, s.dtype)
    length = max(s.capacity, s.key_len)
    q = QUERY_STD * torch.randn(s.batch, s.query_heads, s.query_len, s.head_dim, device="cuda", dtype=dtype)
    k = torch.randn(s.batch, s.kv_heads, length, s.head_dim, device="cuda", dtype=dtype)
    v = torch.randn(s.batch, s.kv_heads, length, s.head_dim, device="cuda", dtype=dtype)
    if length > s.key_len:
        k, v = k[:, :, : s.key_len, :], v[:, :, : s.key_len, :]
    return q, k, v


# ---------------------------------------------------------------------------------------------
# Contenders: each is a call (one attention) and a sync (wait until its results exist).


@dataclass
class Contender:
    name: str
    call: object
    sync: object
    inputs: list = field(default_factory=list)  # one (q, k, v) per distinct buffer set


def mlx_contender(name, fn, s: Scenario, sets: int = 0, inputs: list | None = None) -> Contender:
    """`fn` on `sets` fresh input sets of `s`, or on the `inputs` given."""
    scale = s.head_dim ** -0.5

    def call(q, k, v):
        return fn(q, k, v, scale, s.causal)

    return Contender(name, call, lambda outs: mx.eval(outs),
                     inputs if inputs is not None else [mlx_inputs(s) for _ in range(sets)])


DECODE_MASK = {"causal": False}  # --mlx-decode-mask


def baseline_fn(q, k, v, scale, causal):
    """MLX's attention as the evaluator harness calls it (baseline.attention: no mask for decode,
    where it hides nothing but sends MLX 0.32.4 down a slower path); with --mlx-decode-mask causal,
    the masked call there too."""
    return mlx_baseline.attention(q, k, v, scale, causal, masked_decode=DECODE_MASK["causal"])


def torch_contender(s: Scenario, sets: int) -> Contender:
    scale = s.head_dim ** -0.5
    # torch's is_causal aligns the mask top-left: the same as ours only when Lq == Lk. Decode
    # (Lq = 1) sees the whole cache, which is no mask at all.
    causal = s.causal and s.query_len > 1
    if causal and s.query_len != s.key_len:
        raise ValueError("torch's causal mask differs from ours when Lq != Lk")

    def call(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)

    return Contender("torch", call, lambda outs: torch.cuda.synchronize(), [torch_inputs(s) for _ in range(sets)])


# ---------------------------------------------------------------------------------------------
# Timing


def _stats(seconds: list[float]) -> dict:
    us = sorted(x * 1e6 for x in seconds)
    return {"median_us": statistics.median(us), "min_us": us[0], "spread": race.spread(us), "n": len(us)}


def time_per_call(contenders: list[Contender], rounds: int, warmup: int = 3) -> dict:
    """Median seconds of one call + sync, contenders interleaved A B C C B A ..."""
    times = {c.name: [] for c in contenders}
    for c in contenders:
        for i in range(warmup):
            c.sync(c.call(*c.inputs[i % len(c.inputs)]))
    for r in range(rounds):
        order = contenders if r % 2 == 0 else contenders[::-1]
        for c in order:
            args = c.inputs[r % len(c.inputs)]
            start = time.perf_counter()
            c.sync(c.call(*args))
            times[c.name].append(time.perf_counter() - start)
    return {name: _stats(t) for name, t in times.items()}


def time_amortised(contenders: list[Contender], rounds: int, warmup: int = 1) -> dict:
    """Median seconds per call of len(inputs) calls on distinct buffers, synced once."""
    times = {c.name: [] for c in contenders}

    def batch(c):
        start = time.perf_counter()
        c.sync([c.call(*args) for args in c.inputs])
        return (time.perf_counter() - start) / len(c.inputs)

    for c in contenders:
        for _ in range(warmup):
            batch(c)
    for r in range(rounds):
        for c in contenders if r % 2 == 0 else contenders[::-1]:
            times[c.name].append(batch(c))
    return {name: _stats(t) for name, t in times.items()}


# ---------------------------------------------------------------------------------------------
# Bandwidth


def warm_up(seconds: float) -> None:
    """Busy the GPU for a moment, so that the first scenario does not run at idle clocks."""
    if mx.default_device() == mx.cpu:
        return
    a = mx.random.normal((4096, 4096)).astype(mx.float16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        mx.eval(a @ a)


def bandwidth(nbytes: int = 1 << 30, reps: int = 10) -> dict:
    """Best GB/s of a device copy (bytes read + written) and of a read (a sum), MLX and torch."""
    out = {}
    n = nbytes // 2
    x = mx.random.normal((n,)).astype(mx.float16)
    mx.eval(x)

    def best(fn, moved):
        fn()
        ts = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
        return {"best_GBps": moved / min(ts) / 1e9, "median_GBps": moved / statistics.median(ts) / 1e9}

    out["mlx_copy"] = best(lambda: mx.eval(mx.abs(x)), 2 * nbytes)
    out["mlx_read"] = best(lambda: mx.eval(mx.max(x)), nbytes)
    del x
    if torch is not None:
        a = torch.randn(n, device="cuda", dtype=torch.float16)
        b = torch.empty_like(a)

        def copy():
            b.copy_(a)
            torch.cuda.synchronize()

        def read():
            a.amax()
            torch.cuda.synchronize()

        out["torch_copy"] = best(copy, 2 * nbytes)
        out["torch_read"] = best(read, nbytes)
        del a, b
        torch.cuda.empty_cache()
    mx.clear_cache()
    return out


# ---------------------------------------------------------------------------------------------
# Correctness


def check(fn, s: Scenario, calls: int = 2) -> dict:
    """The candidate on fresh inputs against the float32 reference; also whether its output is
    bit-identical to MLX's own attention (a hint that the candidate did not run its own code)."""
    atol, rtol = TOLERANCE[s.dtype]
    worst = {"ok": True, "max_abs_error": 0.0, "rel_error": 0.0, "identical_to_mlx": False}
    scale = s.head_dim ** -0.5
    for _ in range(calls):
        q, k, v = mlx_inputs(s)
        got = fn(q, k, v, scale, s.causal)
        mx.eval(got)
        with mx.stream(mx.cpu):  # exact float32: on the GPU, MLX's float32 matmuls may run as TF32
            ref = gqa_reference(q, k, v, scale, s.causal)
        theirs = baseline_fn(q, k, v, scale, s.causal)
        mx.eval(ref, theirs)
        if tuple(got.shape) != tuple(q.shape) or got.dtype != q.dtype:
            return {"ok": False, "report": f"shape {tuple(got.shape)} {got.dtype}, expected {tuple(q.shape)} {q.dtype}",
                    "max_abs_error": math.inf, "rel_error": math.inf, "identical_to_mlx": False}
        g = np.array(got.astype(mx.float32))
        e = np.array(ref)
        err = np.abs(g - e)
        finite = bool(np.isfinite(g).all())
        ok = finite and bool((err <= atol + rtol * np.abs(e)).all())
        rel = float(np.linalg.norm(g - e) / max(np.linalg.norm(e), 1e-30)) if finite else math.inf
        mae = float(err.max()) if finite else math.inf
        worst["ok"] = worst["ok"] and ok
        worst["max_abs_error"] = max(worst["max_abs_error"], mae)
        worst["rel_error"] = max(worst["rel_error"], rel)
        worst["identical_to_mlx"] = worst["identical_to_mlx"] or bool(mx.array_equal(got, theirs).item())
        mlx_err = float(np.abs(np.array(theirs.astype(mx.float32)) - e).max())
        worst["mlx_max_abs_error"] = max(worst.get("mlx_max_abs_error", 0.0), mlx_err)
    return worst


# ---------------------------------------------------------------------------------------------
# The candidate


def load_candidate(kernel: str, file: str = "attention.py") -> tuple[object, str]:
    """A path, or a commit-ish read with `git show REV:FILE`; returns (module, where it came from)."""
    path = candidate_file(kernel, file)
    where = str(path)
    if path != Path(kernel):
        rev = subprocess.run(["git", "rev-parse", kernel], capture_output=True, text=True).stdout.strip()
        where = f"{kernel}:{file} ({rev[:12]})"
    module = guards.load_candidate(path)
    if not callable(getattr(module, "gqa_attention", None)):
        raise SystemExit(f"{where} defines no gqa_attention(queries, keys, values, scale, causal)")
    return module, where


def tunables(module) -> dict[str, list]:
    """The candidate's tunables and their choices, read as the built-in operator reads them."""
    path = Path(module.__file__)
    return {t.name: list(t.choices) for t in parse_tunables(path.name, path.read_text())}


def apply_settings(module, settings: dict) -> None:
    for name, value in settings.items():
        if not hasattr(module, name):
            raise SystemExit(f"the candidate has no tunable {name}")
        setattr(module, name, value)


def current_settings(module) -> dict:
    return {name: getattr(module, name) for name in tunables(module)}


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[name.strip()] = value.strip()
    return out


# ---------------------------------------------------------------------------------------------
# Benchmark


def bench_scenario(fn, s: Scenario, calls: int, rounds: int, amortised_rounds: int) -> dict:
    result = {"scenario": asdict(s), "name": s.name}
    result["correctness"] = check(fn, s)
    contenders = [mlx_contender("candidate", fn, s, calls), mlx_contender("mlx", baseline_fn, s, calls)]
    result["per_call"] = time_per_call(contenders, rounds)
    result["amortised"] = time_amortised(contenders, amortised_rounds)
    del contenders
    if torch is not None:
        # Timed in its own loop, after MLX's: interleaving MLX and torch call by call slowed both
        # (on the H100, 2026-11-25: MLX's per-call time at 32k went from 170 to 770 us).
        try:
            theirs = [torch_contender(s, calls)]
            result["per_call"].update(time_per_call(theirs, rounds))
            result["amortised"].update(time_amortised(theirs, amortised_rounds))
            del theirs
        except ValueError as e:
            result["torch_skipped"] = str(e)
    mx.clear_cache()
    if torch is not None:
        torch.cuda.empty_cache()
    return result


def versions() -> dict:
    info = {"date": datetime.date.today().isoformat(), "python": platform.python_version(), "mlx": mx.__version__,
            "device": str(mx.default_device())}
    try:
        from importlib.metadata import version

        for pkg in ("mlx-cuda-13", "mlx-cuda-12", "mlx-cpu", "mlx-metal"):
            try:
                info[pkg] = version(pkg)
            except Exception:
                pass
    except ImportError:
        pass
    if torch is not None:
        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, gpu=torch.cuda.get_device_name())
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if smi.returncode == 0:
            info["nvidia_smi"] = smi.stdout.strip()
    except Exception:
        pass
    return info


def derive(results: list[dict], bw: dict) -> None:
    """Speedups and the roofline fraction, added to each scenario's result."""
    best_copy = max(v["best_GBps"] for k, v in bw.items() if k.endswith("_copy"))  # MLX's are always there
    best_read = max(v["best_GBps"] for k, v in bw.items() if k.endswith("_read"))
    for r in results:
        for mode in ("per_call", "amortised"):
            t = r[mode]
            mine = t["candidate"]["median_us"]
            r[f"{mode}_speedup_vs_mlx"] = t["mlx"]["median_us"] / mine
            if "torch" in t:
                r[f"{mode}_speedup_vs_torch"] = t["torch"]["median_us"] / mine
        s = Scenario(**r["scenario"])
        if s.decode:
            achieved = s.kv_bytes / (r["amortised"]["candidate"]["median_us"] * 1e-6) / 1e9
            r["kv_bytes"] = s.kv_bytes
            r["achieved_GBps"] = achieved
            r["fraction_of_copy_bw"] = achieved / best_copy
            r["fraction_of_read_bw"] = achieved / best_read
            r["roofline_us"] = s.kv_bytes / (best_read * 1e9) * 1e6


def table(results: list[dict], bw: dict) -> str:
    has_torch = any("torch" in r["per_call"] for r in results)
    head = ["scenario", "ok", "max err", "cand/call", "mlx/call", "x mlx"]
    if has_torch:
        head += ["torch/call", "x torch"]
    head += ["cand amort", "mlx amort", "x mlx"]
    if has_torch:
        head += ["torch amort", "x torch"]
    head += ["GB/s", "of copy", "spread"]
    rows = [head]
    for r in results:
        pc, am, c = r["per_call"], r["amortised"], r["correctness"]
        row = [r["name"], "yes" if c["ok"] else "NO", f"{c['max_abs_error']:.1e}",
               f"{pc['candidate']['median_us']:.1f}", f"{pc['mlx']['median_us']:.1f}", f"{r['per_call_speedup_vs_mlx']:.2f}"]
        if has_torch:
            row += [f"{pc['torch']['median_us']:.1f}", f"{r['per_call_speedup_vs_torch']:.2f}"] if "torch" in pc else ["-", "-"]
        row += [f"{am['candidate']['median_us']:.1f}", f"{am['mlx']['median_us']:.1f}", f"{r['amortised_speedup_vs_mlx']:.2f}"]
        if has_torch:
            row += [f"{am['torch']['median_us']:.1f}", f"{r['amortised_speedup_vs_torch']:.2f}"] if "torch" in am else ["-", "-"]
        worst = max(v["spread"] for mode in (pc, am) for v in mode.values())
        row += [f"{r['achieved_GBps']:.0f}" if "achieved_GBps" in r else "-",
                f"{r['fraction_of_copy_bw']:.0%}" if "fraction_of_copy_bw" in r else "-", f"{worst:.0%}"]
        rows.append(row)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("times in microseconds (medians); x = their time / candidate's (above 1: the candidate is faster)")
    lines.append("bandwidth (best GB/s): " + ", ".join(f"{k} {v['best_GBps']:.0f}" for k, v in bw.items()))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def scenarios_named(spec: str) -> tuple:
    """The scenarios `spec` names: one of SETS, or comma-separated scenario names from them."""
    if spec in SETS:
        return SETS[spec]
    known = {s.name: s for group in SETS.values() for s in group}
    unknown = [n for n in spec.split(",") if n not in known]
    if unknown:
        raise SystemExit(f"unknown scenario {unknown[0]!r}; the sets are {', '.join(SETS)}, "
                         f"the scenarios: {', '.join(sorted(known))}")
    return tuple(known[n] for n in spec.split(","))


def add_candidate_arguments(p: argparse.ArgumentParser) -> None:
    """--kernel, --file, --set and --settings-from: which candidate, under which setting."""
    p.add_argument("--kernel", required=True, help="a candidate attention.py, or a commit-ish holding one")
    p.add_argument("--file", default="attention.py", help="the candidate's path inside the commit-ish")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a tunable")
    p.add_argument("--settings-from", help="a JSON file with a 'best' or 'settings' dict (an older record's pick)")


def candidate_from_arguments(args) -> tuple[object, str]:
    """The candidate module those arguments name, its setting applied; and where it came from."""
    module, where = load_candidate(args.kernel, args.file)
    settings = {}
    if args.settings_from:
        saved = json.loads(Path(args.settings_from).read_text())
        settings.update(saved.get("best") or saved.get("settings") or saved.get("sweep", {}).get("best") or {})
    settings.update(parse_set(args.set))
    apply_settings(module, settings)
    return module, where


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_candidate_arguments(p)
    p.add_argument("--scenarios", default=None, help="full, quick, short, cpu, or comma-separated scenario names")
    p.add_argument("--quick", action="store_true", help="fewer scenarios and rounds")
    p.add_argument("--calls", type=int, default=50, help="calls per amortised measurement (distinct K/V buffers)")
    p.add_argument("--rounds", type=int, default=None, help="per-call rounds (default 30, quick 10)")
    p.add_argument("--mlx-decode-mask", choices=["causal", "none"], default="none",
                   help="MLX's mask for decode scenarios (the same result either way; see baseline_fn)")
    p.add_argument("--json", help="write all results here")
    args = p.parse_args(argv)

    DECODE_MASK["causal"] = args.mlx_decode_mask == "causal"
    module, where = candidate_from_arguments(args)
    cpu = mx.default_device() == mx.cpu
    report: dict = {"kernel": where, "versions": versions(), "mlx_decode_mask": args.mlx_decode_mask}
    print(f"candidate: {where}   device: {report['versions'].get('gpu') or report['versions']['device']}", flush=True)

    report["settings"] = current_settings(module)

    scenarios = scenarios_named(args.scenarios or ("cpu" if cpu else "quick" if args.quick else "full"))
    rounds = args.rounds or (10 if args.quick or cpu else 30)
    amortised_rounds = 3 if args.quick or cpu else 7
    calls = min(args.calls, 8) if cpu else args.calls

    warm_up(0.2 if cpu else 2.0)
    report["bandwidth"] = bandwidth(1 << 26 if cpu else 1 << 30)
    results = []
    for s in scenarios:
        try:
            r = bench_scenario(module.gqa_attention, s, calls, rounds, amortised_rounds)
        except Exception as e:
            print(f"{s.name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
            results.append({"name": s.name, "error": f"{type(e).__name__}: {e}"})
            continue
        results.append(r)
        print(f"{s.name}: candidate {r['amortised']['candidate']['median_us']:.1f} us amortised, "
              f"{r['per_call']['candidate']['median_us']:.1f} us per call; ok={r['correctness']['ok']}", flush=True)
    good = [r for r in results if "error" not in r]
    derive(good, report["bandwidth"])
    report["results"] = results
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    print()
    print(table(good, report["bandwidth"]))
    failed = [r["name"] for r in results if "error" in r or not r["correctness"]["ok"]]
    if failed:
        print("\nWRONG OR FAILED: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
