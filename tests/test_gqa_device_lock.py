"""The device lock that lets several evaluations share one GPU (evaluators/gqa/device_lock.py):
real flock(2) locks held by real processes, and the real hook waiting its turn."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

from evaluators.gqa.device_lock import Busy, DeviceLock

HOLDER = """
import sys, time
from pathlib import Path
from evaluators.gqa.device_lock import DeviceLock
lock = DeviceLock(Path(sys.argv[1]))
getattr(lock, sys.argv[2])(time.monotonic() + 60)
print("held", flush=True)
sys.stdin.readline()
"""


def holder(path: Path, mode: str) -> subprocess.Popen:
    """A process holding the lock in `mode` until its stdin gets a line (or it is killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc


def held(proc: subprocess.Popen) -> None:
    assert proc.stdout.readline().strip() == "held"


def release(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0


def until_taken(path: Path, what: str = "") -> None:
    """Wait until some process holds the file's lock (a waiting writer holds the turnstile)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        for _ in range(3000):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                return
            time.sleep(0.01)
        pytest.fail(f"nobody took {path} {what}")
    finally:
        os.close(fd)


def now() -> float:
    return time.monotonic()


def test_shared_holders_share_and_an_exclusive_one_waits_for_them(tmp_path):
    path = tmp_path / "gpu.lock"
    first = holder(path, "shared")
    held(first)
    mine = DeviceLock(path)
    mine.shared(now())  # a second checker comes in at once
    mine.release()
    with pytest.raises(Busy, match="held the device"):
        mine.exclusive(now())
    release(first)
    mine.exclusive(now())
    with pytest.raises(Busy):
        DeviceLock(path).shared(now())
    mine.close()


def test_a_waiting_racer_keeps_new_checkers_out_until_it_has_raced(tmp_path):
    path = tmp_path / "gpu.lock"
    checker = holder(path, "shared")
    held(checker)
    racer = holder(path, "exclusive")
    until_taken(Path(f"{path}.turn"), "(the racer waiting for its turn)")
    late = DeviceLock(path)
    with pytest.raises(Busy):  # the racer is first in line: a stream of checks cannot starve it
        late.shared(now())
    release(checker)
    held(racer)
    with pytest.raises(Busy):
        late.shared(now())
    release(racer)
    late.shared(now())
    late.close()


def test_a_holder_that_dies_lets_go(tmp_path):
    path = tmp_path / "gpu.lock"
    proc = holder(path, "exclusive")
    held(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    lock = DeviceLock(path)
    lock.exclusive(now())
    lock.close()


# --- the hook -------------------------------------------------------------------------------------

pytest.importorskip("mlx.core")
HOOK = ROOT / "hooks" / "gqa_mlx.py"
PROGRAM = ROOT / "examples" / "gqa-mlx" / "attention.py"


def start_hook(path: Path, tmp_path: Path) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "GITEVOLVE_"))}
    return subprocess.Popen([sys.executable, str(HOOK), "--backend", "cpu", "--scenarios", "prefill-37",
                             "--seconds", "0.1", "--timeout", "120", "--file", str(PROGRAM)], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**environ, "GQA_DEVICE_LOCK": str(path)})


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    return json.loads([line for line in out.splitlines() if line.strip()][-1])


def descendants(pid: int) -> list[int]:
    from evaluators.gqa.referee import _children

    children, found, todo = _children(), [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def stopped_candidate(hook: subprocess.Popen) -> None:
    """Wait until the hook's candidate process is stopped (state T)."""
    for _ in range(6000):
        for pid in descendants(hook.pid):
            try:
                if "--child" in Path(f"/proc/{pid}/cmdline").read_text().split("\0") and state(pid) == "T":
                    return
            except OSError:
                continue
        time.sleep(0.01)
    pytest.fail("the hook's candidate process was never stopped")


def taken(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads processes' states from /proc")
def test_the_hook_checks_beside_another_evaluation_but_races_alone_with_its_candidate_stopped(tmp_path):
    path = tmp_path / "gpu.lock"
    other = holder(path, "shared")  # another evaluation, loading and checking its candidate
    held(other)
    hook = start_hook(path, tmp_path)
    # It loads and checks beside the other evaluation, then waits for the device with its
    # candidate stopped, first in line.
    stopped_candidate(hook)
    assert taken(Path(f"{path}.turn"))
    release(other)
    got = result(hook)
    assert got["status"] == "ok", got
    assert got["metrics"]["device_wait_seconds"] > 0


def test_the_hook_waits_for_a_race_in_progress_and_says_so_if_it_never_ends(tmp_path):
    path = tmp_path / "gpu.lock"
    racing = holder(path, "exclusive")
    held(racing)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "GITEVOLVE_"))}
    done = subprocess.run([sys.executable, str(HOOK), "--backend", "cpu", "--scenarios", "prefill-37",
                           "--timeout", "1", "--file", str(PROGRAM)], cwd=tmp_path, capture_output=True, text=True,
                          env={**environ, "GQA_DEVICE_LOCK": str(path)}, timeout=120)
    got = json.loads([line for line in done.stdout.splitlines() if line.strip()][-1])
    assert got["status"] == "transient" and got["metrics"]["failure_kind"] == "device_unavailable", got
    assert "held the device" in got["reason"] and "\n" not in got["reason"]
    hook = start_hook(path, tmp_path)
    until_taken(Path(f"{path}.turn"), "(the hook waiting for the race to end)")
    release(racing)
    assert result(hook)["status"] == "ok"
