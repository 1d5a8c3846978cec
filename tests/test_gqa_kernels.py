"""The GQA kernel examples (CUDA and Metal under MLX) and benchmarks/gqa_kernels.py.

On any machine: the example files parse, keep their tunables inside balanced EVOLVE-BLOCKs where
gitevolve's operator finds them, and every combination of tunables gives a valid launch; the
benchmark's real pieces (candidate loading from a file or a commit, correctness checks, timing)
run on MLX's CPU backend with the plain-MLX example. On an NVIDIA GPU with
mlx[cuda13] (marker `cuda`) and on Apple silicon (marker `metal`), the kernels are checked
against the float32 reference for several shapes and settings.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CUDA_EXAMPLE = ROOT / "examples" / "gqa-cuda" / "attention.py"
METAL_EXAMPLE = ROOT / "examples" / "gqa-metal" / "attention.py"
MLX_EXAMPLE = ROOT / "examples" / "gqa-mlx" / "attention.py"
KERNEL_EXAMPLES = [CUDA_EXAMPLE, METAL_EXAMPLE]

mx = pytest.importorskip("mlx.core")


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_gqa_test_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _cuda_available() -> bool:
    return hasattr(mx, "cuda") and hasattr(mx.cuda, "is_available") and mx.cuda.is_available()


def _metal_available() -> bool:
    return hasattr(mx, "metal") and hasattr(mx.metal, "is_available") and mx.metal.is_available()


# ---------------------------------------------------------------------------------------------
# The example files, on any machine


@pytest.mark.parametrize("path", KERNEL_EXAMPLES, ids=lambda p: p.parent.name)
def test_example_keeps_its_tunables_inside_one_evolve_block(path):
    from gitevolve.mutate.blocks import frame, regions
    from gitevolve.mutate.tunables import parse

    text = path.read_text()
    ast.parse(text)
    assert len(regions(text)) == 1
    found = parse(path.name, text)
    assert len(found) >= 8
    for t in found:
        assert t.value in t.choices, f"{t.name} = {t.value!r} is not one of its choices"
    # A tunable line outside the block would be invisible to the operator: there must be none.
    outside = "\n".join(line for run in frame(text) for line in run)
    assert "gitevolve: choices" not in outside
    # The signature the harness calls stays outside the block, where no mutation can change it.
    assert "def gqa_attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float, causal: bool)" in outside


@pytest.mark.parametrize("path", KERNEL_EXAMPLES, ids=lambda p: p.parent.name)
def test_example_config_loads_and_names_its_backend(path):
    from gitevolve.config import load_config

    config = load_config(path.parent)
    backend = path.parent.name.removeprefix("gqa-")
    # CUDA overlaps its candidates' compiles and checks under the hook's device lock; Metal's
    # has not been measured on an Apple GPU and stays one at a time.
    assert config.files == ["attention.py"] and config.workers == (3 if backend == "cuda" else 1)
    quick, full = config.evaluator.stage_list()  # a cheap first stage, then every scenario
    assert full.command == f"python hooks/gqa_mlx.py --backend {backend} --scenarios gpu --timeout 840"
    assert quick.command.startswith(f"python hooks/gqa_mlx.py --backend {backend} --scenarios decode-1000,prefill-2048 ")
    assert quick.within == 0.9 and quick.timeout < full.timeout
    assert (path.parent / "README.md").is_file() and (path.parent / "system_message.md").is_file()


@pytest.mark.parametrize("path", KERNEL_EXAMPLES, ids=lambda p: p.parent.name)
def test_example_map_elites_cells_come_from_metrics_the_hook_reports(path):
    """The kernel examples' cells are decode and prefill speed, which the hook's summary reports:
    a candidate fast at one path and slow at the other keeps a cell of its own."""
    from evaluators.gqa.shapes import select
    from evaluators.gqa.summary import by_kind
    from gitevolve.config import load_config
    from gitevolve.population import Candidate, cell

    features = load_config(path.parent).features
    scenarios = select("gpu")
    reported = by_kind(scenarios, {s.name: 0.5 for s in scenarios})
    assert {f.name for f in features} == {"decode_speedup", "prefill_speedup"} <= set(reported)

    def candidate(decode, prefill):
        return Candidate("c", None, 0, 1, 0, "ok", 0.1, metrics={"decode_speedup": decode, "prefill_speedup": prefill})

    # Two early candidates of the H200 run of 2026-12-04, and the plain program.
    cells = {cell(candidate(*x), features) for x in ((0.02, 0.52), (0.53, 0.18), (0.0085, 0.0093))}
    assert len(cells) == 3


@pytest.mark.parametrize("path", KERNEL_EXAMPLES, ids=lambda p: p.parent.name)
def test_example_initial_settings_are_the_plain_starting_point(path):
    module = _load(path)
    assert module.SHARE_KV is False and module.ONLINE_SOFTMAX is False and module.SPLIT_BLOCKS == 0
    assert module.VEC == 1 and module.UNROLL == 1


@pytest.mark.parametrize("path", KERNEL_EXAMPLES, ids=lambda p: p.parent.name)
def test_the_operator_can_set_every_choice_and_the_file_still_loads(path):
    from gitevolve.mutate.tunables import apply, parse

    text = path.read_text()
    for t in parse(path.name, text):
        for value in t.choices:
            changed = apply(text, {t.line: value})
            again = {u.name: u.value for u in parse(path.name, changed)}
            assert again[t.name] == value
    module_text = apply(text, {t.line: t.choices[-1] for t in parse(path.name, text)})
    compile(module_text, str(path), "exec")


SHAPES = [  # (batch, query heads, kv heads, query len, key len, head dim)
    (1, 40, 8, 1, 32768, 128), (1, 40, 8, 1, 512, 128), (1, 16, 8, 1, 7, 128), (8, 16, 8, 1, 129, 128),
    (2, 8, 2, 1, 1023, 64), (1, 40, 8, 2048, 2048, 128), (4, 16, 8, 37, 100, 128), (1, 12, 4, 1, 300, 96),
]


@pytest.mark.parametrize("path", KERNEL_EXAMPLES, ids=lambda p: p.parent.name)
def test_every_combination_of_tunables_gives_a_valid_launch(path):
    """layout() turns the tunables into launch parameters; whatever the operator picks, the lanes of a
    key must divide the head dim, a load must fit what a lane holds, a block's heads must share one
    KV head, and the split count must stay within what the merge can hold."""
    module = _load(path)
    declared = set(_tunable_names(path))
    groups = (["THREADS", "KEY_LANES", "VEC", "DOT"], ["SHARE_KV", "SPLIT_BLOCKS", "MIN_SPLIT_KEYS", "THREADS"])
    for names in ([n for n in g if n in declared] for g in groups):
        for values in itertools.product(*[_choices(path, n) for n in names]):
            for n, v in zip(names, values):
                setattr(module, n, v)
            for b, hq, hkv, lq, lk, d in SHAPES:
                heads, lanes, vec, threads, splits, keys = module.layout(b, hq, hkv, lq, lk, d)
                group = hq // hkv
                assert heads in (1, group)
                assert lanes <= min(threads, 32) and d % lanes == 0 and lanes & (lanes - 1) == 0
                assert (d // lanes) % vec == 0 and vec & (vec - 1) == 0
                assert threads % lanes == 0
                if keys:  # a lane per key for the scores, then the warp's 32 lanes split the head dim
                    assert module.DOT in ("keys", "mma") and threads >= 32 and lanes == 32 and vec == d // 32
                else:
                    assert vec <= module.VEC
                assert 1 <= splits <= module.MAX_SPLITS
                if module.SPLIT_BLOCKS == 0:
                    assert splits == 1
                if splits > 1:
                    assert lk // splits >= module.MIN_SPLIT_KEYS


def test_cuda_decode_mma_fits_in_shared_memory_whatever_the_tunables():
    """The tensor-core decode's dynamic shared memory (the warps' tile rings, reused by the merge)
    stays within what one H100 block may have for every THREADS and STAGES the operator can pick,
    and it is taken only by the calls it can serve."""
    module = _load(CUDA_EXAMPLE)
    h100_block_limit = 227 * 1024
    for threads, stages, head_dim, group in itertools.product(
            [t for t in _choices(CUDA_EXAMPLE, "THREADS") if t >= 32], _choices(CUDA_EXAMPLE, "STAGES"),
            (64, 128), (1, 2, 5, 8, 12, 16)):
        module.STAGES = stages
        used, smem = module.decode_mma_stages(threads, head_dim, 2, group)
        assert 2 <= used <= max(2, stages)
        assert threads // 32 * used * 2 * 16 * head_dim * 2 <= smem <= h100_block_limit
    module.DOT, module.THREADS = "mma", 64
    q, k = mx.zeros((1, 40, 1, 128), dtype=mx.float16), mx.zeros((1, 8, 10, 128), dtype=mx.float16)
    assert module.uses_decode_mma(q, k)
    assert not module.uses_decode_mma(q.astype(mx.float32), k)  # no fp32 tensor-core path
    assert not module.uses_decode_mma(mx.zeros((1, 40, 3, 128), dtype=mx.float16), k)  # not decode
    assert not module.uses_decode_mma(mx.zeros((1, 34, 1, 128), dtype=mx.float16), k[:, :2])  # 17 heads a group
    module.DOT = "keys"
    assert not module.uses_decode_mma(q, k)


def _tunable_names(path: Path) -> list[str]:
    from gitevolve.mutate.tunables import parse

    return [t.name for t in parse(path.name, path.read_text())]


def _choices(path: Path, name: str) -> list:
    from gitevolve.mutate.tunables import parse

    return next(t.choices for t in parse(path.name, path.read_text()) if t.name == name)


def _assert_every_tunable_is_in_the_plan_key(module, path: Path):
    for name in _tunable_names(path):
        before = module.tunables()
        old = getattr(module, name)
        setattr(module, name, next(c for c in _choices(path, name) if c != old))
        assert module.tunables() != before, f"{name} is not in tunables()"
        setattr(module, name, old)


def test_cuda_plans_are_keyed_by_every_tunable_and_shared_across_cache_lengths():
    """A call reuses the launch planned for its key: the key must change with every tunable (or a
    setting changed by the operator or the sweep would replay the old launch), and must not
    change with the KV cache length alone (decode would plan again on every token)."""
    module = _load(CUDA_EXAMPLE)
    _assert_every_tunable_is_in_the_plan_key(module, CUDA_EXAMPLE)
    module.DOT, module.THREADS, module.SPLIT_BLOCKS, module.MMA_MIN_SPLIT_KEYS = "mma", 128, 132, 128
    q = mx.zeros((1, 40, 1, 128), dtype=mx.float16)
    # What the calls would launch, neither made (no CUDA here) nor launched.
    module._kernel = lambda name, template, shared_memory=0: (name, dict(template))
    module._launch = lambda launch, *inputs: launch
    planned = [module._attention(q, mx.zeros((1, 8, n, 128), dtype=mx.float16), q, 0.1, False)
               for n in (130_000, 140_001, 1000)]  # the first two past MAX_SPLITS * MMA_MIN_SPLIT_KEYS keys
    assert len(module._plans) == 2 and planned[0] is planned[1]
    assert planned[0].stage.kernel == ("decode_mma", dict(T=mx.float16, D=128, G=5, THREADS=128, STAGES=2, ATOMIC=False,
                                                    MAX_SPLITS=256))
    assert planned[0].stage.grid == (16 * 128, 8, 1)  # 16 splits: 128 blocks, within SPLIT_BLOCKS
    assert planned[2].stage.grid[0] < planned[0].stage.grid[0]  # 1000 keys: fewer splits


def test_cuda_decode_kernels_split_by_their_own_minimum_and_plans_follow_both():
    """The tensor-core decode splits by MMA_MIN_SPLIT_KEYS and the vector kernel (float32 decode
    under DOT="mma") by MIN_SPLIT_KEYS: on the H200 the sweep chose 1024 and 128. Two float32
    calls whose vector split counts differ must not share a plan, even where the tensor-core
    decode's would be the same."""
    module = _load(CUDA_EXAMPLE)
    module.DOT, module.THREADS, module.SPLIT_BLOCKS = "mma", 256, 132
    module.MMA_MIN_SPLIT_KEYS, module.MIN_SPLIT_KEYS = 1024, 64
    module._kernel = lambda name, template, shared_memory=0: (name, dict(template))
    module._launch = lambda launch, *inputs: launch

    def planned(dtype, keys):
        q = mx.zeros((1, 16, 1, 128), dtype=dtype)
        return module._attention(q, mx.zeros((1, 8, keys, 128), dtype=dtype), q, 0.1, True).stage

    half = planned(mx.float16, 1023)
    assert half.kernel[0] == "decode_mma" and half.grid == (256, 8, 1)  # fewer than 1024 keys: one split
    single = planned(mx.float32, 1023)
    assert single.kernel[0] == "vector" and single.grid == (8 * 256, 16, 1)  # 16 rows: 8 splits of 127 keys
    assert planned(mx.float32, 2000).grid == (8 * 256, 16, 1)
    assert planned(mx.float32, 300).grid == (4 * 256, 16, 1) != single.grid  # 4 splits of 75: planned anew


def test_cuda_wgmma_prefill_is_planned_on_hopper_only_and_two_blocks_fit_an_sm():
    """PREFILL="wgmma" takes Hopper's warpgroup MMA only where MLX reports an sm_90 GPU (MLX then
    compiles for sm_90a; elsewhere wgmma does not exist) and the mma.sync prefill otherwise. Its
    plain form must leave room for two blocks an SM: that is what makes two warpgroups a block fast."""
    module = _load(CUDA_EXAMPLE)
    module.PREFILL, module.WGMMA_GROUPS = "wgmma", 2
    module._kernel = lambda name, template, shared_memory=0: (name, dict(template), shared_memory)
    q = mx.zeros((1, 40, 2048, 128), dtype=mx.float16)
    kv = mx.zeros((1, 8, 2048, 128), dtype=mx.float16)

    module._hopper = lambda: False
    name, _, _ = module.plan(q, kv, kv, 0.1, True).stage.kernel
    assert name == "mma"

    module._hopper = lambda: True
    stage = module.plan(q, kv, kv, 0.1, True).stage
    name, template, smem = stage.kernel
    assert name == "wgmma" and template["WGS"] == 2 and not template["PIPE"]
    assert stage.threadgroup == (256, 1, 1) and stage.grid == (2048 // 128 * 256, 40, 1)
    sm_bytes, reserved_per_block = 228 * 1024, 1024  # an H100 SM's shared memory, and the driver's share
    assert 2 * (smem + reserved_per_block) <= sm_bytes
    module.WGMMA_PIPELINE = True  # three K/V stages: still within one block's limit of 227 KB
    assert module.plan(q, kv, kv, 0.1, True).stage.kernel[2] <= 227 * 1024


def test_metal_plans_are_keyed_by_every_tunable_and_shared_across_cache_lengths():
    """The Metal example plans its launches as the CUDA one does: a key that changes with every
    tunable and, for the KV cache length, only with the split count."""
    module = _load(METAL_EXAMPLE)
    _assert_every_tunable_is_in_the_plan_key(module, METAL_EXAMPLE)
    module.THREADS, module.KEY_LANES, module.SHARE_KV, module.SPLIT_BLOCKS, module.MIN_SPLIT_KEYS = 256, 32, True, 64, 128
    launched = []
    # What the calls would launch, neither made (no Metal here) nor launched.
    module._kernel = lambda name: lambda **kw: launched.append((name, kw)) or [None, None]
    q = mx.zeros((1, 40, 1, 128), dtype=mx.float16)
    for n in (130_000, 140_001, 1000):  # the first two past MAX_SPLITS * MIN_SPLIT_KEYS keys
        module._attention(q, mx.zeros((1, 8, n, 128), dtype=mx.float16), q, 0.1, False)
    assert len(module._plans) == 2
    grids = [kw["grid"] for name, kw in launched if name == "vector"]
    assert grids[0] == grids[1] == (8 * 256, 8, 1)  # 8 splits of 8 threadgroups: 64, within SPLIT_BLOCKS
    assert grids[2][0] == 7 * 256  # 1000 keys: 7 splits of at least 128
    assert [name for name, _ in launched] == ["vector", "combine"] * 3


def test_cuda_counters_never_hand_one_slot_to_two_calls_in_flight():
    """The atomic merge's counters: consecutive calls of one size get different slots, a slot
    comes back only after SLOTS calls (MLX may run the independent calls of one graph at the same
    time), and calls of another size draw from a ring of their own."""
    module = _load(CUDA_EXAMPLE)
    counters = module._Counters()
    slots = module._Counters.SLOTS
    assert slots >= 1024
    last_use = {}
    for call in range(3 * slots):
        count = 40 if call % 3 else 8
        view = counters.take(count)
        assert view.shape == (count,) and view.dtype == mx.int32
        if id(view) in last_use:
            assert call - last_use[id(view)] >= slots * 2 // 3  # the size-40 calls are 2 in 3
        last_use[id(view)] = call
    assert len(last_use) == 2 * slots  # every slot of both rings used, none shared between sizes
    for views, _ in counters.rings.values():
        assert all(int(mx.sum(v).item()) == 0 for v in views[:4])


def test_cuda_example_imports_without_a_gpu_and_says_which_prefill_path_runs():
    module = _load(CUDA_EXAMPLE)
    q = mx.zeros((1, 40, 64, 128), dtype=mx.float16)
    module.PREFILL = "mma"
    assert module.uses_mma(q)
    assert not module.uses_mma(q.astype(mx.float32))
    assert not module.uses_mma(mx.zeros((1, 40, 1, 128), dtype=mx.float16))  # decode
    assert not module.uses_mma(mx.zeros((1, 40, 64, 72), dtype=mx.float16))  # the mma kernels take head dims 64 and 128
    module.PREFILL = "vector"
    assert not module.uses_mma(q)


# ---------------------------------------------------------------------------------------------
# benchmarks/gqa_kernels.py, on MLX's CPU backend with the plain-MLX example


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gqa_kernels
    finally:
        sys.path.pop(0)
    return gqa_kernels


def test_bench_loads_a_candidate_from_a_file_and_from_a_commit(bench, tmp_path):
    module, where = bench.load_candidate(str(MLX_EXAMPLE))
    assert callable(module.gqa_attention) and where == str(MLX_EXAMPLE)

    repo = tmp_path / "repo"
    repo.mkdir()
    text = MLX_EXAMPLE.read_text().replace('GROUPING = "repeat"', 'GROUPING = "fold"')
    (repo / "attention.py").write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "candidate"]):
        subprocess.run(["git", *cmd], cwd=repo, env=env, check=True)
    (repo / "attention.py").write_text("raise SystemExit('the working tree must not be read')\n")
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        module, where = bench.load_candidate("HEAD")
        assert module.GROUPING == "fold" and where.startswith("HEAD:attention.py")
        with pytest.raises(SystemExit):
            bench.load_candidate("no-such-rev", None)
    finally:
        os.chdir(cwd)


def test_bench_tunables_agree_with_the_operator_and_settings_apply(bench):
    from gitevolve.mutate.tunables import parse

    for path in (CUDA_EXAMPLE, MLX_EXAMPLE, METAL_EXAMPLE):
        module, _ = bench.load_candidate(str(path), None)
        mine = bench.tunables(module)
        theirs = {t.name: list(t.choices) for t in parse(path.name, path.read_text())}
        assert mine == theirs
    module, _ = bench.load_candidate(str(CUDA_EXAMPLE), None)
    bench.apply_settings(module, bench.parse_set(["THREADS=128", "COMBINE=atomic", "SHARE_KV=True"]))
    assert (module.THREADS, module.COMBINE, module.SHARE_KV) == (128, "atomic", True)
    assert bench.current_settings(module)["THREADS"] == 128
    with pytest.raises(SystemExit):
        bench.apply_settings(module, {"NO_SUCH_TUNABLE": 1})


def test_bench_inputs_view_a_longer_cache_like_mlx_lm(bench):
    s = bench.Scenario("v", 1, 8, 2, 1, 250, capacity=512, head_dim=64)
    q, k, v = bench.mlx_inputs(s)
    assert q.shape == (1, 8, 1, 64) and k.shape == (1, 2, 250, 64) and v.shape == k.shape
    assert s.kv_bytes == 2 * 2 * 250 * 64 * 2


def test_bench_scenarios_are_named_by_set_or_one_by_one_and_a_wrong_name_says_which(bench):
    assert bench.scenarios_named("short") == bench.SETS["short"]
    picked = bench.scenarios_named("decode-16:8-128,prefill-40:8-2048")
    assert [s.name for s in picked] == ["decode-16:8-128", "prefill-40:8-2048"]
    with pytest.raises(SystemExit, match="unknown scenario 'decode-40:8-7'; the sets are full, quick, short, cpu"):
        bench.scenarios_named("decode-16:8-128,decode-40:8-7")


def test_bench_check_passes_a_right_candidate_and_fails_a_wrong_one(bench):
    module, _ = bench.load_candidate(str(MLX_EXAMPLE))
    s = bench.Scenario("c", 1, 8, 2, 5, 40, "float16", head_dim=32)
    verdict = bench.check(module.gqa_attention, s)
    assert verdict["ok"] and verdict["max_abs_error"] < 1e-2 and verdict["rel_error"] < 1e-2

    def wrong_mask(q, k, v, scale, causal):  # the published starting point's bug: no causal offset
        return module.gqa_attention(q, k[:, :, -q.shape[2]:], v[:, :, -q.shape[2]:], scale, causal)

    assert not bench.check(wrong_mask, s)["ok"]

    def baseline_itself(q, k, v, scale, causal):
        return bench.baseline_fn(q, k, v, scale, causal)

    assert bench.check(baseline_itself, s)["identical_to_mlx"]


def test_bench_times_real_contenders_interleaved(bench):
    module, _ = bench.load_candidate(str(MLX_EXAMPLE))
    s = bench.Scenario("t", 1, 8, 2, 1, 64, "float16", head_dim=32)
    cands = [bench.mlx_contender("candidate", module.gqa_attention, s, 3), bench.mlx_contender("mlx", bench.baseline_fn, s, 3)]
    per_call = bench.time_per_call(cands, rounds=4, warmup=1)
    amortised = bench.time_amortised(cands, rounds=2, warmup=0)
    for timing in (per_call, amortised):
        assert set(timing) == {"candidate", "mlx"}
        assert all(t["median_us"] > 0 and t["n"] in (2, 4) for t in timing.values())


# ---------------------------------------------------------------------------------------------
# On the GPUs


# The tunables' own defaults (the plain starting point), the fastest found on the H100 and H200, and
# settings that take each other code path: the second merge kernel, two passes, one head per block.
CUDA_SETTINGS = {
    "initial": {},
    "fast": dict(THREADS=128, DOT="keys", SHARE_KV=True, SPLIT_BLOCKS=528, MIN_SPLIT_KEYS=64, COMBINE="atomic",
                 PREFILL="mma"),
    "keys-kernel-merge": dict(THREADS=256, DOT="keys", SHARE_KV=False, SPLIT_BLOCKS=1056, MIN_SPLIT_KEYS=32,
                              COMBINE="kernel"),
    "lanes-split": dict(THREADS=64, KEY_LANES=8, VEC=4, SHARE_KV=True, ONLINE_SOFTMAX=True, UNROLL=2,
                        SPLIT_BLOCKS=1056, MIN_SPLIT_KEYS=32, COMBINE="atomic"),
    "two-pass-per-head": dict(THREADS=256, KEY_LANES=32, VEC=2, SHARE_KV=False, ONLINE_SOFTMAX=False, UNROLL=8,
                              SPLIT_BLOCKS=264, MIN_SPLIT_KEYS=128, COMBINE="atomic"),
    "mma-decode": dict(THREADS=128, DOT="mma", SPLIT_BLOCKS=528, MMA_MIN_SPLIT_KEYS=64, MIN_SPLIT_KEYS=64,
                       COMBINE="atomic", PREFILL="mma"),
    "mma-decode-kernel-merge": dict(THREADS=64, DOT="mma", SPLIT_BLOCKS=1056, MMA_MIN_SPLIT_KEYS=32, MIN_SPLIT_KEYS=32,
                                    COMBINE="kernel"),
    "mma-decode-one-split": dict(THREADS=256, DOT="mma", SPLIT_BLOCKS=0),
    "sweep-pick": dict(THREADS=256, DOT="mma", SPLIT_BLOCKS=132, MMA_MIN_SPLIT_KEYS=1024, COMBINE="atomic",
                       PREFILL="wgmma", WGMMA_GROUPS=2, SHARE_KV=True, MIN_SPLIT_KEYS=128, UNROLL=8),  # on the H200
    "wgmma-prefill": dict(THREADS=256, DOT="mma", SPLIT_BLOCKS=132, MMA_MIN_SPLIT_KEYS=1024, COMBINE="atomic",
                          PREFILL="wgmma"),
    "wgmma-prefill-pipe": dict(THREADS=256, DOT="mma", SPLIT_BLOCKS=132, MMA_MIN_SPLIT_KEYS=1024, COMBINE="atomic",
                               PREFILL="wgmma", WGMMA_GROUPS=2, WGMMA_PIPELINE=True),
    "scalar-lanes": dict(THREADS=32, KEY_LANES=1, VEC=1, SHARE_KV=True, ONLINE_SOFTMAX=True, UNROLL=1,
                         SPLIT_BLOCKS=132, MIN_SPLIT_KEYS=256, COMBINE="kernel"),
}

GPU_SHAPES = [  # (name, batch, Hq, Hkv, Lq, Lk, D, dtype, causal, cache capacity for a strided view)
    ("decode-40:8-1000", 1, 40, 8, 1, 1000, 128, "float16", True, 0),
    ("decode-40:8-8191", 1, 40, 8, 1, 8191, 128, "float16", True, 0),
    ("decode-16:8-777-b2-bf16", 2, 16, 8, 1, 777, 128, "bfloat16", True, 0),
    ("decode-8:2-d64-fp32", 1, 8, 2, 1, 1023, 64, "float32", True, 0),
    ("decode-40:8-3000-view", 1, 40, 8, 1, 3000, 128, "float16", True, 3072),
    ("decode-40:8-5", 1, 40, 8, 1, 5, 128, "float16", True, 0),
    ("decode-24:2-d64-333", 1, 24, 2, 1, 333, 64, "float16", True, 0),  # 12 heads a group: rows 8-15 too
    ("decode-16:1-4099-b2-bf16", 2, 16, 1, 1, 4099, 128, "bfloat16", False, 0),
    ("prefill-40:8-37-after-63", 1, 40, 8, 37, 100, 128, "float16", True, 0),
    ("prefill-16:8-130-bf16", 2, 16, 8, 130, 130, 128, "bfloat16", True, 0),
    ("prefill-16:8-77-noncausal", 1, 16, 8, 77, 77, 128, "float16", False, 0),
    ("prefill-8:2-64-fp32-d64", 1, 8, 2, 64, 64, 64, "float32", True, 0),
    ("prefill-8:2-d64-200-after-50", 1, 8, 2, 200, 250, 64, "float16", True, 0),
    ("prefill-40:8-700-after-300", 1, 40, 8, 700, 1000, 128, "float16", True, 0),  # warps skip half tiles
]


def _inputs(batch, hq, hkv, lq, lk, d, dtype, capacity, seed, transposed_queries=False):
    kq, kk, kv = mx.random.split(mx.random.key(seed), 3)
    dt = getattr(mx, dtype)
    length = max(capacity, lk)
    if transposed_queries:  # as a model hands them over: (B, L, H, D) transposed to (B, H, L, D)
        q = (2.0 * mx.random.normal((batch, lq, hq, d), key=kq)).astype(dt).transpose(0, 2, 1, 3)
    else:
        q = (2.0 * mx.random.normal((batch, hq, lq, d), key=kq)).astype(dt)
    k = mx.random.normal((batch, hkv, length, d), key=kk).astype(dt)
    v = mx.random.normal((batch, hkv, length, d), key=kv).astype(dt)
    if length > lk:
        k, v = k[:, :, :lk, :], v[:, :, :lk, :]
    return q, k, v


def _assert_close(got, q, k, v, scale, causal, dtype, what):
    import numpy as np

    from evaluators.gqa.correctness import TOLERANCES
    from evaluators.gqa.reference import gqa_reference

    assert got.shape == q.shape and got.dtype == q.dtype, what
    with mx.stream(mx.cpu):  # on the GPU, MLX's float32 matmuls may run as TF32 (errors ~1e-3)
        want = np.array(gqa_reference(q, k, v, scale, causal))
    have = np.array(got.astype(mx.float32))
    assert np.isfinite(have).all(), f"{what}: non-finite outputs"
    err = np.abs(have - want) - TOLERANCES[dtype].allowed(want)  # the evaluator's own tolerances
    assert (err <= 0).all(), f"{what}: {(err > 0).sum()} outputs off, worst abs error {np.abs(have - want).max():.3e}"


@pytest.fixture
def cuda_module():
    if not _cuda_available():
        pytest.skip("needs an NVIDIA GPU and mlx[cuda13] (mx.cuda.is_available())")
    return _load(CUDA_EXAMPLE)


@pytest.mark.cuda
@pytest.mark.parametrize("setting", list(CUDA_SETTINGS))
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=[s[0] for s in GPU_SHAPES])
def test_cuda_kernel_matches_the_reference(cuda_module, setting, shape):
    for name, value in CUDA_SETTINGS[setting].items():
        setattr(cuda_module, name, value)
    label, batch, hq, hkv, lq, lk, d, dtype, causal, capacity = shape
    for seed in (1, 2):
        q, k, v = _inputs(batch, hq, hkv, lq, lk, d, dtype, capacity, seed, transposed_queries=seed == 2)
        out = cuda_module.gqa_attention(q, k, v, d ** -0.5, causal)
        mx.eval(out)
        _assert_close(out, q, k, v, d ** -0.5, causal, dtype, f"{setting} {label} seed {seed}")


@pytest.mark.cuda
@pytest.mark.parametrize("combine", ["atomic", "kernel"])
def test_cuda_many_calls_in_one_graph_and_reused_counters_stay_right(cuda_module, combine):
    """50 independent calls evaluated together (MLX may run them concurrently), repeated past the
    point where the atomic merge's counters come round again."""
    for name, value in {**CUDA_SETTINGS["fast"], "COMBINE": combine}.items():
        setattr(cuda_module, name, value)
    sets = [_inputs(1, 40, 8, 1, 700 + i, 128, "float16", 0, 100 + i) for i in range(50)]
    for _ in range(25):  # 1250 calls: past the 1024 calls after which a counter slice is reused
        outs = [cuda_module.gqa_attention(q, k, v, 128 ** -0.5, True) for q, k, v in sets]
        mx.eval(outs)
    for (q, k, v), out in zip(sets, outs):
        _assert_close(out, q, k, v, 128 ** -0.5, True, "float16", f"{combine} call on {k.shape[2]} keys")


@pytest.mark.cuda
def test_cuda_kernel_really_runs(cuda_module):
    """Not MLX's own attention under another name: its output is not bit-identical to MLX's, and
    it changes with the inputs."""
    for name, value in CUDA_SETTINGS["fast"].items():
        setattr(cuda_module, name, value)
    q, k, v = _inputs(1, 40, 8, 1, 4000, 128, "float16", 0, 7)
    ours = cuda_module.gqa_attention(q, k, v, 128 ** -0.5, True)
    theirs = mx.fast.scaled_dot_product_attention(q, k, v, scale=128 ** -0.5)
    assert not mx.array_equal(ours, theirs).item()
    q2 = q + 0.5
    assert not mx.array_equal(ours, cuda_module.gqa_attention(q2, k, v, 128 ** -0.5, True)).item()


@pytest.mark.metal
@pytest.mark.parametrize("setting", ["initial", "fast"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=[s[0] for s in GPU_SHAPES])
def test_metal_kernel_matches_the_reference(setting, shape):
    if not _metal_available():
        pytest.skip("needs Apple silicon (mx.metal.is_available())")
    module = _load(METAL_EXAMPLE)
    if setting == "fast":
        for name, value in dict(THREADS=256, KEY_LANES=32, VEC=4, SHARE_KV=True, ONLINE_SOFTMAX=True, UNROLL=2,
                                SPLIT_BLOCKS=256, MIN_SPLIT_KEYS=128).items():
            setattr(module, name, value)
    label, batch, hq, hkv, lq, lk, d, dtype, causal, capacity = shape
    q, k, v = _inputs(batch, hq, hkv, lq, lk, d, dtype, capacity, 3)
    out = module.gqa_attention(q, k, v, d ** -0.5, causal)
    mx.eval(out)
    _assert_close(out, q, k, v, d ** -0.5, causal, dtype, f"metal {setting} {label}")
