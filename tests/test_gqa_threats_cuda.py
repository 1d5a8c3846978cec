"""The rows of docs/evaluator-threats.md that only a GPU can try: cheating CUDA candidates through
the real hook on the CUDA backend, and an honest control beside them. Skipped without an NVIDIA
GPU and mlx[cuda13]; run through the `device` tool (see benchmarks/results/ for the record)."""

from __future__ import annotations

import pytest

mx = pytest.importorskip("mlx.core")

from test_gqa_threats import ARGS, HONEST, cheat, hook  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (hasattr(mx, "cuda") and mx.cuda.is_available()), reason="needs an NVIDIA GPU and mlx[cuda13]"),
]
GPU = ("--backend", "cuda", "--scenarios", "decode-1000,prefill-2048", "--seconds", "0.5")


def test_an_honest_candidate_passes_on_the_gpu(tmp_path):
    result = hook(tmp_path, "--file", str(cheat(tmp_path, HONEST)), *GPU)
    assert result["status"] == "ok", result
    assert result["metrics"]["backend"] == "cuda"


def test_a_kernel_that_leaves_its_output_unwritten_is_caught(tmp_path):
    # It launches (so launches.py sees a kernel run) and writes nothing: what the output holds is
    # whatever the allocator's memory held, a previous call's answer included.
    prelude = ('_nothing = mx.fast.cuda_kernel(name="nothing", input_names=["q"], output_names=["out"],\n'
               '                               source="if (threadIdx.x == 1u << 30) out[0] = q[0];")\n')
    body = ("    return _nothing(inputs=[queries], grid=(32, 1, 1), threadgroup=(32, 1, 1),\n"
            "                    output_shapes=[queries.shape], output_dtypes=[queries.dtype])[0]\n")
    result = hook(tmp_path, "--file", str(cheat(tmp_path, body, prelude)), *GPU)
    assert result["status"] == "failed", result
    assert result["metrics"]["failure_kind"] in ("wrong_output", "kernel_bypassed"), result["reason"]


def test_gpu_work_left_queued_on_another_stream_does_not_pay(tmp_path):
    # Each call leaves a matmul queued on a stream of its own (about 1 ms of work each: far more
    # than a decode call), which the harness does not synchronise. If that work outlived the
    # candidate's block and ran while the baseline was timed, the baseline would look slower and
    # the candidate faster. Either the race sees the baseline slowed, or the work lands in the
    # candidate's own blocks (as on MLX 0.32's CUDA backend) and costs it.
    quick = ("--scenarios", "decode-1000", "--seconds", "0.3")
    honest = hook(tmp_path, "--file", str(cheat(tmp_path, HONEST)), *GPU, *quick)
    assert honest["status"] == "ok", honest
    prelude = "_stream = mx.new_stream(mx.gpu)\n_a = mx.random.normal((8192, 8192))\nmx.eval(_a)\n"
    body = (f"    mx.async_eval(mx.matmul(_a, _a, stream=_stream).sum(stream=_stream))\n"
            f"    return _honest({ARGS})\n")
    result = hook(tmp_path, "--file", str(cheat(tmp_path, body, prelude)), *GPU, *quick)
    if result["status"] == "ok":
        assert result["score"] < honest["score"] * 1.25, (result["score"], honest["score"])
    else:
        assert result["metrics"]["failure_kind"] == "baseline_slowed", result["reason"]
