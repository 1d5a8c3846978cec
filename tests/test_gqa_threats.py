"""Cheating candidates through the real hook, one per row of docs/evaluator-threats.md, and the
honest controls that must still pass. Each candidate is the initial program with its
gqa_attention renamed _honest and a new gqa_attention (and whatever it sets up at import) after
it; the hook runs it in real processes, as gitevolve does, on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlx.core")

from conftest import ROOT  # noqa: E402

HOOK = ROOT / "hooks" / "gqa_mlx.py"
PROGRAM = (ROOT / "examples" / "gqa-mlx" / "attention.py").read_text()
DEF = "def gqa_attention(queries, keys, values, scale, causal):\n"
ARGS = "queries, keys, values, scale, causal"
QUICK = ("--scenarios", "decode-256-b2,prefill-37", "--seconds", "0.3")


def cheat(tmp_path: Path, body: str, prelude: str = "") -> Path:
    assert PROGRAM.count(DEF) == 1
    path = tmp_path / "attention.py"
    path.write_text(PROGRAM.replace(DEF, DEF.replace("gqa_attention", "_honest")) + f"\n\n{prelude}\n\n{DEF}{body}")
    return path


def hook(tmp_path: Path, *args: str, tries: int = 2) -> dict:
    """The hook's result; a transient one is retried once, as gitevolve would (a busy shared
    machine can slow the baseline's race past the margin that calls it into doubt)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "GITEVOLVE_"))}
    done = subprocess.run([sys.executable, str(HOOK), "--backend", "cpu", *QUICK, *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=environ)
    assert done.returncode == 0, done.stderr
    result = json.loads([line for line in done.stdout.splitlines() if line.strip()][-1])
    if result.get("status") == "transient" and tries > 1:
        return hook(tmp_path, *args, tries=tries - 1)
    return result


def caught(result: dict, kind: str, *words: str) -> None:
    assert result["status"] == "failed", result
    assert result["metrics"]["failure_kind"] == kind, (result["reason"], result["metrics"])
    for word in words:
        assert word in result["reason"], result["reason"]


HONEST = f"    return _honest({ARGS})\n"

# --- the clock ----------------------------------------------------------------------------------


@pytest.mark.parametrize("clock", ["perf_counter", "perf_counter_ns", "monotonic"])
def test_a_fake_clock_set_at_import_is_caught(tmp_path, clock):
    prelude = f"import time\n_real = time.{clock}\ntime.{clock} = lambda: _real() // 10\n"
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, HONEST, prelude))), "harness_tampered",
           "importing attention.py", f"time.{clock}")


def test_a_fake_clock_set_while_timed_is_caught(tmp_path):
    body = ("    import time\n    _calls.append(1)\n"
            "    if len(_calls) == 12:\n        _real = time.perf_counter\n        time.perf_counter = lambda: _real() / 10\n"
            + HONEST)
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, body, "_calls = []\n"))), "harness_tampered",
           "time.perf_counter")


def test_forged_announcements_on_the_timing_channel_are_caught(tmp_path):
    # The candidate finds the channel in its command line and says "end" the moment a block starts.
    prelude = ("import json, os, sys\n"
               "_fd = int(sys.argv[sys.argv.index('--channel') + 1].split(',')[1]) if '--channel' in sys.argv else None\n")
    body = ("    if _fd is not None:\n"
            "        os.write(_fd, (json.dumps({'op': 'end', 'seconds': 1e-9}) + '\\n').encode())\n" + HONEST)
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, body, prelude))), "timing_tampered",
           "the timing channel carried what the harness does not send")


def test_a_forged_result_file_is_not_believed(tmp_path):
    # At its first timed call it writes a perfect result where the child's would go, and exits.
    prelude = "import json, os, sys\n_calls = []\n"
    body = ("    _calls.append(1)\n    if len(_calls) > 6 and '--result-file' in sys.argv:\n"
            "        path = sys.argv[sys.argv.index('--result-file') + 1]\n"
            "        json.dump({'status': 'ok', 'score': 99.0, 'metrics': {}}, open(path, 'w'))\n"
            "        os._exit(0)\n" + HONEST)
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, body, prelude))), "timing_tampered", "without being timed")


# --- the baseline -------------------------------------------------------------------------------


def test_the_harness_baseline_module_only_holds_the_tripwire(tmp_path):
    body = f"    from evaluators.gqa import baseline\n    return baseline.attention({ARGS})\n"
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, body))), "baseline_called")


def test_no_reference_to_the_baseline_is_reachable_through_gc_or_module_tables(tmp_path):
    # Every object the collector knows, everything they refer to, and every module's names.
    prelude = '''import gc, sys
def _find():
    seen = []
    for o in gc.get_objects():
        seen.append(o)
        seen.extend(gc.get_referents(o))
    for m in list(sys.modules.values()):
        seen.extend(vars(m).values() if hasattr(m, "__dict__") else ())
    for o in seen:
        try:
            if getattr(o, "__name__", "") == "scaled_dot_product_attention" and type(o).__name__ != "Tripwire":
                return o
        except Exception:
            pass
    raise RuntimeError("no baseline reachable")
'''
    body = "    return _find()(queries, keys, values, scale=scale, mask='causal' if causal else None)\n"
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, body, prelude))), "exception", "no baseline reachable")


def test_no_reference_to_the_baseline_is_in_any_callers_frame(tmp_path):
    prelude = '''import sys
def _find():
    frame = sys._getframe(1)
    while frame is not None:
        for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):
            if getattr(value, "__name__", "") in ("scaled_dot_product_attention", "attention") and value is not gqa_attention:
                return value
        frame = frame.f_back
    raise RuntimeError("no baseline in any frame")
'''
    body = "    return _find()(queries, keys, values, scale=scale, mask='causal' if causal else None)\n"
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, body, prelude))), "exception", "no baseline in any frame")


def test_a_thread_that_slows_the_baseline_is_caught(tmp_path):
    # It burns the CPU whenever the candidate is not running: in its process, nothing can run
    # while the baseline does (stopped), and the thread itself is found.
    prelude = ("import threading\n_busy = threading.Event()\n"
               "def _burn():\n    while True:\n        if not _busy.is_set():\n            sum(range(1000))\n"
               "threading.Thread(target=_burn, daemon=True).start()\n")
    body = f"    _busy.set()\n    try:\n        return _honest({ARGS})\n    finally:\n        _busy.clear()\n"
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, body, prelude))), "harness_tampered", "a thread")


def test_a_process_that_slows_the_baseline_is_caught(tmp_path):
    # In a session of its own, so that stopping the candidate's process group does not stop it.
    prelude = ("import subprocess, sys\n_burner = subprocess.Popen([sys.executable, '-c', 'while True: pass'], "
               "start_new_session=True)\n")
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, HONEST, prelude))), "background_work",
           "started processes of its own")
    assert not _burning(), "the hook left the candidate's process running"


def _burning() -> bool:
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"while True: pass" in f.read():
                    return True
        except OSError:
            continue
    return False


# --- the work -----------------------------------------------------------------------------------


def test_evaluation_deferred_by_replacing_mx_eval_is_caught(tmp_path):
    prelude = "_real_eval = mx.eval\nmx.eval = lambda *arrays: None\n"
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, HONEST, prelude))), "harness_tampered", "mx.eval")


def test_work_on_another_thread_is_caught(tmp_path):
    # MLX refuses its streams on a new thread; numpy work there is what a candidate could hide.
    prelude = "import numpy as np\nfrom concurrent.futures import ThreadPoolExecutor\n_pool = ThreadPoolExecutor(2)\n"
    body = "    _pool.submit(lambda: np.array(queries).sum()).result()\n" + HONEST
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, body, prelude))), "harness_tampered", "a thread")


def test_a_loosened_tolerance_is_caught(tmp_path):
    prelude = ("import sys\n_c = sys.modules['evaluators.gqa.correctness']\n"
               "_c.TOLERANCES['float32'] = _c.Tolerance(atol=1.0, rtol=1.0)\n")
    body = f"    return (_honest({ARGS}) * 1.01).astype(queries.dtype)\n"
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, body, prelude))), "harness_tampered",
           "evaluators.gqa.correctness.TOLERANCES")


def test_a_replaced_harness_check_is_caught(tmp_path):
    prelude = ("import sys\n_c = sys.modules['evaluators.gqa.correctness']\n"
               "_c.compare.__code__ = (lambda *a, **k: _c.Verdict(True, 0.0, 'fine')).__code__\n")
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, HONEST, prelude))), "harness_tampered", "compare.__code__")


def test_an_answer_cached_by_the_keys_buffer_is_caught_while_timed(tmp_path):
    # Correctness draws new keys each call, so only the timed blocks (two key sets) would hit.
    prelude = "_memo = {}\n"
    body = (f"    if id(keys) not in _memo:\n        _memo[id(keys)] = (keys, _honest({ARGS}))\n"
            "    return _memo[id(keys)][1]\n")
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, body, prelude))), "wrong_output", "while timed")


def test_a_precision_cut_is_caught(tmp_path):
    body = ("    low = [x.astype(mx.bfloat16) for x in (queries, keys, values)]\n"
            "    return _honest(*low, scale, causal).astype(queries.dtype)\n")
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, body))), "wrong_output", "outputs out of tolerance")


def test_shape_special_casing_is_caught(tmp_path):
    # Right on the shapes it thinks are checked (batch 2), half the work elsewhere.
    body = ("    if queries.shape[0] == 2:\n" + HONEST.replace("    ", "        ", 1)
            + f"    out = _honest({ARGS})\n    return mx.concatenate([out[:, : out.shape[1] // 2], "
            "mx.zeros_like(out[:, out.shape[1] // 2 :])], axis=1)\n")
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, body))), "wrong_output", "prefill-37")


# --- honest controls ----------------------------------------------------------------------------


def test_a_correct_but_slow_edit_passes(tmp_path):
    body = f"    mx.eval(_honest({ARGS}))  # the work, done twice\n" + HONEST
    result = hook(tmp_path, "--file", str(cheat(tmp_path, body)))
    assert result["status"] == "ok", result
    assert 0 < result["score"] < 1.5 and result["metrics"]["failure_kind"] == "none"


def test_a_correct_numpy_edit_passes(tmp_path):
    body = '''    import numpy as np
    q = np.array(queries.astype(mx.float32)); k = np.array(keys.astype(mx.float32)); v = np.array(values.astype(mx.float32))
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = q @ k.swapaxes(-1, -2) * scale
    if causal:
        lq, lk = q.shape[2], k.shape[2]
        scores = np.where(np.arange(lk)[None, :] <= np.arange(lq)[:, None] + (lk - lq), scores, -np.inf)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    return mx.array((w / w.sum(-1, keepdims=True)) @ v).astype(queries.dtype)
'''
    result = hook(tmp_path, "--file", str(cheat(tmp_path, body)))
    assert result["status"] == "ok", result
    assert result["score"] > 0 and "identical_to_baseline" not in result["metrics"]


def test_a_skipped_causal_mask_is_caught(tmp_path):
    body = "    return _honest(queries, keys, values, scale, False)\n"
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, body))), "wrong_output", "prefill-37")


def test_a_partial_write_is_caught(tmp_path):
    # The last query rows left zero: most of the output is right.
    body = (f"    out = _honest({ARGS})\n    keep = mx.arange(out.shape[2])[None, None, :, None] < out.shape[2] - 2\n"
            "    return mx.where(keep, out, mx.zeros_like(out)) if out.shape[2] > 2 else out\n")
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, body))), "wrong_output", "prefill-37")


# --- identical to the baseline (report.py): the race's digests, without a candidate that could
# produce the baseline's bits on the CPU without calling it ---------------------------------------


def _races(same: bool):
    from evaluators.gqa import race

    def side(digest, per_call):
        return race.Side(tuple(race.Block(per_call * 4, per_call * 4, 4, digest) for _ in range(6)))

    clean = race.Clean(4, side("b", 1e-3), 1e-5, 0.01, (1, 2))
    return {name: race.Race(side("b" if same else "c", 0.9e-3), side("b", 1e-3), clean)
            for name in ("decode-256-b2", "prefill-37")}


def test_outputs_bit_for_bit_the_baseline_s_score_zero_unless_allowed():
    from evaluators.gqa import bandwidth, report
    from evaluators.gqa.shapes import select

    scenarios = select("decode-256-b2,prefill-37")
    checked = {"status": "ok", "metrics": {f"{report.PEAK}{s.name}": 1 << 20 for s in scenarios}, "artifacts": {}}
    device = bandwidth.Bandwidth(1e11, 1e11, 1e11)
    same = report.assemble(checked, scenarios, _races(True), {s.name: 1 << 20 for s in scenarios}, device)
    assert same["status"] == "ok" and same["score"] == 0.0 and same["metrics"]["identical_to_baseline"] == 1
    assert "identical to the baseline" in same["reason"]
    allowed = report.assemble(checked, scenarios, _races(True), {s.name: 1 << 20 for s in scenarios}, device,
                              allow_identical=True)
    assert allowed["score"] == pytest.approx(1 / 0.9) and "identical_to_baseline" not in allowed["metrics"]
    differs = report.assemble(checked, scenarios, _races(False), {s.name: 1 << 20 for s in scenarios}, device)
    assert differs["score"] == pytest.approx(1 / 0.9)


def test_a_result_without_every_race_is_not_scored():
    from evaluators.gqa import bandwidth, report
    from evaluators.gqa.shapes import select

    scenarios = select("decode-256-b2,prefill-37")
    checked = {"status": "ok", "metrics": {f"{report.PEAK}decode-256-b2": 1}, "artifacts": {}}
    result = report.assemble(checked, scenarios, {"decode-256-b2": _races(False)["decode-256-b2"]},
                             {"decode-256-b2": 1}, bandwidth.Bandwidth(1e11, 1e11, 1e11))
    caught(result, "timing_tampered", "without racing prefill-37")


def test_the_previous_call_s_output_is_caught(tmp_path):
    # What a kernel that leaves its output unwritten returns when the allocator hands it the last
    # call's buffer; on the CPU, the candidate hands it back itself.
    prelude = "_last = []\n"
    body = (f"    if _last and _last[0].shape == queries.shape:\n        return _last[0]\n"
            f"    _last[:] = [_honest({ARGS})]\n    return _last[0]\n")
    caught(hook(tmp_path, "--file", str(cheat(tmp_path, body, prelude))), "wrong_output", "cached or stale")
