"""A timed evaluation as the supervisor runs it: two timing processes, one clock (standard library only).

    take the device's lock, shared (device_lock.py: other evaluations may load and check beside us)
    start the baseline's process (--baseline) and the candidate's (--child), each with a channel;
    the candidate's loads the candidate and checks correctness, then says "ready"
    the lock, exclusive, with the candidate's process stopped while we wait for it
    baseline: bandwidth, measured with the candidate's process stopped
    candidate: for each scenario it says "ready"; the baseline is timed alone, the candidate's
              process stopped; then the race (race.py) until "done"
    the candidate's process writes what it checked and exits; report.py adds the speed; the lock goes

Whatever the candidate does, the figures of speed are this process's: the child's result file
carries its checks, never a time. A child that dies, hangs or fails is classified as before
(supervise.classify); a race that shows tampering fails with race.py's kind; a process the
candidate started (found as a descendant of its process, or as an orphan: this process is the
children's subreaper) fails it as background_work.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from evaluators.gqa import bandwidth, compile_cache, device_lock, faults, race, report
from evaluators.gqa.channel import Closed, Garbled, TimedOut
from evaluators.gqa.device_lock import Busy, DeviceLock
from evaluators.gqa.shapes import select
from evaluators.gqa.supervise import REAP_SECONDS, Running, forward_signals, restore_signals, classify, collect, start

PR_SET_CHILD_SUBREAPER = 36


class BaselineFailed(Exception):
    """The baseline's process failed: the harness's own trouble (or a busy device), not the candidate's."""

    def __init__(self, error: str, traceback: str = "") -> None:
        super().__init__(error)
        self.traceback = traceback


@dataclass
class Endpoint:
    """One timing process, as the race sees it (race.Worker)."""

    running: Running
    deadline: float
    name: str
    stoppable: bool = False  # the candidate's: stopped while the baseline runs

    def receive(self, *ops: str) -> tuple[dict, int]:
        message, arrived = self.running.channel.receive(self.deadline)
        if message["op"] == "error" and self.name == "baseline":
            raise BaselineFailed(str(message.get("error", "")), str(message.get("traceback", "")))
        if message["op"] not in ops:
            raise Garbled(f"{message['op']!r} where the {self.name}'s process should say {' or '.join(ops)}")
        return message, arrived

    def send(self, message: dict) -> None:
        self.running.channel.send(message)

    def block(self, command: dict) -> race.Block:
        self.send(command)
        _, started = self.receive("start")
        end, ended = self.receive("end")
        checked, _ = self.receive("checked")
        try:
            child = float(end["seconds"])
        except (KeyError, TypeError, ValueError):
            raise Garbled(f"an end without its seconds: {end}") from None
        return race.Block((ended - started) * 1e-9, child, len(command["seeds"]), str(checked.get("digest")))

    def pause(self) -> None:
        if self.stoppable:
            os.killpg(self.running.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.stoppable:
            os.killpg(self.running.proc.pid, signal.SIGCONT)


def _subreaper() -> None:
    """Orphans of our children become ours, where strays() finds them (Linux; elsewhere a no-op)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError):
        pass


def _stat(pid: int | str) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (which may hold spaces and parentheses):
    [0] is field 3 of proc(5), the state; [1] the parent; [36] the CPU it last ran on."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2:].split()


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                parent = int(_stat(entry)[1])
            except (OSError, ValueError, IndexError):
                continue
            found.setdefault(parent, []).append(int(entry))
    return found


def strays(candidate: int, known: set[int]) -> list[int]:
    """Processes the candidate's process started: its descendants, and orphans handed to us."""
    children = _children()
    found, todo = [], [candidate, *(p for p in children.get(os.getpid(), []) if p not in known)]
    while todo:
        pid = todo.pop()
        if pid != candidate:
            found.append(pid)
        todo += children.get(pid, [])
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@dataclass
class Raced:
    scenarios: list
    races: dict
    peaks: dict
    device: bandwidth.Bandwidth
    doubt: race.Cheated | None = None  # a transient finding, reported if nothing certain fails


def drive(baseline: Endpoint, candidate: Endpoint, budget: race.Budget, lock: DeviceLock) -> Raced | dict:
    """The race, or a hook result that ends the evaluation (raises Closed when the candidate's process ends)."""
    hello, _ = baseline.receive("hello", "unavailable")
    if hello["op"] == "unavailable":
        return faults.failure("backend_unavailable", str(hello.get("reason")), False, {}, {})
    # The candidate loads, compiles and checks itself under the shared lock, beside other
    # evaluations doing the same; it says "ready" for its first race when it is done.
    said, _ = candidate.receive("ready")
    with race.stopped(candidate):
        lock.exclusive(candidate.deadline)  # from here on this evaluation has the device to itself
        baseline.send({"op": "measure"})
        ready, _ = baseline.receive("ready")
    scenarios = select(",".join(ready["scenarios"]))
    raced = Raced(scenarios, {}, {}, bandwidth.Bandwidth(**ready["bandwidth"]))
    for i, s in enumerate(scenarios):
        if i:
            said, _ = candidate.receive("ready")
        if said.get("scenario") != s.name:
            raise Garbled(f"ready for {said.get('scenario')!r} where {s.name!r} comes next")
        with race.stopped(candidate):
            baseline.send({"op": "peak", "scenario": s.name})
            raced.peaks[s.name] = int(baseline.receive("peak")[0]["bytes"])
        try:
            raced.races[s.name] = _race(candidate, baseline, s, budget)
        except race.Cheated as e:
            if not e.transient:
                raise
            # Maybe the machine: let the candidate's process finish its checks, whose failure
            # (a wrong timed output, say) is certain and comes first.
            raced.doubt = raced.doubt or e
            raced.races[s.name] = e.race
        started = strays(candidate.running.proc.pid, {baseline.running.proc.pid, candidate.running.proc.pid})
        if started:
            _kill(started)
            return faults.failure("background_work", f"{s.name}: the candidate started processes of its own "
                                  f"(pids {', '.join(map(str, started[:5]))}) during the evaluation", False, {}, {})
        candidate.send({"op": "done"})
    return raced


def _race(candidate: Endpoint, baseline: Endpoint, scenario, budget: race.Budget, tries: int = 2) -> race.Race:
    """The baseline alone, then the race. A finding that may be the machine's (transient) is
    raced once more, clean phase and all, before it stands: on a shared machine, and on the
    H200, one race in ten or so of an honest candidate's saw the baseline 1.5x slower than alone
    (evaluator_timing-h200-2026-12-04.md), and a slowdown the candidate causes comes back."""
    while True:
        tries -= 1
        with race.stopped(candidate):
            clean = race.clean(baseline, scenario.name, scenario.query_bytes, budget)
        try:
            return race.race(candidate, baseline, scenario.name, clean, budget)
        except race.Cheated as e:
            if not e.transient or tries <= 0:
                raise


def timing_cpus(backend: str) -> frozenset[int] | None:
    """On the CPU backend, one core for both timing processes: the two sides then compute on the
    same core and its caches, as they did in one process. Left to the scheduler, the 2-core
    development machine put them on different cores, and one evaluation's score varied 20%
    against 4% pinned (benchmarks/evaluator_timing.py). A GPU's host threads are left free."""
    if backend != "cpu" or not hasattr(os, "sched_getaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    # The core this process last ran on: the scheduler spreads hooks that gitevolve runs in
    # parallel over the cores, so parallel evaluations are not all stacked on one.
    try:
        current = int(_stat("self")[36])
    except (OSError, ValueError, IndexError):
        current = -1
    return frozenset({current if current in allowed else max(allowed)})


def _keep_off(cpus: frozenset[int] | None) -> None:
    """Move this process off the timing processes' core, where it has other cores to go to.

    It timestamps each block's "start" as it arrives; sharing the core with the candidate that
    has just begun computing, it woke late. A fresh clone's test suite on a loaded 2-core
    machine had an honest program's blocks clocked at 234 ms by this process and at 338 ms by
    the candidate's own clock, and failed it as timing_tampered."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return
    others = os.sched_getaffinity(0) - cpus
    if others:
        os.sched_setaffinity(0, others)


def run(script: str, argv: list[str], args: argparse.Namespace) -> dict:
    budget = race.budget(args.backend, args.seconds, args.rounds)
    deadline = time.monotonic() + args.timeout
    cpus = timing_cpus(args.backend)
    _keep_off(cpus)
    _subreaper()
    env, cache = compile_cache.for_candidate(args.backend, args.compile_cache)  # built outside the device lock
    try:
        with device_lock.held(args.backend, deadline) as lock:
            result = _supervised(script, argv, args, budget, deadline, cpus, lock, env)
    except Busy as e:  # before either process started
        return faults.failure("device_unavailable", str(e), True, {}, {})
    result.setdefault("metrics", {})["device_wait_seconds"] = round(lock.waited, 2)
    if cache is not None:
        result["metrics"]["compile_cache"] = cache
    return result


def _supervised(script: str, argv: list[str], args: argparse.Namespace, budget: race.Budget, deadline: float,
                cpus: frozenset[int] | None, lock: DeviceLock, env: dict[str, str] | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="gqa-eval-") as tmp:
        ours = start([sys.executable, script, "--baseline", *argv], Path(tmp) / "baseline", channel=True, cpus=cpus)
        theirs = start([sys.executable, script, "--child", *argv], Path(tmp) / "candidate", channel=True, cpus=cpus,
                       env=env)
        previous = forward_signals([ours.proc.pid, theirs.proc.pid])
        try:
            baseline = Endpoint(ours, deadline, "baseline")
            candidate = Endpoint(theirs, deadline, "candidate", stoppable=True)
            outcome = _outcome(baseline, candidate, budget, lock)
            try:
                baseline.send({"op": "quit"})
            except OSError:
                pass
            # Decided by the race: the candidate's process is not waited for, only killed.
            child = collect(theirs, 0 if isinstance(outcome, dict) else deadline - time.monotonic())
            collect(ours, REAP_SECONDS)
            # Whatever the candidate started that left its process group (orphans come to us) goes too.
            _kill(strays(theirs.proc.pid, {ours.proc.pid, theirs.proc.pid}))
        finally:
            restore_signals(previous)
    if isinstance(outcome, dict):
        return {**outcome, "metrics": {**child.metrics, **outcome["metrics"]}}
    result = classify(child, args.timeout)
    if result.get("status") != "ok":
        return result
    if outcome is None:
        return faults.failure("timing_tampered", "the candidate's process reported success without being timed",
                              False, result.get("metrics", {}), result.get("artifacts", {}))
    if outcome.doubt is not None:
        return faults.failure(outcome.doubt.kind, outcome.doubt.reason, True, result.get("metrics", {}),
                              result.get("artifacts", {}))
    return report.assemble(result, outcome.scenarios, outcome.races, outcome.peaks, outcome.device,
                           args.allow_identical)


def _outcome(baseline: Endpoint, candidate: Endpoint, budget: race.Budget, lock: DeviceLock) -> Raced | dict | None:
    """Raced; a hook result that ends it here; or None: the candidate's process ended, and its
    result file says how."""
    try:
        return drive(baseline, candidate, budget, lock)
    except Busy as e:
        return faults.failure("device_unavailable", str(e), True, {}, {})
    except (Closed, TimedOut) as e:
        if baseline.running.proc.poll() is not None:
            return _baseline_failed(baseline, f"the baseline's process exited: {e}")
        return None  # the candidate's process died, failed or hung: collect() and classify() tell which
    except BaselineFailed as e:
        return _baseline_failed(baseline, str(e), e.traceback)
    except race.Cheated as e:
        return faults.failure(e.kind, e.reason, e.transient, {}, {})
    except (Garbled, KeyError, TypeError, ValueError) as e:
        return faults.failure("timing_tampered", f"the timing channel carried what the harness does not send: {e}",
                              False, {}, {})


def _baseline_failed(baseline: Endpoint, why: str, traceback: str = "") -> dict:
    stderr = collect(baseline.running, REAP_SECONDS).stderr
    evidence = {"stderr": stderr, **({"traceback": traceback} if traceback else {})}
    text = f"{why}\n{stderr}"
    if faults.classify(text) == "transient":
        return faults.failure(faults.transient_kind(text), f"the device is not available now: "
                              f"{faults.telling_line(text, 'transient')}", True, {}, evidence)
    return faults.failure("evaluator_error", f"the baseline's process failed: {faults.telling_line(text)}", False,
                          {}, evidence)
