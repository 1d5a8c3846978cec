"""Short decode and prefill: the supervised hook with the timing processes pinned or not, against the old hook."""
import json, os, subprocess, sys, time
from pathlib import Path
OUT = Path(os.environ.get("OUT", "/tmp"))
S = "prefill-16,prefill-2048,decode-128,decode-129-b8,decode-1000,decode-32768"
ARGS = ["--backend", "cuda", "--scenarios", S, "--file", str(Path(".before/pick.py").resolve()), "--timeout", "120"]
PIN = ("import sys; from evaluators.gqa import referee; referee.timing_cpus = lambda b: frozenset([CPUS]);"
       "import runpy; sys.argv = ['hooks/gqa_mlx.py'] + sys.argv[1:]; runpy.run_path('hooks/gqa_mlx.py', run_name='__main__')")
def hook(variant):
    env = dict(os.environ)
    if variant == "old":
        env["PYTHONPATH"] = str(Path(".before").resolve()) + ":" + env.get("PYTHONPATH", "")
        cmd = [sys.executable, ".before/hooks/gqa_mlx.py", *ARGS]
    elif variant.startswith("pin"):
        cmd = [sys.executable, "-c", PIN.replace("CPUS", variant[3:].replace("_", ",")), *ARGS]
    else:
        cmd = [sys.executable, "hooks/gqa_mlx.py", *ARGS]
    t = time.time(); done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    r = json.loads([l for l in done.stdout.splitlines() if l.strip()][-1])
    m = r.get("metrics", {})
    row = {n: (m.get(f"candidate_us.{n}"), m.get(f"baseline_us.{n}"), m.get(f"speedup.{n}")) for n in S.split(",")}
    print(variant, r.get("status"), round(time.time() - t, 1), json.dumps(row), flush=True)
    if r.get("status") != "ok": print(r.get("reason"), done.stderr[-2000:])
    return {"variant": variant, "result": r}
runs = []
for order in (["new", "pin2", "pin2_3", "old"], ["old", "pin2_3", "pin2", "new"]):
    for v in order:
        runs.append(hook(v))
json.dump(runs, open(OUT / "diag4.json", "w"))
