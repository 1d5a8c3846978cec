"""The gqa-mlx example and the GQA harness: the initial program passes, every tunable setting is
correct, and the ways a kernel can be wrong or cheat are caught, through the real hook too."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

mx = pytest.importorskip("mlx.core")

from evaluators.gqa import baseline, correctness, guards, race  # noqa: E402
from evaluators.gqa.local import Local  # noqa: E402
from evaluators.gqa.evaluate import Setup, evaluate  # noqa: E402
from evaluators.gqa.shapes import CPU, GPU, Scenario, select  # noqa: E402
from gitevolve.mutate.tunables import parse  # noqa: E402

from conftest import ROOT, git  # noqa: E402

EXAMPLE = ROOT / "examples" / "gqa-mlx"
PROGRAM = (EXAMPLE / "attention.py").read_text()
HOOK = ROOT / "hooks" / "gqa_mlx.py"
REAL_BASELINE = mx.fast.scaled_dot_product_attention  # before any test hides it
CHECK_ONLY = Setup(stage="correctness")

# Small heads, so that all 640 settings run in seconds; lengths that split into uneven chunks.
TINY = (
    Scenario("tiny-prefill-29-after-121", "prefill", 1, 29, 150, "float32", "tiny"),
    Scenario("tiny-prefill-37", "prefill", 2, 37, 37, "float16", "tiny"),
    Scenario("tiny-decode-300", "decode", 1, 1, 300, "bfloat16", "tiny"),
    Scenario("tiny-decode-130-b2", "decode", 2, 1, 130, "float32", "tiny"),
)


def variant(tmp_path: Path, *edits: tuple[str, str], name: str = "attention.py") -> Path:
    """The initial program with each (old, new) replacement made; each old must occur."""
    text = PROGRAM
    for old, new in edits:
        assert old in text, f"the example no longer contains {old!r}"
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def run_hook(cwd: Path, *args: str, env: dict | None = None) -> tuple[dict, subprocess.CompletedProcess]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "GITEVOLVE_"))}
    done = subprocess.run([sys.executable, str(HOOK), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    last = [line for line in done.stdout.splitlines() if line.strip()][-1]
    return json.loads(last), done


def failed(result: dict, *words: str, kind: str | None = None) -> str:
    assert result["status"] == "failed", result
    reason = result["reason"]
    assert result["artifacts"]["reason"] == reason
    if kind:
        assert result["metrics"]["failure_kind"] == kind, result["metrics"]
    for word in words:
        assert word in reason, reason
    return reason


# --- the example as shipped ------------------------------------------------------------------


def honest_run(cwd: Path, *args: str) -> dict:
    """The hook on an honest program, retried on a transient result as gitevolve retries one
    (evaluator.retries, 2 by default): on a loaded 2-core machine the raced baseline is sometimes
    slower than alone, which the hook reports as transient, not as cheating."""
    for _ in range(3):
        result, _ = run_hook(cwd, *args)
        if result["status"] != "transient":
            return result
    return result


def test_initial_program_passes_through_the_hook(tmp_path):
    path = variant(tmp_path)
    result = honest_run(tmp_path, "--file", "attention.py", "--seconds", "0.15")
    assert result["status"] == "ok", result
    m = result["metrics"]
    assert result["score"] == pytest.approx(m["geomean_speedup"], rel=1e-3) and result["score"] > 0
    assert m["frame_check"] == "skipped"
    for s in CPU:
        assert m[f"speedup.{s.name}"] > 0 and m[f"candidate_us.{s.name}"] > 0 and m[f"baseline_us.{s.name}"] > 0
    assert {"decode_speedup", "prefill_speedup", "max_abs_error"} <= set(m)
    assert "decode-1000" in result["artifacts"]["timings"]
    assert m["score_is"].startswith(f"the geometric mean over {len(CPU)} scenarios of the speedup over "
                                    "mx.fast.scaled_dot_product_attention")
    assert path.read_text() == PROGRAM


def test_tunables_are_declared_for_the_builtin_operator():
    tunables = {t.name: t for t in parse("attention.py", PROGRAM)}
    assert set(tunables) == {"COMPUTE_DTYPE", "GROUPING", "KV_CHUNK", "MASK", "SKIP_FULL_MASK",
                             "PRESCALE_QUERIES", "SOFTMAX"}
    # The plain choices first: evolution has something to find.
    assert tunables["GROUPING"].value == "repeat" and tunables["KV_CHUNK"].value == 0
    assert tunables["COMPUTE_DTYPE"].value == "float32" and tunables["SOFTMAX"].value == "manual"
    # A blank line between tunables keeps a cherry-picked change to one from conflicting with another.
    lines = PROGRAM.splitlines()
    for a, b in itertools.pairwise(sorted(t.line for t in tunables.values())):
        assert "" in [line.strip() for line in lines[a + 1 : b]], (lines[a], lines[b])


@pytest.mark.slow  # one of the suite's slowest (20-40 s): pytest -m 'not slow' leaves it out
def test_every_tunable_combination_is_correct():
    module = guards.load_candidate(EXAMPLE / "attention.py")
    tunables = parse("attention.py", PROGRAM)
    combinations = list(itertools.product(*(t.choices for t in tunables)))
    assert len(combinations) == 640
    for values in combinations:
        for t, v in zip(tunables, values):
            setattr(module, t.name, v)
        for s in TINY:
            verdict = correctness.check(s, module.gqa_attention, calls=1)
            assert verdict.ok, (dict(zip((t.name for t in tunables), values)), verdict.report)


def test_a_faster_setting_is_correct_on_the_cpu_scenarios(tmp_path):
    path = variant(tmp_path, ('GROUPING = "repeat"', 'GROUPING = "fold"'), ("KV_CHUNK = 0", "KV_CHUNK = 256"),
                   ('COMPUTE_DTYPE = "float32"', 'COMPUTE_DTYPE = "input"'), ('SOFTMAX = "manual"', 'SOFTMAX = "fused"'))
    result = evaluate(path, CPU, CHECK_ONLY)
    assert result["status"] == "ok", result
    assert result["score"] == 1.0 and result["metrics"]["stage"] == "correctness"


# --- wrong kernels ---------------------------------------------------------------------------

# query head h must read KV head h // G; tiling K/V instead gives h % Hkv.
WRONG_HEADS = (("mx.repeat(k, group, axis=1), mx.repeat(v, group, axis=1)",
                "mx.tile(k, (1, group, 1, 1)), mx.tile(v, (1, group, 1, 1))"),)
NO_MASK = (("        if causal:\n", "        if False:\n"),)
# The mask's offset taken as 0: the query length used where the key length belongs.
NO_OFFSET = (("position[:, None] + (key_len - query_len)", "position[:, None]"),)


def test_wrong_head_mapping_is_caught(tmp_path):
    result = evaluate(variant(tmp_path, *WRONG_HEADS), CPU, CHECK_ONLY)
    reason = failed(result, "wrong output", "out of tolerance", kind="wrong_output")
    assert result["metrics"]["all_correct"] is False
    assert "expected" in reason and ("e-0" in reason or "e+0" in reason)  # values in scientific notation


def test_missing_causal_mask_is_caught_by_prefill(tmp_path):
    path = variant(tmp_path, *NO_MASK)
    failed(evaluate(path, select("prefill-37"), CHECK_ONLY), "prefill-37", "wrong output")
    failed(evaluate(path, CPU, CHECK_ONLY), "wrong output")


@pytest.mark.parametrize("scenario", ["decode-256-b2", "decode-1000", "prefill-29-after-71"])
def test_query_length_used_as_key_length_is_caught(tmp_path, scenario):
    # Decode (Lq = 1) would see key 0 only; a prompt after a cache would miss the cache.
    failed(evaluate(variant(tmp_path, *NO_OFFSET), select(scenario), CHECK_ONLY), scenario, "wrong output")


def test_part_of_the_output_left_zero_is_caught(tmp_path):
    path = variant(tmp_path, ("    return out.reshape(batch, query_heads, query_len, dim)",
                              "    out = out.reshape(batch, query_heads, query_len, dim)\n"
                              "    out = out * (mx.arange(query_heads) < query_heads - 1)[None, :, None, None]\n"
                              "    return out"))
    failed(evaluate(path, CPU, CHECK_ONLY), "wrong output", "h, i, d) = (0, 15,")


def test_wrong_dtype_and_shape_are_caught(tmp_path):
    path = variant(tmp_path, (".astype(queries.dtype)\n# EVOLVE-BLOCK-END", "\n# EVOLVE-BLOCK-END"))
    failed(evaluate(path, select("decode-1000"), CHECK_ONLY), "output dtype mlx.core.float32, expected mlx.core.float16")
    path = variant(tmp_path, ("    return out.reshape(batch, query_heads, query_len, dim)",
                              "    return out.reshape(batch, query_heads, query_len, dim)[:, :, :, :-1]"))
    failed(evaluate(path, CPU, CHECK_ONLY), "output shape")


def test_nan_output_is_caught(tmp_path):
    path = variant(tmp_path, ("    return out.reshape(batch, query_heads, query_len, dim)",
                              "    return 0.0 * mx.inf + out.reshape(batch, query_heads, query_len, dim)"))
    failed(evaluate(path, CPU, CHECK_ONLY), "non-finite outputs")


# --- cheats ----------------------------------------------------------------------------------

MEMO_BY_SHAPE = ("def gqa_attention(queries, keys, values, scale, causal):\n",
                 "_SEEN = {}\n\n\ndef gqa_attention(queries, keys, values, scale, causal):\n"
                 "    if queries.shape in _SEEN:\n        return _SEEN[queries.shape]\n"
                 "    _SEEN[queries.shape] = _real(queries, keys, values, scale, causal)\n"
                 "    return _SEEN[queries.shape]\n\n\ndef _real(queries, keys, values, scale, causal):\n")


def test_overwriting_the_inputs_is_caught(tmp_path):
    # Judged on doctored inputs, zeroed queries would match: uniform attention over the values.
    path = variant(tmp_path, ("    group = query_heads // kv_heads\n",
                              "    group = query_heads // kv_heads\n    queries[:] = 0\n"))
    failed(evaluate(path, CPU, CHECK_ONLY), "overwrote its input queries in place", kind="input_overwritten")


def test_cached_output_from_a_previous_call_is_caught(tmp_path):
    failed(evaluate(variant(tmp_path, MEMO_BY_SHAPE), CPU, CHECK_ONLY), "call 2 of 2", "cached or stale",
           kind="wrong_output")


def test_memo_that_only_hits_while_timed_is_caught(tmp_path):
    # Keyed on the keys array: correctness draws new keys every call, so only timing would hit,
    # where keys are shared between rounds with fresh queries. The last timed output gives it away.
    memo = ("def gqa_attention(queries, keys, values, scale, causal):\n",
            "_SEEN = {}\n\n\ndef gqa_attention(queries, keys, values, scale, causal):\n"
            "    if id(keys) not in _SEEN:\n"
            "        _SEEN[id(keys)] = (keys, _real(queries, keys, values, scale, causal))\n"
            "    return _SEEN[id(keys)][1]\n\n\ndef _real(queries, keys, values, scale, causal):\n")
    budget = race.Budget(warmup=1, min_rounds=3, max_rounds=5, seconds=0.01)
    failed(evaluate(variant(tmp_path, memo), select("decode-256-b2"), Setup(timer=Local(budget))),
           "wrong output while timed", "last timed call")


@pytest.mark.parametrize("how", ["direct", "caught", "saved at import"])
def test_calling_the_baseline_is_caught(tmp_path, how):
    fast = "mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask='causal' if causal else None)"
    body = {
        "direct": f"    return {fast}\n",
        "caught": f"    try:\n        return {fast}\n    except Exception:\n        return _real(queries, keys, values, scale, causal)\n",
        "saved at import": "    return _FAST(queries, keys, values, scale=scale, mask='causal' if causal else None)\n",
    }[how]
    path = variant(tmp_path, ("def gqa_attention(queries, keys, values, scale, causal):\n",
                              "_FAST = mx.fast.scaled_dot_product_attention\n\n\n"
                              f"def gqa_attention(queries, keys, values, scale, causal):\n{body}\n\n"
                              "def _real(queries, keys, values, scale, causal):\n"))
    failed(evaluate(path, CPU, CHECK_ONLY), "called mx.fast.scaled_dot_product_attention", kind="baseline_called")
    assert mx.fast.scaled_dot_product_attention is REAL_BASELINE  # restored afterwards


def test_calling_the_baseline_while_imported_is_caught(tmp_path):
    path = variant(tmp_path, ("import mlx.core as mx\n",
                              "import mlx.core as mx\n\n_PROBE = mx.fast.scaled_dot_product_attention(\n"
                              "    mx.zeros((1, 1, 1, 8)), mx.zeros((1, 1, 1, 8)), mx.zeros((1, 1, 1, 8)), scale=1.0)\n"))
    failed(evaluate(path, CPU, CHECK_ONLY), "importing attention.py", "called mx.fast.scaled_dot_product_attention")
    assert mx.fast.scaled_dot_product_attention is REAL_BASELINE


def test_a_candidate_that_raises_fails_with_its_traceback(tmp_path):
    path = variant(tmp_path, ("    group = query_heads // kv_heads\n",
                              "    group = query_heads // kv_heads\n    raise ValueError('boom in the kernel')\n"))
    result = evaluate(path, CPU, CHECK_ONLY)
    failed(result, "prefill-37", "raised ValueError: boom in the kernel", kind="exception")
    assert "boom in the kernel" in result["artifacts"]["traceback"] and "attention.py" in result["artifacts"]["traceback"]


def test_a_candidate_that_does_not_import_fails(tmp_path):
    failed(evaluate(variant(tmp_path, ("import mlx.core as mx\n", "import mlx.core as mx\ndef (:\n")),
                    CPU, CHECK_ONLY), "importing attention.py raised SyntaxError", kind="import_error")
    failed(evaluate(variant(tmp_path, ("def gqa_attention(", "def attention(")), CPU, CHECK_ONLY),
           "defines no function gqa_attention")


def test_the_candidate_is_loaded_fresh_from_its_file(tmp_path):
    first = guards.load_candidate(variant(tmp_path, ('SOFTMAX = "manual"', 'SOFTMAX = "fused"')))
    second = guards.load_candidate(variant(tmp_path))
    assert first is not second and first.__name__ != second.__name__
    assert (first.SOFTMAX, second.SOFTMAX) == ("fused", "manual")


# --- the EVOLVE-BLOCK frame, with a real repository ------------------------------------------


def frame_repo(tmp_path: Path, outside_edit: bool) -> tuple[Path, dict]:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    (repo / "attention.py").write_text(PROGRAM)
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "base")
    base = git(repo, "rev-parse", "HEAD").strip()
    text = PROGRAM.replace('SOFTMAX = "manual"', 'SOFTMAX = "fused"')
    if outside_edit:
        text = text.replace("import mlx.core as mx\n", "import mlx.core as mx\nFAST_PATH = True\n")
    (repo / "attention.py").write_text(text)
    git(repo, "commit", "--quiet", "-am", "candidate")
    return repo, {"GITEVOLVE_BASE": base, "GITEVOLVE_FILES": "attention.py", "GITEVOLVE_STAGE": "correctness"}


def test_an_edit_outside_the_evolve_block_is_caught_by_the_hook(tmp_path):
    repo, env = frame_repo(tmp_path, outside_edit=True)
    result, _ = run_hook(repo, env=env)
    failed(result, "edited outside the EVOLVE-BLOCK", "before the first block", kind="frame_changed")
    assert "+FAST_PATH = True" in result["artifacts"]["frame"]
    assert result["metrics"]["frame_check"] == "changed"


def test_an_edit_inside_the_evolve_block_passes_the_frame_check(tmp_path):
    repo, env = frame_repo(tmp_path, outside_edit=False)
    result, _ = run_hook(repo, env=env)  # GITEVOLVE_STAGE=correctness: no timing
    assert result["status"] == "ok", result
    assert result["metrics"]["frame_check"] == "unchanged" and result["metrics"]["stage"] == "correctness"


# --- the hook's output, whatever the candidate does ------------------------------------------


@pytest.mark.parametrize("edits, words", [
    (WRONG_HEADS, "wrong output"),
    (NO_OFFSET, "wrong output"),
    ((MEMO_BY_SHAPE,), "cached or stale"),
    ((("    group = query_heads // kv_heads\n", "    group = query_heads // kv_heads\n    raise KeyError(7)\n"),),
     "raised KeyError"),
    ((("def gqa_attention(queries, keys, values, scale, causal):\n",
       "def gqa_attention(queries, keys, values, scale, causal):\n"
       "    return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale)\n"),),
     "called mx.fast.scaled_dot_product_attention"),
    # Noise on stdout, an unterminated line and a fake result printed at exit: the last line is still ours.
    ((("import mlx.core as mx\n",
       "import atexit, os, sys\nimport mlx.core as mx\nprint('hello')\nos.write(1, b'no newline')\n"
       "atexit.register(lambda: print('{\"status\": \"ok\", \"score\": 99}'))\n"),
      ("        if causal:\n", "        if False:\n")), "wrong output"),
])
def test_the_hook_prints_one_json_result_last(tmp_path, edits, words):
    variant(tmp_path, *edits)
    result, done = run_hook(tmp_path, "--stage", "correctness")
    failed(result, words)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == result


def test_the_hook_reports_its_own_errors_as_json(tmp_path):
    result, _ = run_hook(tmp_path, "--file", "missing.py", "--stage", "correctness")
    failed(result, "importing missing.py raised")
    result, _ = run_hook(tmp_path, "--scenarios", "no-such-set")
    failed(result, "ValueError", "no-such-set", kind="evaluator_error")
    assert "Traceback" in result["artifacts"]["traceback"]


# --- the harness's parts ---------------------------------------------------------------------


@dataclass
class Scripted:
    """A race.Worker that takes a fixed time per call and records what it was asked."""

    name: str
    per_call: float
    log: list

    def block(self, command):
        self.log.append((self.name, tuple(command["seeds"]), tuple(command["kv"])))
        calls = len(command["seeds"])
        return race.Block(self.per_call * calls, self.per_call * calls, calls, self.name)

    def pause(self):
        self.log.append(("pause",))

    def resume(self):
        self.log.append(("resume",))


def test_the_race_interleaves_and_gives_both_sides_the_same_fresh_inputs():
    log = []
    a, b = Scripted("A", 1e-3, log), Scripted("B", 2e-3, log)
    budget = race.Budget(warmup=1, min_rounds=6, max_rounds=6, seconds=0, clean_blocks=3, block_seconds=0.01)
    clean = race.clean(b, "s", 1024, budget)
    assert clean.calls == 5 and len(clean.baseline.blocks) == 3  # 10 ms of 2 ms calls
    log.clear()
    result = race.race(a, b, "s", clean, budget)
    blocks = [entry for entry in log if entry[0] in "AB"]
    assert "".join(e[0] for e in blocks) == "AA" + "ABBAABBAABBA"  # the candidate's probe and warm-up, then rounds
    assert len(blocks[0][1]) == 1 and len(blocks[1][1]) == 5
    assert all(log[i + 1][0] == "B" and log[i + 2] == ("resume",) for i, e in enumerate(log) if e == ("pause",))
    assert len([e for e in log if e == ("pause",)]) == 6  # the candidate is stopped for every baseline block
    rounds = blocks[2:]
    assert all(rounds[i][1:] == rounds[i + 1][1:] for i in range(0, 12, 2))  # same inputs within a round
    seeds = [s for e in rounds[::2] for s in e[1]]
    assert len(set(seeds)) == len(seeds) == 30  # fresh queries for every call
    assert len({k for e in rounds for k in e[2]}) == 2  # keys alternate between two sets
    assert result.speedup == pytest.approx(2.0)


def test_a_much_slower_candidate_races_short_blocks_of_the_same_inputs():
    """Blocks are sized on the baseline: a candidate 100 times slower gets as many calls as fit
    in a block (at least one), the first of each round's inputs, and the same speedup."""
    log = []
    budget = race.Budget(warmup=1, min_rounds=4, max_rounds=4, seconds=0, clean_blocks=3, block_seconds=0.01)
    slow, rival = Scripted("A", 4e-3, log), Scripted("B", 1e-4, log)
    clean = race.clean(rival, "s", 1024, budget)
    assert clean.calls == 100
    log.clear()
    result = race.race(slow, rival, "s", clean, budget)
    ours = [e for e in log if e[0] == "A"]
    assert [len(e[1]) for e in ours] == [1] + [3] * 5  # the probe, then 3 calls of 4 ms in 10 ms blocks
    theirs = [e for e in log if e[0] == "B"]
    assert all(len(b[1]) == 100 and b[1][:3] == a[1] and b[2][:3] == a[2] for a, b in zip(ours[2:], theirs))
    assert result.speedup == pytest.approx(1 / 40)
    near = Scripted("A", 3e-4, log)  # 3x slower: its blocks of the baseline's calls are within bounds
    log.clear()
    race.race(near, rival, "s", clean, budget)
    assert [len(e[1]) for e in log if e[0] == "A"] == [1] + [100] * 5


def test_the_race_fails_a_clock_that_disagrees_and_a_slowed_baseline():
    log = []
    budget = race.Budget(warmup=1, min_rounds=4, max_rounds=4, seconds=0, clean_blocks=3)
    honest, rival = Scripted("A", 1e-3, log), Scripted("B", 1e-3, log)
    clean = race.clean(rival, "s", 1024, budget)
    liar = Scripted("A", 1e-3, log)
    liar.block = lambda command: race.Block(0.02, 0.01, len(command["seeds"]), "A")  # own clock at half speed
    with pytest.raises(race.Cheated, match="timing tampered with") as e:
        race.race(liar, rival, "s", clean, budget)
    assert e.value.kind == "timing_tampered"
    with pytest.raises(race.Cheated, match="slowed its rival") as e:
        race.race(honest, Scripted("B", 2.5e-3, log), "s", clean, budget)
    assert (e.value.kind, e.value.transient) == ("baseline_slowed", False)
    with pytest.raises(race.Cheated, match="or the machine is busy") as e:  # within what noise can do: retried
        race.race(honest, Scripted("B", 1.6e-3, log), "s", clean, budget)
    assert (e.value.kind, e.value.transient) == ("baseline_slowed", True)
    race.race(honest, rival, "s", clean, budget)  # the honest pair passes


@dataclass
class Slowed(Scripted):
    """A baseline slowed by half in the blocks numbered in `slow` (counted from its first)."""

    slow: tuple = ()
    blocks: int = 0

    def block(self, command):
        self.per_call, self.blocks = (1.6e-3 if self.blocks in self.slow else 1e-3), self.blocks + 1
        return super().block(command)


def test_a_doubtful_race_is_raced_again_and_only_a_lasting_slowdown_stands():
    from types import SimpleNamespace

    from evaluators.gqa import referee

    budget = race.Budget(warmup=1, min_rounds=4, max_rounds=4, seconds=0, clean_blocks=3)
    scenario, log = SimpleNamespace(name="s", query_bytes=1024), []
    # 8 clean blocks (warm-up, 2 handshakes, 2 probes, 3 timed), then the race's 4: slowed once.
    once = Slowed("B", 1e-3, log, slow=(8, 9, 10, 11))
    result = referee._race(Scripted("A", 1e-3, log), once, scenario, budget)
    assert (once.blocks, result.speedup) == (24, pytest.approx(1.0))
    lasting = Slowed("B", 1e-3, log, slow=(8, 9, 10, 11, 20, 21, 22, 23))  # in both races, never alone
    with pytest.raises(race.Cheated, match="or the machine is busy"):
        referee._race(Scripted("A", 1e-3, log), lasting, scenario, budget)


def test_a_supervisor_that_woke_late_neither_flatters_the_candidate_nor_calls_it_a_cheat():
    log = []
    budget = race.Budget(warmup=1, min_rounds=4, max_rounds=4, seconds=0, clean_blocks=3)
    rival = Scripted("B", 1e-3, log)
    clean = race.clean(rival, "s", 1024, budget)
    late = Scripted("A", 1e-3, log)
    # Our stamp of "start" came late: we read 10 ms, the process's own clock 20 ms, the truth.
    late.block = lambda command: race.Block(0.01, 0.02, len(command["seeds"]), "A")
    result = race.race(late, rival, "s", clean, budget)  # no timing_tampered
    assert result.candidate.blocks[0].seconds == 0.02


def test_the_baseline_is_restored_even_when_the_candidate_raises_and_gone_for_good_unless_asked():
    with pytest.raises(guards.BaselineCalled):
        with guards.baseline_hidden() as wire:
            mx.fast.scaled_dot_product_attention(None, None, None, scale=1.0)
    assert wire.calls == 1 and mx.fast.scaled_dot_product_attention is REAL_BASELINE
    code = ("import gc, mlx.core as mx\nfrom evaluators.gqa import guards\n"
            "with guards.baseline_hidden(restore=False):\n    pass\n"
            "print(type(mx.fast.scaled_dot_product_attention).__name__)\n"
            "print(sum(getattr(o, '__name__', '') == 'scaled_dot_product_attention' for o in gc.get_objects()))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["Tripwire", "0"]  # no object left in the process is the real one


def test_reference_agrees_with_mlx_attention():
    for s in TINY:
        x = correctness.make_inputs(s)
        got = baseline.attention(*x.args())
        assert correctness.compare(s, x, got, correctness.gqa_reference(*x.args())).ok


def test_scenario_sets():
    assert len(GPU) >= 18 and {s.dtype for s in GPU} == {"float16", "bfloat16", "float32"}
    assert max(s.key_len for s in GPU if s.kind == "decode") >= 32000
    assert any(s.query_len < s.key_len and s.kind == "prefill" for s in CPU)
    assert any(s.batch > 1 for s in CPU) and any(s.shape.group == 5 for s in CPU)
    assert any(s.key_len % 64 for s in CPU if s.kind == "decode")
    assert select("decode-1000,prefill-37")[1].name == "prefill-37"
    with pytest.raises(ValueError, match="unknown"):
        select("nope")
