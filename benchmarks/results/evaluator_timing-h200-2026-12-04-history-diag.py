"""Short decode on the H200: which history makes MLX's decode-128 take 70 us instead of 38 (issue #15)."""
import json, os, subprocess, sys, time
from pathlib import Path
R = Path.cwd(); OUT = Path(os.environ["OUT"])
ALL = "prefill-16,prefill-37-b4,prefill-64-fp32,prefill-61-after-450,prefill-512,prefill-1000-b2,prefill-2048,prefill-4000,prefill-777-noncausal,decode-128,decode-129-b8,decode-1000,decode-1023-fp32,decode-2049-b4,decode-4095,decode-8191-b2,decode-16384,decode-16383-bf16,decode-32768,decode-32767-b2,decode-8191-b16-memory"
FIRST = "decode-128,decode-129-b8," + ",".join(s for s in ALL.split(",") if s not in ("decode-128", "decode-129-b8"))
runs = [("new", "decode-128,decode-129-b8"), ("old", "decode-128,decode-129-b8"), ("new", FIRST), ("new", ALL), ("old", ALL),
        ("new", "decode-128,decode-129-b8"), ("old", "decode-128,decode-129-b8"), ("new", ALL), ("new", FIRST), ("old", ALL)]
if os.environ.get("DIAG_SPIN"):
    runs = [("new", ALL, "0"), ("new", ALL, "1"), ("new", ALL, "1"), ("new", ALL, "0"), ("new", ALL, "0"), ("new", ALL, "1")]
else:
    runs = [(m, sc, "0") for m, sc in runs]
log = []
for i, (method, sc, spin) in enumerate(runs):
    os.environ["GQA_SPIN_WAIT"] = spin
    root = R / ".before" if method == "old" else R
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    t0 = time.time()
    p = subprocess.run([sys.executable, str(root / "hooks/gqa_mlx.py"), "--backend", "cuda", "--scenarios", sc,
                        "--timeout", "190", "--file", str(R / ".before/pick.py")], cwd=R / ".before", env=env,
                       capture_output=True, text=True)
    t1 = time.time()
    try:
        res = json.loads(p.stdout.strip().splitlines()[-1])
    except Exception:
        res = {"status": "unparsed", "stderr": p.stderr[-2000:]}
    m = res.get("metrics", {})
    kind = "pair" if len(sc) < 40 else ("first" if sc == FIRST else "all")
    row = {"i": i, "spin": spin, "method": method, "set": kind, "t0": t0, "t1": t1, "status": res.get("status"),
           "reason": res.get("reason"),
           "figures": {n: [m.get(f"candidate_us.{n}"), m.get(f"baseline_us.{n}"), m.get(f"clean_baseline_us.{n}")]
                       for n in ("decode-128", "decode-129-b8", "decode-1000", "prefill-16")},
           "timings": res.get("artifacts", {}).get("timings", ""), "steps": m.get("step_seconds")}
    log.append(row)
    print(i, "spin", spin, method, row["set"], res.get("status"), f"{t1 - t0:.1f}s", json.dumps(row["figures"]), flush=True)
    (OUT / os.environ.get("DIAG_NAME", "diag7.json")).write_text(json.dumps(log, indent=1))
