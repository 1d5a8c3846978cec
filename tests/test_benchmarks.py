"""The benchmarks run (their figures are read by people, not asserted: timing is no unit test)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_store_scale_builds_and_rebuilds_the_population(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "store_scale.py"), "--n", "40", "--islands", "3", "--keep", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "population rebuilt from refs and notes: 41" in done.stdout  # 40 candidates and the base
    for row in ("bookkeeping per candidate", "`gitevolve status` command", "JSON checkpoint: load"):
        assert row in done.stdout
    pins = subprocess.run(["git", "for-each-ref", "refs/gitevolve/default/candidates/"], cwd=tmp_path / "repo",
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(pins) == 40


def decode(tmp_path, candidate: str):
    path = tmp_path / "attention.py"
    path.write_text(candidate)
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "qwen3_decode.py"), "--kernel", str(path), "--model", "tiny",
         "--dtype", "float32", "--prompt-tokens", "40", "--new-tokens", "6", "--repeats", "2", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=120,
    )


def test_qwen3_decode_runs_the_candidate_in_every_attention_call(tmp_path):
    done = decode(tmp_path, (ROOT / "examples" / "gqa-mlx" / "attention.py").read_text())
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["candidate_attention_calls_per_generation"] == 2 * 6  # 2 layers x (prefill + 5 decode steps)
    assert result["identical_tokens"] == 6 and result["prefill_logits_max_abs_error"] < 1e-4
    assert "candidate ran in all 12 attention calls" in done.stdout


def test_qwen3_decode_refuses_a_candidate_that_calls_the_baseline(tmp_path):
    done = decode(tmp_path, "import mlx.core as mx\n\ndef gqa_attention(q, k, v, scale, causal):\n"
                            "    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask='causal' if causal else None)\n")
    assert done.returncode != 0
    assert "the candidate called mx.fast.scaled_dot_product_attention" in done.stderr


def test_gpu_time_reads_a_calls_anatomy_from_a_profiler_trace():
    """gqa_gpu_time.py's reading of a Chrome trace, on one made by hand in the profiler's format:
    two calls of the candidate (the second with two kernels) and one of MLX's attention."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.gqa_gpu_time import anatomy
    finally:
        sys.path.pop(0)

    def span(cat, name, ts, dur):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}

    events = [
        span("user_annotation", "d|candidate|build", 0, 10), span("user_annotation", "d|candidate|eval", 10, 100),
        span("cuda_runtime", "cudaGraphLaunch", 30, 5), span("kernel", "gqa", 40, 30),
        span("user_annotation", "d|candidate|build", 200, 14), span("user_annotation", "d|candidate|eval", 214, 100),
        span("cuda_runtime", "cudaGraphLaunch", 238, 5), span("kernel", "gqa", 250, 20), span("kernel", "merge", 272, 8),
        span("user_annotation", "d|mlx|build", 400, 3), span("user_annotation", "d|mlx|eval", 403, 50),
        span("kernel", "cudnn", 420, 25), {"ph": "i", "cat": "kernel", "name": "instant", "ts": 430},
        span("user_annotation", "unrelated range", 0, 1000),
    ]
    got = anatomy(events)
    assert got["d|candidate"] == {"build": 12.0, "gpu": 30.0, "to kernel": 33.0, "after": 37.0, "to launch": 22.0,
                                  "calls": 2}
    # no graph launch recorded (MLX_USE_CUDA_GRAPHS=0): the other parts still read
    assert got["d|mlx"] == {"build": 3.0, "gpu": 25.0, "to kernel": 17.0, "after": 8.0, "calls": 1}


def _cuda_torch() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_torch(), reason="with PyTorch on CUDA the benchmark runs instead: the GPU record covers it")
def test_gpu_time_says_what_it_needs_without_a_cuda_torch():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gqa_gpu_time.py"), "--kernel",
                           str(ROOT / "examples" / "gqa-cuda" / "attention.py")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "needs PyTorch with CUDA" in done.stderr.strip().splitlines()[-1]


def test_gpu_time_variants_are_labelled_settings_and_bad_ones_say_how_to_write_them():
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.gqa_gpu_time import parse_variants
    finally:
        sys.path.pop(0)

    assert parse_variants(['wgmma:PREFILL="wgmma",WGMMA_GROUPS=2', "t128:THREADS=128"]) == {
        "wgmma": {"PREFILL": "wgmma", "WGMMA_GROUPS": 2}, "t128": {"THREADS": 128}}
    for bad in (["PREFILL=mma"], ["x:"], [":THREADS=1"], ["mlx:THREADS=1"], ["a:THREADS=1", "a:THREADS=2"]):
        with pytest.raises(SystemExit, match="--variant"):
            parse_variants(bad)


def test_search_synthetic_runs_the_product_and_reports_against_the_optimum(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "search_synthetic.py"), "--seeds", "1", "--evaluations", "12",
         "--operators", "search", "--islands", "2", "--workers", "1", "--keep", str(tmp_path / "runs"),
         "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "r.json").read_text())
    assert f"optimum {record['objective']['optimum']:.1f} at LAYOUT=" in done.stdout
    assert any(line.split()[:1] == ["search"] for line in done.stdout.splitlines())  # the operator's row
    assert record["runs"]["search"][0]["evaluations"] == 12  # judged on exactly the first N
