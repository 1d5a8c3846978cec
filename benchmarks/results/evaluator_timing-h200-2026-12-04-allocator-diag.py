"""MLX's decode in the baseline's process: does the allocator's state after a prefill scenario slow it?"""
import json, os, statistics, sys
from pathlib import Path
sys.path.insert(0, ".")
import mlx.core as mx
from evaluators.gqa import timing
from evaluators.gqa.baseline import attention
from evaluators.gqa.shapes import select
OUT = Path(os.environ.get("OUT", "/tmp")); res = {}
def series(name, scenario, n, reps=12):
    s = select(scenario)[0]; b = timing.Blocks(s); per = []
    for r in range(reps):
        cmd = {"seeds": [1000 * r + i for i in range(n)], "kv": [1 + (r * n + i) % 2 for i in range(n)]}
        t, out = timing.run(attention, b.inputs(cmd), lambda m: None); timing.digest(out); per.append(t / n * 1e6)
    res[name] = per; print(f"{name:40} median {statistics.median(per):6.1f} min {min(per):6.1f}", flush=True)
for k in range(2):
    series(f"decode-129-b8 fresh #{k}", "decode-129-b8", 300)
    series(f"decode-128 fresh #{k}", "decode-128", 300)
series("prefill-2048 n100", "prefill-2048", 100, 6)
for k in range(2):
    series(f"decode-129-b8 after prefill #{k}", "decode-129-b8", 300)
    series(f"decode-128 after prefill #{k}", "decode-128", 300)
print("cache bytes", mx.get_cache_memory() if hasattr(mx, "get_cache_memory") else None)
mx.clear_cache()
for k in range(2):
    series(f"decode-129-b8 after clear_cache #{k}", "decode-129-b8", 300)
    series(f"decode-128 after clear_cache #{k}", "decode-128", 300)
json.dump(res, open(OUT / "diag5.json", "w"))
