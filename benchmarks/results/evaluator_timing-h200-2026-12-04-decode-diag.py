"""MLX's decode-128 in the baseline's process: alone, beside an idle CUDA process, beside a stopped one."""
import os, signal, statistics, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, ".")
from evaluators.gqa import race
from evaluators.gqa.referee import Endpoint
from evaluators.gqa.supervise import start, collect
with tempfile.TemporaryDirectory() as tmp:
    r = start([sys.executable, "hooks/gqa_mlx.py", "--baseline", "--backend", "cuda", "--scenarios", "decode-128,prefill-16"], Path(tmp) / "b", channel=True)
    e = Endpoint(r, time.monotonic() + 200, "baseline")
    e.receive("hello"); e.send({"op": "measure"}); e.receive("ready")
    def m(label):
        for name in ("decode-128", "prefill-16"):
            c = race.clean(e, name, 1)
            seeds = race.Seeds(name)
            per = [e.block(seeds.block(c.calls)).per_call * 1e6 for _ in range(10)]
            print(f"{label:28} {name:12} calls {c.calls} median {statistics.median(per):6.1f} min {min(per):6.1f}", flush=True)
    m("alone")
    other = subprocess.Popen([sys.executable, "-c", "import mlx.core as mx, time; x = mx.ones(1000); mx.eval(x + 1); print('up', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    other.stdout.readline()
    m("beside an idle CUDA process")
    os.kill(other.pid, signal.SIGSTOP); time.sleep(0.05)
    m("beside it stopped")
    os.kill(other.pid, signal.SIGCONT); time.sleep(0.05)
    m("beside it resumed")
    other.kill()
    m("alone again")
    e.send({"op": "quit"}); collect(r, 5)
