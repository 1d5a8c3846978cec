"""decode-128 in the baseline's process: back-to-back blocks, blocks with 20 ms idle gaps, and the same with the process spinning between blocks."""
import json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, ".")
from evaluators.gqa import race
from evaluators.gqa.referee import Endpoint
from evaluators.gqa.supervise import start, collect
OUT = Path(os.environ["OUT"]); res = {}
for spin in ("0", "1"):
    os.environ["GQA_SPIN_WAIT"] = spin
    with tempfile.TemporaryDirectory() as tmp:
        r = start([sys.executable, "hooks/gqa_mlx.py", "--baseline", "--backend", "cuda", "--scenarios", "decode-128,decode-129-b8"], Path(tmp) / "b", channel=True)
        e = Endpoint(r, time.monotonic() + 200, "baseline")
        e.receive("hello"); e.send({"op": "measure"}); e.receive("ready")
        for gap in (0, 0.02, 0, 0.02, 0.005):
            for name in ("decode-128", "decode-129-b8"):
                c = race.clean(e, name, 1)
                seeds = race.Seeds(name); per = []
                for _ in range(20):
                    per.append(e.block(seeds.block(c.calls)).per_call * 1e6)
                    if gap: time.sleep(gap)
                key = f"spin={spin} gap={gap * 1e3:.0f}ms {name}"
                res.setdefault(key, []).append(per)
                print(f"{key:34} calls {c.calls} median {statistics.median(per):6.1f} min {min(per):6.1f} max {max(per):6.1f}", flush=True)
        e.send({"op": "quit"}); collect(r, 5)
(OUT / "diag8.json").write_text(json.dumps(res))
