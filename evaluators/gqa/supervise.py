"""The hook as a supervisor: the evaluation runs in a child process, and whatever happens to that
child becomes one hook result.

A GPU kernel can take its process down in ways no try/except survives: an illegal address
aborts the process, a warp-shuffle loop that is not warp-uniform hangs forever, a driver error
kills it with a signal. The child runs in a process group of its own, with a timeout a little
under gitevolve's, and its result comes back through a file. Then:

    the child wrote a result           passed on as it is
    the timeout passed                 failed, failure_kind hang; the child's group is killed
    the child died without a result    by its stderr: transient (out of memory, device busy:
                                       gitevolve retries), compile_error (the whole compiler
                                       message kept), gpu_fault, or else crash

The child's last progress note says which scenario and step it was in. Standard library only:
this process must not touch the GPU it is guarding.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from evaluators.gqa import compile_cache, faults
from evaluators.gqa.channel import Channel
from gitevolve.hookkit import exit_words, signal_group

STDERR_TAIL = 6000
STDOUT_TAIL = 2000
# A process killed inside a GPU driver call can take a while to go; --timeout plus this must stay
# under gitevolve's timeout (50 + 5 < 60 for the examples).
REAP_SECONDS = 5.0


@dataclass(frozen=True)
class Child:
    returncode: int | None  # None: still not reaped after the kill
    timed_out: bool
    seconds: float
    stdout: str
    stderr: str
    report: dict | None = None  # the child's result, when it wrote one
    step: str = ""  # the last step it announced
    metrics: dict = field(default_factory=dict)  # its metrics as of that step


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGKILL when the supervisor dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _before_exec(cpus: frozenset[int] | None):
    def prepare() -> None:
        _die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)  # inherited by every thread the child starts

    return prepare


def _read(path: Path, tail: int) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return text if len(text) <= tail else "..." + text[-tail:]


def _read_result(path: Path) -> tuple[dict | None, str, dict]:
    """(final result, last step, metrics at that step) from the child's result file."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, "", {}
    if not isinstance(value, dict):
        return None, "", {}
    if "status" in value:
        return value, "", {}
    progress = value.get("progress") or {}
    return None, str(progress.get("step", "")), dict(progress.get("metrics") or {})


@dataclass
class Running:
    """A started child: its process, where its output goes, and its channel when it has one."""

    proc: subprocess.Popen
    files: Path
    started: float
    channel: Channel | None = None


def start(command: list[str], files: Path, channel: bool = False, env: dict | None = None,
          cpus: frozenset[int] | None = None) -> Running:
    """Start `command` in a process group of its own, its output into `files`/{stdout,stderr}, with
    --result-file `files`/result.json, with --channel when `channel`, on `cpus` if given."""
    files.mkdir(parents=True, exist_ok=True)
    environ = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
    ours = theirs = None
    extra = ["--result-file", str(files / "result.json")]
    if channel:
        to_child, from_child = os.pipe(), os.pipe()
        theirs = (to_child[0], from_child[1])
        ours = Channel(from_child[0], to_child[1])
        extra += ["--channel", f"{theirs[0]},{theirs[1]}"]
    with open(files / "stdout", "wb") as out, open(files / "stderr", "wb") as err:
        proc = subprocess.Popen(
            [*command, *extra], stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=environ,
            start_new_session=True, pass_fds=theirs or (),
            preexec_fn=_before_exec(cpus) if sys.platform.startswith("linux") else None)
    for fd in theirs or ():
        os.close(fd)
    return Running(proc, files, time.monotonic(), ours)


def collect(running: Running, timeout: float) -> Child:
    """Wait for the child at most `timeout` more seconds, then kill its group (also after a
    normal exit: nothing the candidate started may outlive the evaluation) and read what it left."""
    proc = running.proc
    timed_out = False
    try:
        proc.wait(timeout=max(timeout, 0.0))
    except subprocess.TimeoutExpired:
        timed_out = True
    signal_group(proc.pid, signal.SIGKILL)
    try:
        code = proc.wait(timeout=REAP_SECONDS)
    except subprocess.TimeoutExpired:
        code = None
    if running.channel is not None:
        running.channel.close()
    report, step, metrics = _read_result(running.files / "result.json")
    return Child(code, timed_out, time.monotonic() - running.started, _read(running.files / "stdout", STDOUT_TAIL),
                 _read(running.files / "stderr", STDERR_TAIL), report, step, metrics)


def run_child(command: list[str], timeout: float, env: dict | None = None) -> Child:
    """Run `command` with --result-file added, in a process group of its own, for at most `timeout` s."""
    with tempfile.TemporaryDirectory(prefix="gqa-eval-") as tmp:
        running = start(command, Path(tmp), env=env)
        previous = forward_signals([running.proc.pid])
        try:
            return collect(running, timeout)
        finally:
            restore_signals(previous)


def forward_signals(groups: list[int]) -> dict:
    """gitevolve stops a hook by signalling the hook's group, which the children have left: take
    their groups down with us."""

    def stop(signum, frame):
        for pgid in groups:
            signal_group(pgid, signal.SIGKILL)
        os._exit(128 + signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        previous[sig] = signal.signal(sig, stop)
    return previous


def restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _exit_words(code: int | None) -> str:
    if code is None:
        return "did not exit when killed"
    return exit_words(code) + (" without a result" if code >= 0 else "")


def classify(child: Child, timeout: float) -> dict:
    """The hook result for what happened to the child."""
    if child.report is not None:
        result = dict(child.report)
        if result.get("status") != "ok" and child.stderr.strip():
            result["artifacts"] = {**result.get("artifacts", {}), "stderr": child.stderr}
        return result
    where = f" during {child.step}" if child.step else ""
    streams = {k: v for k, v in (("stderr", child.stderr), ("stdout", child.stdout)) if v.strip()}
    if child.timed_out:
        return _failure(child, "hang", False,
                        f"the evaluation did not finish in {timeout:g} s{where}: a hung kernel? "
                        f"(its process group was killed)", streams)
    # Compiler and driver messages go to stderr; a kernel's printf to stdout.
    text = f"{child.stderr}\n{child.stdout}"
    kind = faults.classify(text)
    died = f"the evaluation {_exit_words(child.returncode)}{where}"
    line = faults.telling_line(child.stderr or child.stdout, kind)
    if kind == "transient":
        return _failure(child, faults.transient_kind(text), True, f"{died}, maybe for a busy device: {line}", streams)
    if kind == "compile_error":
        return _failure(child, kind, False, f"{died}: a kernel did not compile: {line}",
                        {**streams, "compile_error": child.stderr})
    if kind == "gpu_fault":
        return _failure(child, kind, False, f"{died}: GPU fault: {line}", streams)
    return _failure(child, "crash", False, f"{died}: {line}" if streams else died, streams)


def _failure(child: Child, kind: str, transient: bool, reason: str, artifacts: dict) -> dict:
    metrics = {**child.metrics, "evaluation_seconds": round(child.seconds, 2)}
    if child.step:
        metrics["failed_step"] = child.step
    return faults.failure(kind, reason, transient, metrics, artifacts)


def main(script: str, argv: list[str], args: argparse.Namespace) -> dict:
    """Evaluate as `script --child argv` would (`args`: argv parsed), supervised; `script` is the
    hook file itself, so the child imports the harness the same way the hook did. This is the
    correctness stage; a timed stage races the baseline as well (referee.run)."""
    env, cache = compile_cache.for_candidate(args.backend, args.compile_cache)
    result = classify(run_child([sys.executable, script, "--child", *argv], args.timeout, env), args.timeout)
    if cache is not None:
        result.setdefault("metrics", {})["compile_cache"] = cache
    return result
