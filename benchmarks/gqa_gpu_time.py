"""Where one attention call's time goes, for a GQA candidate and MLX's attention, read from CUPTI.

    python benchmarks/gqa_gpu_time.py --kernel examples/gqa-cuda/attention.py --settings-from sweep.json
    python benchmarks/gqa_gpu_time.py --kernel K --set THREADS=256 --scenarios decode-40:8-8192,prefill-40:8-2048
    python benchmarks/gqa_gpu_time.py --kernel K --set PREFILL=mma --variant wgmma:PREFILL=\"wgmma\"

Each contender makes CALLS calls of each scenario, one call and then mx.eval at a time, on rotating
inputs. The contenders (the candidate, each --variant of it, MLX) alternate in A B C C B A order. The calls run under PyTorch's profiler, which
reads the GPU's own activity records (CUPTI) for every kernel in the process, MLX's included. For
each it prints medians in microseconds:

  gpu        the call's first kernel start to its last kernel end: its GPU time at real clocks
  build      the Python call that builds the graph, before mx.eval
  to launch  mx.eval's start to the CUDA graph launch
  to kernel  mx.eval's start to the first kernel's start
  after      the last kernel's end to mx.eval's return (MLX's completion callback and event)

A call as a user sees it is build + to kernel + gpu + after. The profiler slows the host side's CUDA
calls, so the host figures are upper bounds; the GPU times are the kernels' own. Needs PyTorch with
CUDA on the machine whose GPU MLX uses. gqa_kernels.py gives the per-call and amortised times
without a profiler.
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import gqa_kernels as bench  # noqa: E402

DEFAULT_SCENARIOS = "decode-40:8-8192,decode-40:8-32768,prefill-40:8-2048"
PARTS = ("gpu", "build", "to launch", "to kernel", "after")


def anatomy(events: list[dict]) -> dict[str, dict[str, float]]:
    """Medians per "scenario|contender" from a Chrome trace's events, whose calls were marked with
    ranges named "scenario|contender|build" and "scenario|contender|eval"."""
    spans = [e for e in events if e.get("ph") == "X"]
    kernels = sorted((e for e in spans if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    starts = [k["ts"] for k in kernels]
    launches = sorted(e["ts"] for e in spans if e.get("cat") == "cuda_runtime" and e["name"] == "cudaGraphLaunch")
    parts: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for mark in spans:
        if mark.get("cat") != "user_annotation" or mark["name"].count("|") != 2:
            continue
        who, _, part = mark["name"].rpartition("|")
        begin, end = mark["ts"], mark["ts"] + mark["dur"]
        if part == "build":
            parts[who]["build"].append(mark["dur"])
            continue
        inside = kernels[bisect.bisect_left(starts, begin):bisect.bisect_right(starts, end)]
        if not inside:  # nothing ran on the GPU (a cached or empty call): no anatomy to read
            continue
        last_end = max(k["ts"] + k["dur"] for k in inside)
        parts[who]["gpu"].append(last_end - inside[0]["ts"])
        parts[who]["to kernel"].append(inside[0]["ts"] - begin)
        parts[who]["after"].append(end - last_end)
        at = bisect.bisect_left(launches, begin)
        if at < len(launches) and launches[at] <= end:
            parts[who]["to launch"].append(launches[at] - begin)
    return {who: {p: round(statistics.median(v), 1) for p, v in got.items()} | {"calls": len(got["gpu"])}
            for who, got in parts.items()}


def parse_variants(items: list[str]) -> dict[str, dict]:
    """--variant LABEL:NAME=VALUE[,NAME=VALUE...] arguments as {label: settings}."""
    out = {}
    for item in items:
        label, sep, sets = item.partition(":")
        label = label.strip()
        if not sep or not label or not sets.strip():
            raise SystemExit(f"--variant {item!r}: write it as LABEL:NAME=VALUE[,NAME=VALUE...]")
        if label in out or label in ("candidate", "mlx"):
            raise SystemExit(f"--variant {item!r}: the label {label!r} is taken; give each variant its own")
        out[label] = bench.parse_set(sets.split(","))
    return out


def profile_calls(contenders: dict, scenarios: list, calls: int) -> list[dict]:
    """Run the calls under torch.profiler; the trace's events."""
    import mlx.core as mx
    from torch.profiler import ProfilerActivity, profile, record_function

    inputs = {s.name: [bench.mlx_inputs(s) for _ in range(4)] for s in scenarios}

    def run(calls_each: int, marked: bool) -> None:
        order = list(contenders)
        for rnd in range(2):
            for name in order if rnd == 0 else order[::-1]:
                for s in scenarios:
                    fn, scale = contenders[name], s.head_dim ** -0.5
                    for i in range(calls_each):
                        q, k, v = inputs[s.name][i % 4]
                        if not marked:
                            mx.eval(fn(q, k, v, scale, s.causal))
                            continue
                        with record_function(f"{s.name}|{name}|build"):
                            out = fn(q, k, v, scale, s.causal)
                        with record_function(f"{s.name}|{name}|eval"):
                            mx.eval(out)

    run(3, marked=False)  # compiles, plans, allocator caches
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run(max(1, calls // 2), marked=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        return json.loads(path.read_text())["traceEvents"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_candidate_arguments(p)
    p.add_argument("--scenarios", default=DEFAULT_SCENARIOS,
                   help="a gqa_kernels.py scenario set (full, quick, short, cpu) or comma-separated scenario names")
    p.add_argument("--calls", type=int, default=24, help="calls per contender and scenario")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:NAME=VALUE[,NAME=VALUE]",
                   help="also time the candidate with these tunables changed (on top of --set), as LABEL")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    variants = parse_variants(args.variant)

    if bench.torch is None:
        raise SystemExit("gqa_gpu_time.py needs PyTorch with CUDA: its profiler reads the kernels' times from CUPTI")
    scenarios = bench.scenarios_named(args.scenarios)
    module, where = bench.candidate_from_arguments(args)
    contenders = {"candidate": module.gqa_attention}
    for label, settings in variants.items():
        variant, _ = bench.candidate_from_arguments(args)  # an instance of its own: plans are per module
        bench.apply_settings(variant, settings)
        contenders[label] = variant.gqa_attention
    contenders["mlx"] = bench.baseline_fn

    found = anatomy(profile_calls(contenders, scenarios, args.calls))
    rows = [[s.name, who] + [found.get(f"{s.name}|{who}", {}).get(part, "-") for part in PARTS]
            for s in scenarios for who in contenders]
    print(f"candidate: {where}   settings: {json.dumps(bench.current_settings(module))}")
    print(tabulate(rows, headers=["scenario", "contender", *PARTS]))
    print("\nmedians in microseconds; host-side figures include the profiler's own overhead")
    if args.json:
        Path(args.json).write_text(json.dumps({"kernel": where, "settings": bench.current_settings(module),
                                               "variants": variants, "versions": bench.versions(),
                                               "anatomy_us": found}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
