import sys, time, statistics
sys.path.insert(0, ".")
import mlx.core as mx
from evaluators.gqa import timing, bandwidth
from evaluators.gqa.baseline import attention
from evaluators.gqa.shapes import select
from evaluators.gqa.correctness import make_inputs
s = select("prefill-2048")[0]
print(s.describe())
def blocks(kv, n=12, reps=5):
    b = timing.Blocks(s); out = []
    for r in range(reps):
        cmd = {"seeds": [1000 * r + i for i in range(n)], "kv": [kv[i % len(kv)] for i in range(n)]}
        t, _ = timing.run(attention, b.inputs(cmd), lambda m: None)
        out.append(t / n * 1e6)
    return f"{statistics.median(out):.1f}"
def percall(reps=24):
    x = make_inputs(s, 5, 7); mx.eval(attention(*x.args())); ts = []
    for i in range(reps):
        y = make_inputs(s, 100 + i, 7)
        t = time.perf_counter(); mx.eval(attention(*y.args())); ts.append(time.perf_counter() - t)
    return f"{statistics.median(ts) * 1e6:.1f}"
print("per-call, old style", percall())
print("blocks, two kv sets", blocks([1, 2]), "one kv set", blocks([1]))
bandwidth.measure()
print("after bandwidth.measure: blocks two kv", blocks([3, 4]), "per-call", percall())
print("blocks of 1", blocks([5, 6], n=1, reps=12), "blocks of 4", blocks([5, 6], n=4))
