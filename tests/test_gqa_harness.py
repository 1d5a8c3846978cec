"""The GQA harness's kernel-era checks, on the CPU: backend choice, proof that a candidate's
kernel computes what is timed (with fake kernel factories that compute with MLX ops, called the
way mx.fast.cuda_kernel and mx.fast.metal_kernel are), times faster than memory allows, the
summary metrics, and the supervisor that survives crashes, hangs and compiler errors in real
child processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

mx = pytest.importorskip("mlx.core")

from evaluators.gqa import backend, bandwidth, cli, launches, summary, supervise  # noqa: E402
from evaluators.gqa.evaluate import Setup, evaluate  # noqa: E402
from evaluators.gqa.reference import gqa_reference  # noqa: E402
from evaluators.gqa.shapes import CPU, GPU, Scenario, select  # noqa: E402
from evaluators.gqa.local import Local  # noqa: E402
from evaluators.gqa.race import Budget  # noqa: E402

from conftest import ROOT  # noqa: E402

HOOK = ROOT / "hooks" / "gqa_mlx.py"
MLX_EXAMPLE = ROOT / "examples" / "gqa-mlx" / "attention.py"
CHECK_ONLY = Setup(stage="correctness")
QUICK = Setup(timer=Local(Budget(warmup=1, min_rounds=3, max_rounds=4, seconds=0.01, clean_blocks=2)))
PREFILL_THEN_DECODE = select("prefill-37,decode-256-b2")

# --- fake kernels: the calling convention of mx.fast's kernels, computing with MLX ops -------------


def fake_factory(*, name, input_names, output_names, source, header="", **options):
    """Stands in for mx.fast.cuda_kernel / metal_kernel: the kernel it returns computes attention."""

    def launch(*, inputs, output_shapes, output_dtypes, grid, threadgroup, template=(), init_value=None,
               verbose=False, stream=None):
        queries, keys, values, scale = inputs
        return [gqa_reference(queries, keys, values, scale, dict(template)["CAUSAL"]).astype(output_dtypes[0])]

    return launch


def fake_precompiled(*, name, compiled_source, inputs, output_shapes, output_dtypes, scalars, grid, threadgroup,
                     **options):
    return fake_factory(name=name, input_names=[], output_names=[], source="")(
        inputs=inputs, output_shapes=output_shapes, output_dtypes=output_dtypes, grid=grid, threadgroup=threadgroup,
        template=[("CAUSAL", scalars[0])])


@pytest.fixture
def fakes(monkeypatch):
    """Fake factories in place of the real ones (which cannot launch without a GPU)."""
    monkeypatch.setattr(mx.fast, "cuda_kernel", fake_factory)
    monkeypatch.setattr(mx.fast, "metal_kernel", fake_factory)
    monkeypatch.setattr(mx.fast, "precompiled_cuda_kernel", fake_precompiled)
    return mx.compile


BUILD = {
    "cuda_kernel": 'mx.fast.cuda_kernel(name="gqa_fake", input_names=["queries", "keys", "values", "scale"], '
                   'output_names=["out"], source="/* attention */")',
    "metal_kernel": 'mx.fast.metal_kernel(name="gqa_fake_metal", input_names=["queries", "keys", "values", "scale"], '
                    'output_names=["out"], source="/* attention */")',
}
LAUNCH = '''
def _launch(queries, keys, values, scale, causal):
    return _kernel()(inputs=[queries, keys, values, mx.array(scale, dtype=mx.float32)], template=[("CAUSAL", causal)],
                     grid=(32, 1, 1), threadgroup=(32, 1, 1), output_shapes=[queries.shape],
                     output_dtypes=[queries.dtype])[0]
'''
LAUNCH_PRECOMPILED = '''
def _launch(queries, keys, values, scale, causal):
    return mx.fast.precompiled_cuda_kernel(
        name="gqa_ptx", compiled_source=b"", inputs=[queries, keys, values, mx.array(scale, dtype=mx.float32)],
        output_shapes=[queries.shape], output_dtypes=[queries.dtype], scalars=[causal], grid=(32, 1, 1),
        threadgroup=(32, 1, 1))[0]
'''


def candidate(tmp_path: Path, body: str, factory: str = "cuda_kernel", prelude: str = "") -> Path:
    """A candidate whose kernel is built on first use (as the CUDA example does) and whose
    gqa_attention is `body`; _mlx computes the same answer without any kernel."""
    launch = LAUNCH_PRECOMPILED if factory == "precompiled_cuda_kernel" else LAUNCH
    build = BUILD.get(factory, "None")
    text = (f"import mlx.core as mx\nfrom evaluators.gqa.reference import gqa_reference\n{prelude}\n"
            f"_kernels = []\n\n\ndef _kernel():\n    if not _kernels:\n        _kernels.append({build})\n"
            f"    return _kernels[0]\n{launch}\n\n"
            "def _mlx(queries, keys, values, scale, causal):\n"
            "    return gqa_reference(queries, keys, values, scale, causal).astype(queries.dtype)\n\n\n"
            f"def gqa_attention(queries, keys, values, scale, causal):\n{body}")
    path = tmp_path / "attention.py"
    path.write_text(text)
    return path


ARGS = "queries, keys, values, scale, causal"
HONEST = f"    return _launch({ARGS})\n"


def failed(result: dict, kind: str, *words: str) -> str:
    assert result["status"] == "failed", result
    assert result["metrics"]["failure_kind"] == kind, result
    for word in words:
        assert word in result["reason"], result["reason"]
    return result["reason"]


# --- backend ---------------------------------------------------------------------------------------


def test_auto_takes_a_gpu_when_there_is_one(monkeypatch):
    chosen = []
    monkeypatch.setattr(backend, "available", lambda: {"cpu": True, "cuda": True, "metal": False})
    monkeypatch.setattr(mx, "set_default_device", chosen.append)
    picked = backend.choose("auto")
    assert (picked.name, picked.scenario_set, chosen) == ("cuda", "gpu", [mx.gpu])
    monkeypatch.setattr(backend, "available", lambda: {"cpu": True, "cuda": True, "metal": True})
    assert backend.choose("auto").name == "metal"
    monkeypatch.setattr(backend, "available", lambda: {"cpu": True, "cuda": False, "metal": False})
    assert (backend.choose("auto").name, backend.choose("auto").scenario_set) == ("cpu", "cpu")
    assert chosen[-1] == mx.cpu


@pytest.mark.parametrize("name, words", [("cuda", "pip install 'mlx[cuda13]'"), ("metal", "Apple silicon")])
def test_a_missing_backend_says_what_to_install(monkeypatch, name, words):
    monkeypatch.setattr(backend, "available", lambda: {"cpu": True, "cuda": False, "metal": False})
    with pytest.raises(backend.Unavailable, match=r"--backend " + name) as raised:
        backend.choose(name)
    assert words in str(raised.value) and "\n" not in str(raised.value)


def test_a_missing_backend_fails_the_hook_in_one_line(tmp_path):
    if backend.available()["cuda"]:
        pytest.skip("CUDA is available here")
    MLX_EXAMPLE_COPY = tmp_path / "attention.py"
    MLX_EXAMPLE_COPY.write_text(MLX_EXAMPLE.read_text())
    result, _ = run_hook(tmp_path, "--backend", "cuda")
    failed(result, "backend_unavailable", "pip install 'mlx[cuda13]'")
    assert "\n" not in result["reason"] and "traceback" not in result["artifacts"]
    assert (result["metrics"]["compile_errors"], result["metrics"]["gpu_faults"]) == (0, 0)


def test_the_stage_comes_from_gitevolve_unless_given(monkeypatch):
    monkeypatch.setenv("GITEVOLVE_STAGE", "correctness")
    assert cli.parse([]).stage == "correctness"
    assert cli.parse(["--stage", "full"]).stage == "full"
    monkeypatch.setenv("GITEVOLVE_STAGE", "quick-check")  # a stage of the user's naming: ours is full
    assert cli.parse([]).stage == "full"
    assert cli.parse([]).scenarios is None and cli.parse([]).backend == "auto"
    with pytest.raises(SystemExit):
        cli.parse(["--timeout", "0"])


# --- the kernel ran: launches counted, outputs poisoned ---------------------------------------------


@pytest.mark.parametrize("factory, kind", [("cuda_kernel", "cuda-kernel"), ("metal_kernel", "metal-kernel"),
                                           ("precompiled_cuda_kernel", "cuda-kernel")])
def test_an_honest_kernel_passes_with_every_call_launching(tmp_path, fakes, factory, kind):
    result = evaluate(candidate(tmp_path, HONEST, factory), select("decode-256-b2"), QUICK)
    assert result["status"] == "ok", result
    m = result["metrics"]
    assert m["kind"] == kind and m["kernels"] in ("gqa_fake", "gqa_fake_metal", "gqa_ptx")
    # Correctness, the clean and poisoned kernel checks, warm-up, timed rounds, their kernel check,
    # memory: one launch each.
    assert m["kernel_launches"] == m["candidate_calls"] >= 2 + 3 + 1 + 3 + 2 + 1
    assert mx.fast.cuda_kernel is fake_factory and mx.fast.precompiled_cuda_kernel is fake_precompiled
    assert mx.compile is fakes


def test_mlx_ops_candidates_report_no_kernel():
    result = evaluate(MLX_EXAMPLE, select("decode-256-b2"), CHECK_ONLY)
    assert result["status"] == "ok", result
    assert (result["metrics"]["kind"], result["metrics"]["kernel_launches"]) == ("mlx-ops", 0)


def test_a_kernel_built_but_never_launched_fails(tmp_path, fakes):
    path = candidate(tmp_path, f"    return _mlx({ARGS})\n", prelude="")
    path.write_text(path.read_text() + "\n_kernel()\n")  # built at import
    failed(evaluate(path, PREFILL_THEN_DECODE, CHECK_ONLY), "kernel_not_launched",
           "built a kernel (gqa_fake) but did not launch it", "prefill-37 (correctness)")
    assert mx.fast.cuda_kernel is fake_factory and mx.compile is fakes  # restored after a failure too


def test_a_kernel_used_for_decode_only_fails_once_it_exists(tmp_path, fakes):
    # Built lazily by the first decode call, after the prefill calls computed without it.
    body = f"    if queries.shape[2] == 1:\n        return _launch({ARGS})\n    return _mlx({ARGS})\n"
    failed(evaluate(candidate(tmp_path, body), PREFILL_THEN_DECODE, CHECK_ONLY), "kernel_not_launched",
           "did not launch it in 2 of", "first in prefill-37 (correctness)")


@pytest.mark.parametrize("body", [
    f"    _launch({ARGS})\n    return _mlx({ARGS})\n",  # a decoy launch beside the real work
    f"    return _mlx({ARGS}) + 0 * _launch({ARGS})\n",  # survives NaN (0 * NaN is NaN), not zeros
], ids=["ignored", "times-zero"])
def test_a_decoy_launch_fails_the_perturbation_check(tmp_path, fakes, body):
    reason = failed(evaluate(candidate(tmp_path, body), PREFILL_THEN_DECODE, CHECK_ONLY), "kernel_bypassed",
                    "prefill-37 (kernel check)", "does not come from it")
    assert ("replaced by nan" in reason) == body.startswith("    _launch")


# A candidate that recognises the timing loop (the same keys over many rounds) and changes course
# there; the kernel checks call it three times on the same inputs, which it does not mistake.
RECOGNISES_TIMING = "_seen = {}\n"
TIMED = ("    _seen.setdefault(id(keys), [keys, 0])[1] += 1\n"
         f"    if _seen[id(keys)][1] <= 3:\n        return _launch({ARGS})\n")
LONGER = Setup(timer=Local(Budget(warmup=1, min_rounds=12, max_rounds=12, seconds=0.0, clean_blocks=2)))


@pytest.mark.parametrize("timed_body, kind, words", [
    (f"    return _mlx({ARGS})\n", "kernel_not_launched", "decode-256-b2 (timing)"),
    (f"    _launch({ARGS})\n    return _mlx({ARGS})\n", "kernel_bypassed", "decode-256-b2 (timed kernel check)"),
], ids=["silent", "decoy"])
def test_a_kernel_dropped_while_timed_is_caught(tmp_path, fakes, timed_body, kind, words):
    path = candidate(tmp_path, TIMED + timed_body, prelude=RECOGNISES_TIMING)
    assert evaluate(path, select("decode-256-b2"), CHECK_ONLY)["status"] == "ok"  # correctness alone passes
    failed(evaluate(path, select("decode-256-b2"), LONGER), kind, words)


def test_a_compiled_candidate_is_credited_with_its_traced_launches(tmp_path, fakes):
    path = candidate(tmp_path, f"    return _compiled({ARGS})\n")
    path.write_text(path.read_text() + "\n\n_compiled = mx.compile(_launch)\n")
    result = evaluate(path, PREFILL_THEN_DECODE, QUICK)
    assert result["status"] == "ok", result
    assert result["metrics"]["kernel_launches"] >= result["metrics"]["candidate_calls"] > 0
    # Compiled, the decoy replays without the Python wrappers; poisoned calls run it traced.
    decoy = candidate(tmp_path, f"    return _compiled({ARGS})\n")
    decoy.write_text(decoy.read_text() + "\n\ndef _both(queries, keys, values, scale, causal):\n"
                     f"    _launch({ARGS})\n    return _mlx({ARGS})\n\n\n_compiled = mx.compile(_both)\n")
    failed(evaluate(decoy, PREFILL_THEN_DECODE, CHECK_ONLY), "kernel_bypassed")


def test_poisoned_launches_return_filled_outputs(fakes):
    with launches.watch() as ledger:
        kernel = mx.fast.cuda_kernel(name="k", input_names=["q", "k", "v", "s"], output_names=["o"], source="")
        q = mx.ones((1, 2, 3, 4))
        args = dict(inputs=[q, q, q, mx.array(1.0)], template=[("CAUSAL", True)], grid=(1, 1, 1),
                    threadgroup=(1, 1, 1), output_shapes=[q.shape], output_dtypes=[mx.float16])
        clean = kernel(**args)[0]
        with ledger.poisoned(math.nan):
            poisoned = kernel(**args)[0]
        again = kernel(**args)[0]
    assert poisoned.dtype == mx.float16 and poisoned.shape == q.shape and mx.isnan(poisoned).all().item()
    assert mx.array_equal(clean, again).item() and launches.changed(poisoned, clean)
    assert not launches.changed(again, clean)
    assert (ledger.launches, ledger.kernels[0].launches, ledger.kind) == (3, 3, "cuda-kernel")
    # Integer outputs cannot be NaN: all bits set instead.
    assert launches._filled(mx.zeros((2,), dtype=mx.uint32), math.nan).tolist() == [2**32 - 1] * 2


# --- times faster than memory ---------------------------------------------------------------------


def test_bandwidth_is_measured():
    bw = bandwidth.measure(nbytes=4 * 2**20, reps=3)
    assert 0 < bw.read <= bw.best and 0 < bw.copy <= bw.best
    assert set(bw.metrics()) == {"bandwidth_copy_gbps", "bandwidth_read_gbps", "bandwidth_best_gbps"}


def test_only_caches_too_big_for_on_chip_memory_are_judged():
    judged = {s.name for s in GPU if bandwidth.judged(s)}
    assert {"decode-32768", "decode-32767-b2"} <= judged
    assert all(GPU_S.kind == "decode" and GPU_S.kv_bytes > 96 * 2**20 for GPU_S in GPU if GPU_S.name in judged)
    assert not any(bandwidth.judged(s) for s in CPU)
    s = Scenario("decode-32768", "decode", 1, 1, 32768, "float16", "qwen3-14b")
    assert s.kv_bytes == 2 * 8 * 32768 * 128 * 2
    tb = bandwidth.Bandwidth(copy=0.9e12, read=0.8e12, best=1e12)
    fast = s.kv_bytes / 2e12  # 2 TB/s implied
    assert "faster than the device can read its K/V cache: 134 MB in 67.1 us is 2.00 TB/s implied vs 1.00 TB/s" \
        in bandwidth.impossible(s, fast, tb)
    assert bandwidth.impossible(s, s.kv_bytes / 1.09e12, tb) is None  # within the 10% margin
    assert bandwidth.roofline_fraction(s, s.kv_bytes / 0.5e12, tb) == pytest.approx(0.5)


def test_an_impossible_time_fails_the_candidate(monkeypatch):
    # Judge the CPU's small decode, against a device said to read one byte per microsecond.
    monkeypatch.setattr(bandwidth, "CACHE_SAFE_BYTES", 0)
    monkeypatch.setattr(bandwidth, "measure", lambda: bandwidth.Bandwidth(copy=1e6, read=1e6, best=1e6))
    failed(evaluate(MLX_EXAMPLE, select("decode-256-b2"), QUICK), "impossible_speed",
           "decode-256-b2: faster than the device can read its K/V cache", "TB/s implied vs 0.00 TB/s measured")
    monkeypatch.setattr(bandwidth, "measure", lambda: bandwidth.Bandwidth(copy=1e14, read=1e14, best=1e14))
    result = evaluate(MLX_EXAMPLE, select("decode-256-b2,prefill-37"), QUICK)
    assert result["status"] == "ok", result
    assert 0 < result["metrics"]["roofline_fraction.decode-256-b2"] < 0.1
    assert "roofline_fraction.prefill-37" not in result["metrics"]


def test_a_device_error_in_the_harness_own_work_is_classified(monkeypatch):
    import evaluators.gqa.evaluate as evaluate_module

    def busy():
        raise RuntimeError("cudaMalloc(&ptr, size) failed: CUDA-capable device(s) is/are busy or unavailable")

    monkeypatch.setattr(bandwidth, "measure", busy)
    result = evaluate(MLX_EXAMPLE, select("decode-256-b2"), QUICK)
    assert (result["status"], result["metrics"]["failure_kind"]) == ("transient", "device_unavailable"), result

    def faulted(*args):  # a candidate's illegal access, reported at the harness's next synchronisation
        raise RuntimeError("cudaStreamSynchronize(stream) failed: an illegal memory access was encountered")

    monkeypatch.setattr(bandwidth, "measure", lambda: bandwidth.Bandwidth(copy=1e14, read=1e14, best=1e14))
    monkeypatch.setattr(evaluate_module, "verify", faulted)  # the reference after the timed calls
    failed(evaluate(MLX_EXAMPLE, select("decode-256-b2"), QUICK), "gpu_fault", "GPU fault: cudaStreamSynchronize")
    monkeypatch.setattr(evaluate_module, "verify", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # the harness's own bugs stay bugs
        evaluate(MLX_EXAMPLE, select("decode-256-b2"), QUICK)


# --- the numbers, summed up as the published run did ---------------------------------------------


def test_gain_bands_count_each_scenario_once():
    speedups = [1.3, 1.25, 1.1, 1.05, 1.0, 0.96, 0.95, 0.9, 0.5]
    assert summary.bands(speedups) == {"gained_over_25pct": 1, "gained_5_to_25pct": 2, "within_5pct": 4,
                                       "regressed_over_5pct": 2}


def test_summary_of_speedups_throughput_and_memory():
    scenarios = [Scenario("p", "prefill", 2, 10, 10, "float16", "tiny"), Scenario("d1", "decode", 1, 1, 50, "float16", "tiny"),
                 Scenario("d2", "decode", 4, 1, 50, "float16", "tiny")]
    base = {"p": 4.0, "d1": 1.0, "d2": 1.0}
    mine = {"p": 2.0, "d1": 0.5, "d2": 2.0}  # speedups 2, 2, 0.5
    m = summary.summarise(scenarios, mine, base, {"p": 300, "d1": 100, "d2": 0}, {"p": 200, "d1": 50, "d2": 0})
    assert m["geomean_speedup"] == pytest.approx(1.2599, abs=1e-4)
    assert (m["decode_speedup_mean"], m["decode_speedup_sd"], m["decode_speedup"]) == (1.25, 0.75, 1.0)
    assert (m["prefill_speedup_mean"], m["prefill_speedup_sd"]) == (2.0, 0.0)
    # 20 + 1 + 4 tokens over 4.5 s against 6 s.
    assert m["throughput_tokens_per_s.candidate"] == pytest.approx(25 / 4.5, abs=0.1)
    assert m["throughput_gain"] == pytest.approx(6 / 4.5, abs=1e-4)
    assert m["memory_change_pct"] == 50.0 and m["gained_over_25pct"] == 2 and m["regressed_over_5pct"] == 1


def test_the_hook_reports_the_published_figures(tmp_path):
    (tmp_path / "attention.py").write_text(MLX_EXAMPLE.read_text())
    result, _ = run_hook(tmp_path, "--seconds", "0.05", "--scenarios", "decode-256-b2,prefill-37")
    assert result["status"] == "ok", result
    m = result["metrics"]
    for key in ("decode_speedup_mean", "decode_speedup_sd", "prefill_speedup_mean", "throughput_gain",
                "throughput_tokens_per_s.candidate", "peak_memory_mb.candidate", "peak_memory_mb.baseline",
                "max_abs_error", "gained_over_25pct", "within_5pct", "bandwidth_best_gbps"):
        assert key in m, key
    assert (m["backend"], m["all_correct"], m["failure_kind"], m["kind"]) == ("cpu", True, "none", "mlx-ops")
    assert sum(m[k] for k in ("gained_over_25pct", "gained_5_to_25pct", "within_5pct", "regressed_over_5pct")) == 2
    assert m["peak_memory_mb.candidate"] > 0
    steps = dict(part.rsplit(" ", 1) for part in m["step_seconds"].split(", "))  # where the time went
    assert list(steps) == ["baseline", "import", "correctness.decode-256-b2", "correctness.prefill-37",
                           "timing.decode-256-b2", "timing.prefill-37"]
    assert all(float(v) >= 0 for v in steps.values())


# --- the supervisor, with real child processes ----------------------------------------------------


def run_hook(cwd: Path, *args: str, env: dict | None = None, timeout: float = 60) -> tuple[dict, subprocess.CompletedProcess]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "GITEVOLVE_"))}
    done = subprocess.run([sys.executable, str(HOOK), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    last = [line for line in done.stdout.splitlines() if line.strip()][-1]
    return json.loads(last), done


def misbehaving(tmp_path: Path, body: str) -> None:
    """The gqa-mlx example with `body` run at the start of every gqa_attention call."""
    text = MLX_EXAMPLE.read_text()
    head = "def gqa_attention(queries, keys, values, scale, causal):\n"
    assert head in text
    (tmp_path / "attention.py").write_text(
        "import ctypes, os, sys, time\n" + text.replace(head, head + "".join(f"    {line}\n" for line in body.splitlines())))


FIRST = ("--stage", "correctness", "--scenarios", "prefill-37")

NVRTC = ('Failed to compile kernel: custom_kernel_gqa_vector_float16_128_5.cu(57): error: identifier "inf" is undefined\n'
         '    float m = -inf;\n               ^\n\n'
         'custom_kernel_gqa_vector_float16_128_5.cu(63): error: identifier "uint" is undefined\n'
         '    uint lane = threadIdx.x % 32;\n    ^\n\n'
         '2 errors detected in the compilation of "custom_kernel_gqa_vector_float16_128_5.cu".\n.')


def test_a_crash_is_reported_with_where_it_happened(tmp_path):
    misbehaving(tmp_path, "os.abort()")
    result, _ = run_hook(tmp_path, *FIRST)
    failed(result, "crash", "was killed by SIGABRT", "during prefill-37 (correctness)")
    m = result["metrics"]
    assert (m["compile_errors"], m["gpu_faults"], m["backend"], m["failed_step"]) == (0, 0, "cpu", "prefill-37 (correctness)")


def test_a_gpu_fault_is_told_from_a_crash_by_its_stderr(tmp_path):
    misbehaving(tmp_path, "os.write(2, b'CUDA error: an illegal memory access was encountered\\n')\nos.abort()")
    result, _ = run_hook(tmp_path, *FIRST)
    failed(result, "gpu_fault", "GPU fault: CUDA error: an illegal memory access was encountered")
    assert (result["metrics"]["gpu_faults"], result["metrics"]["compile_errors"]) == (1, 0)
    assert "illegal memory access" in result["artifacts"]["stderr"]


def test_garbage_on_stdout_then_a_segfault_still_ends_with_our_result(tmp_path):
    misbehaving(tmp_path, "print('{\"status\": \"ok\", \"score\": 99}')\nsys.stdout.flush()\n"
                          "os.write(1, b'garbage without a newline')\nctypes.string_at(0)")
    result, done = run_hook(tmp_path, *FIRST)
    failed(result, "crash", "was killed by SIGSEGV", "during prefill-37 (correctness)")
    assert json.loads(done.stdout.strip().splitlines()[-1]) == result
    assert "garbage without a newline" in result["artifacts"]["stdout"]
    assert "Segmentation fault" in result["artifacts"]["stderr"]  # faulthandler's traceback of the candidate
    assert "attention.py" in result["artifacts"]["stderr"]


def test_a_compile_error_keeps_the_whole_compiler_message(tmp_path):
    misbehaving(tmp_path, f"raise RuntimeError({NVRTC!r})")
    result, _ = run_hook(tmp_path, *FIRST)
    failed(result, "compile_error", "a kernel did not compile",
           'custom_kernel_gqa_vector_float16_128_5.cu(57): error: identifier "inf" is undefined')
    assert result["artifacts"]["compile_error"] == NVRTC.strip()  # both errors, with their line numbers
    assert (result["metrics"]["compile_errors"], result["metrics"]["gpu_faults"]) == (1, 0)


def test_out_of_memory_is_transient(tmp_path):
    misbehaving(tmp_path, "raise RuntimeError('cudaMallocAsync(&data, size, stream) failed: out of memory')")
    result, _ = run_hook(tmp_path, *FIRST)  # exit status 0, status transient: docs/hooks.md
    assert result["status"] == "transient", result
    assert result["metrics"]["failure_kind"] == "out_of_memory" and "out of memory" in result["artifacts"]["reason"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie left to an init that does not reap is dead all the same


def _pids(tmp_path: Path, count: int, wait: float = 20) -> list[int]:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        path = tmp_path / "pids"
        if path.exists() and len(path.read_text().split()) >= count:
            return [int(p) for p in path.read_text().split()]
        time.sleep(0.05)
    raise AssertionError("the candidate never wrote its pids")


# Hangs the way a kernel whose warp-shuffle loop is not warp-uniform does, with a grandchild
# process of its own that the process-group kill must reach as well.
HANG = ("import subprocess\nhelper = subprocess.Popen(['sleep', '300'])\n"
        "open('pids', 'w').write(f'{os.getpid()} {helper.pid}')\ntime.sleep(300)")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_hang_is_killed_at_the_inner_timeout_with_its_process_group(tmp_path):
    misbehaving(tmp_path, HANG)
    started = time.monotonic()
    result, _ = run_hook(tmp_path, *FIRST, "--timeout", "4")
    assert time.monotonic() - started < 15
    failed(result, "hang", "did not finish in 4 s during prefill-37 (correctness)")
    assert result["metrics"]["step_seconds"].startswith("import "), "the steps finished before the kill are timed"
    assert not any(_alive(pid) for pid in _pids(tmp_path, 2))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_killing_the_hook_takes_the_evaluation_down(tmp_path):
    # gitevolve stops a hook by signalling the hook's process group, which the child has left.
    misbehaving(tmp_path, HANG)
    hook = subprocess.Popen([sys.executable, str(HOOK), *FIRST], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        pids = _pids(tmp_path, 2)
        hook.send_signal(signal.SIGTERM)
        assert hook.wait(timeout=10) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in pids)
    finally:
        hook.kill()


@pytest.mark.parametrize("stderr, kind, status", [
    ("Fatal Python error: Aborted\n" + NVRTC, "compile_error", "failed"),
    ("[metal::Device] Unable to build metal library from source\nprogram_source:12:5: error: use of undeclared "
     "identifier 'x'", "compile_error", "failed"),
    ("libc++abi: terminating due to uncaught exception of type std::runtime_error: [METAL] Command buffer "
     "execution failed: Caused GPU Address Fault Error (0000000b:kIOGPUCommandBufferCallbackErrorPageFault).",
     "gpu_fault", "failed"),
    ("[METAL] Command buffer execution failed: Internal Error (0000000e:Internal Error).", "gpu_fault", "failed"),
    ("cudaStreamSynchronize(stream) failed: misaligned address", "gpu_fault", "failed"),
    ("terminate called: CUDA-capable device(s) is/are busy or unavailable", "device_unavailable", "transient"),
    ("Fatal Python error: Segmentation fault", "crash", "failed"),
])
def test_a_dead_child_is_classified_by_its_stderr(stderr, kind, status):
    child = supervise.Child(returncode=-6, timed_out=False, seconds=1.0, stdout="", stderr=stderr,
                            step="decode-1000 (timing)", metrics={"backend": "cuda"})
    result = supervise.classify(child, timeout=50)
    assert (result["status"], result["metrics"]["failure_kind"]) == (status, kind), result
    assert "was killed by SIGABRT during decode-1000 (timing)" in result["reason"]
    assert result["metrics"]["backend"] == "cuda" and "\n" not in result["reason"]
    if kind == "compile_error":
        assert result["artifacts"]["compile_error"] == stderr
        assert "error:" in result["reason"]


def test_the_timing_processes_share_one_core_on_the_cpu_backend_only():
    from evaluators.gqa.referee import timing_cpus

    cpus = timing_cpus("cpu")
    assert len(cpus) == 1 and cpus <= os.sched_getaffinity(0)
    assert timing_cpus("cuda") is None and timing_cpus("auto") is None


def test_a_warning_shown_from_a_harness_module_is_not_tampering():
    """Python writes __warningregistry__ into a module's namespace when a warning is shown from it:
    a fresh clone's suite failed an honest kernel as harness_tampered for it."""
    import warnings

    from evaluators.gqa import integrity

    snapshot = integrity.capture()
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.warn_explicit("a warning", UserWarning, "integrity.py", 1, module="evaluators.gqa.integrity",
                               registry=integrity.__dict__.setdefault("__warningregistry__", {}))
    assert "__warningregistry__" in vars(integrity)
    assert snapshot.changed() == []
    snapshot.objects["evaluators.gqa.integrity.capture"] = object()  # a real change is still seen
    assert snapshot.changed() == ["evaluators.gqa.integrity.capture"]


def test_the_timing_budget_is_the_backends_unless_the_flags_say_otherwise(capsys):
    from evaluators.gqa import race

    assert race.budget("cpu") == Budget(seconds=0.8, min_rounds=8)
    assert race.budget("cuda") == race.budget("metal") == Budget(seconds=0.2, min_rounds=4)
    assert race.budget("cuda", 0.5, 6) == Budget(seconds=0.5, min_rounds=6)
    assert cli.parse(["--rounds", "6"]).rounds == 6
    for bad in ("1", "four"):
        with pytest.raises(SystemExit):
            cli.parse(["--rounds", bad])
        assert "--rounds: must be a whole number of rounds, 2 or more" in capsys.readouterr().err
