"""Why MLX's attention is slow on prefill-2048 in the baseline's own process (H200)."""
import json, os, statistics, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, ".")
import mlx.core as mx
import numpy as np
from evaluators.gqa import timing, race
from evaluators.gqa.baseline import attention
from evaluators.gqa.shapes import select

OUT = Path(os.environ.get("OUT", "/tmp"))
res = {}

def series(name, scenario, n, reps, dig):
    s = select(scenario)[0]
    b = timing.Blocks(s); per = []
    for r in range(reps):
        cmd = {"seeds": [1000 * r + i for i in range(n)], "kv": [1 + (r * n + i) % 2 for i in range(n)]}
        t, out = timing.run(attention, b.inputs(cmd), lambda m: None)
        if dig == "np":
            timing.digest(out)
        elif dig == "sync":
            mx.eval(out.reshape(-1)[0])
        per.append(t / n * 1e6)
    res[name] = {"median": statistics.median(per), "min": min(per), "first": per[:4], "last": per[-4:]}
    print(name, f"median {statistics.median(per):.1f} min {min(per):.1f}", [round(x) for x in per[:6]], flush=True)

for trial in range(2):
    series(f"p2048 n12 no-digest #{trial}", "prefill-2048", 12, 20, None)
    series(f"p2048 n12 digest #{trial}", "prefill-2048", 12, 20, "np")
    series(f"p2048 n12 read-one #{trial}", "prefill-2048", 12, 20, "sync")
series("p2048 n48 digest", "prefill-2048", 48, 10, "np")
series("p2048 n48 no-digest", "prefill-2048", 48, 10, None)
series("d32768 n150 digest", "decode-32768", 150, 10, "np")
series("d32768 n150 no-digest", "decode-32768", 150, 10, None)

# The real baseline process, alone, through the supervisor's machinery.
from evaluators.gqa.referee import Endpoint
from evaluators.gqa.supervise import start, collect
def proc_series(name, calls, reps, before=None):
    with tempfile.TemporaryDirectory() as tmp:
        r = start([sys.executable, "hooks/gqa_mlx.py", "--baseline", "--backend", "cuda", "--scenarios", "prefill-2048,decode-32768"],
                  Path(tmp) / "b", channel=True)
        e = Endpoint(r, time.monotonic() + 120, "baseline")
        e.receive("hello"); e.send({"op": "measure"}); e.receive("ready")
        if before:
            before(e)
        seeds = race.Seeds("prefill-2048")
        c = race.clean(e, "prefill-2048", select("prefill-2048")[0].query_bytes)
        blocks = [e.block(seeds.block(calls or c.calls)) for _ in range(reps)]
        e.send({"op": "quit"}); collect(r, 5)
    parent = [b.per_call * 1e6 for b in blocks]; child = [b.child / b.calls * 1e6 for b in blocks]
    res[name] = {"clean_calls": c.calls, "clean_fastest": c.baseline.fastest_us, "handshake_us": c.handshake * 1e6,
                 "parent_median": statistics.median(parent), "child_median": statistics.median(child), "parent": parent[:6]}
    print(name, json.dumps(res[name]), flush=True)

proc_series("process n=clean", None, 20)
proc_series("process n=48", 48, 10)
json.dump(res, open(OUT / "diag3.json", "w"), indent=1)
