"""What the NVRTC compile cache saves a CUDA candidate's evaluation, measured with the real hook.

    python benchmarks/compile_cache.py [--scenarios decode-1000,prefill-2048] [--repeats 2]
        [--change UNROLL=2] [--json PATH]

For each repeat, with a fresh cache directory, the hook (`hooks/gqa_mlx.py --backend cuda`)
evaluates examples/gqa-cuda/attention.py four times in this order:

- off: `--compile-cache off`, every kernel compiled as before the cache;
- cold: the cache on, empty: every kernel compiled and written;
- warm: the same program again: every kernel from the cache;
- neighbour: the program with one tunable changed (--change): what a search's next candidate
  pays, the kernels it shares with the first from the cache, the changed ones compiled.

Per evaluation: the hook's wall time, its status and score, the cache's hits, misses and the
compile seconds it saved (the hook's `compile_cache_*` metrics, counted in the candidate's
process), and the time of the correctness steps, where the compiles happen. Then the median ratio
of warm and neighbour times to off's. Every evaluation has to pass the hook's correctness checks
with the cached kernels, or the record says which did not. Needs an NVIDIA GPU and mlx[cuda13].
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLE = ROOT / "examples" / "gqa-cuda" / "attention.py"
HOOK = ROOT / "hooks" / "gqa_mlx.py"


def changed(text: str, change: str) -> str:
    name, value = change.split("=", 1)
    edited, n = re.subn(rf"^{name} = [^#\n]+?(\s+# gitevolve:)", rf"{name} = {value}\1", text, flags=re.M)
    if n != 1:
        raise SystemExit(f"--change {change}: no tunable {name} in {EXAMPLE}")
    return edited


def evaluate(workdir: Path, scenarios: str, cache: str, timeout: float) -> dict:
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(HOOK), "--file", "attention.py", "--backend", "cuda",
                           "--scenarios", scenarios, "--compile-cache", cache, "--timeout", str(timeout - 20)],
                          cwd=workdir, capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - started
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    try:
        report = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        report = {"status": "garbled", "reason": (done.stderr or done.stdout)[-500:]}
    metrics = report.get("metrics", {})
    steps = dict(re.findall(r"([\w.\-]+) ([0-9.]+)", metrics.get("step_seconds", "")))
    return {"seconds": round(seconds, 2), "status": report.get("status"), "score": report.get("score"),
            "reason": report.get("reason"),
            "correctness_seconds": round(sum(float(v) for k, v in steps.items() if k.startswith("correctness")), 2),
            **{k: metrics.get(k) for k in ("compile_cache", "compile_cache_hits", "compile_cache_misses",
                                           "compile_cache_saved_seconds", "compile_cache_write_errors", "all_correct")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="decode-1000,prefill-2048", help="the hook's --scenarios")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--change", default="UNROLL=2", help="the neighbour's one changed tunable, NAME=VALUE")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", type=Path, default=None, help="where the record goes (default: print only)")
    args = parser.parse_args()

    text = EXAMPLE.read_text()
    rows, record = [], {"args": {k: str(v) for k, v in vars(args).items()}, "evaluations": []}
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="gqa-compile-cache-") as tmp:
            base, neighbour, cache = Path(tmp) / "base", Path(tmp) / "neighbour", Path(tmp) / "cache"
            for path, program in ((base, text), (neighbour, changed(text, args.change))):
                path.mkdir()
                (path / "attention.py").write_text(program)
            for mode, where, setting in (("off", base, "off"), ("cold", base, str(cache)),
                                         ("warm", base, str(cache)), ("neighbour", neighbour, str(cache))):
                result = {"repeat": repeat, "mode": mode, **evaluate(where, args.scenarios, setting, args.timeout)}
                record["evaluations"].append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
                rows.append([repeat, mode, result["seconds"], result["correctness_seconds"], result["status"],
                             result["score"], result["compile_cache_hits"], result["compile_cache_misses"],
                             result["compile_cache_saved_seconds"]])
            shutil.rmtree(cache, ignore_errors=True)
    print(tabulate(rows, headers=["repeat", "mode", "hook s", "correctness s", "status", "score", "hits", "misses",
                                  "saved s"]))
    by = {m: [e["seconds"] for e in record["evaluations"] if e["mode"] == m] for m in ("off", "cold", "warm", "neighbour")}
    summary = {f"{m}_over_off": round(statistics.median(a / b for a, b in zip(by[m], by["off"])), 3)
               for m in ("cold", "warm", "neighbour")}
    summary["not_ok"] = [f"{e['mode']} #{e['repeat']}: {e['status']} {e['reason']}" for e in record["evaluations"]
                         if e["status"] != "ok"]
    record["summary"] = summary
    print(f"\nmedian hook time over off's: cold {summary['cold_over_off']}, warm {summary['warm_over_off']}, "
          f"neighbour {summary['neighbour_over_off']}; not ok: {summary['not_ok'] or 'none'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
