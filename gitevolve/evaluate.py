"""Run evaluator hooks as docs/hooks.md describes, and turn whatever they do into an Evaluation.

A hook is untrusted: it may hang, flood its output, fork, crash or print nonsense. Each one runs in
its own process group, with bounded output capture and a deadline; nothing it does raises here.
"""

from __future__ import annotations

import json
import math
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from gitevolve.hookkit import exit_words, signal_group

STDOUT_TAIL = 1024 * 1024  # also the longest result line that can be parsed: artifacts make it long
STDERR_TAIL = 16 * 1024
ARTIFACT_CAP = 8 * 1024
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
EX_TEMPFAIL = 75
WARNINGS_ARTIFACT = "evaluator_warnings"
_STREAM_HEAD = ARTIFACT_CAP // 4  # compilers put the first, most useful error at the head
_CHUNK = 64 * 1024
_POLL = 0.02


@dataclass(frozen=True)
class Stage:
    name: str
    command: str
    timeout: float
    threshold: float | None = None
    # A bar relative to the island's champion: the stage's score must reach this share of the
    # champion's score at the same stage (the loop turns it into a number per island: `bars`).
    within: float | None = None


@dataclass(frozen=True)
class Evaluation:
    status: str
    score: float | None
    metrics: dict
    artifacts: dict[str, str]
    reason: str | None
    stage: str
    attempts: int
    seconds: float
    stages: dict = field(default_factory=dict)  # the score of every stage that gave one, by name
    stage_seconds: dict = field(default_factory=dict)  # the time each stage that ran took, retries included

    def to_json(self) -> dict:
        return {
            "status": self.status,
            "score": self.score,
            "metrics": dict(self.metrics),
            "artifacts": dict(self.artifacts),
            "reason": self.reason,
            "stage": self.stage,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
            "stages": dict(self.stages),
            "stage_seconds": dict(self.stage_seconds),
        }


def hook_environment(
    base: Mapping[str, str], extra: Mapping[str, str], secrets: Iterable[str] = ()
) -> dict[str, str]:
    """The hook's environment: base minus GIT_* variables and minus the named secret variables,
    plus extra; the directory of sys.executable is put first on PATH so that `python` in a
    command means gitevolve's interpreter."""
    hidden = set(secrets)
    # GIT_DIR & co. would point a hook's git commands at our repository instead of its worktree.
    env = {k: v for k, v in base.items() if not k.startswith("GIT_") and k not in hidden}
    env.update(extra)
    bindir = os.path.dirname(sys.executable or "")
    if bindir:
        path = env.get("PATH", os.defpath)
        # An empty PATH split would leave an empty entry, which means "the current directory".
        rest = [p for p in path.split(os.pathsep) if p != bindir] if path else []
        env["PATH"] = os.pathsep.join([bindir, *rest])
    return env


# --- the registry of live hooks, for terminate_all -------------------------------------------


@dataclass(eq=False)
class _Live:
    proc: subprocess.Popen
    pgid: int
    interrupted: bool = False


# Reentrant so that terminate_all() may be called from a signal handler that interrupted a
# thread holding the lock.
_cond = threading.Condition(threading.RLock())
_live: set[_Live] = set()
# Bumped by terminate_all(): an evaluation that started before it must not start new hooks,
# retries or stages afterwards, or shutdown would race with workers between two hooks.
_epoch = 0


def terminate_all() -> None:
    """Kill the process groups of every hook still running (called from the run loop on
    Ctrl-C / shutdown; thread-safe)."""
    global _epoch
    with _cond:
        _epoch += 1
        hooks = list(_live)
        for hook in hooks:
            hook.interrupted = True
        _cond.notify_all()  # wakes evaluations sleeping before a retry
    # Escalate here rather than leave it to the evaluating threads: at shutdown they may be
    # daemon threads that never get to run again.
    _stop_groups(hooks)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc"):
        return True
    # killpg also reaches zombies, and an init that does not reap orphans (as in some
    # containers) would keep those forever: only a member that still runs counts.
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            return True
    return False


def _stop_groups(hooks: Sequence[_Live]) -> None:
    for hook in hooks:
        signal_group(hook.pgid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    pending = list(hooks)
    while pending:
        for hook in pending:
            hook.proc.poll()  # a zombie leader must not look alive
        pending = [hook for hook in pending if _group_alive(hook.pgid)]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(_POLL)
    for hook in pending:
        signal_group(hook.pgid, signal.SIGKILL)


# --- output capture ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Capture:
    cap: int
    head: bytearray = field(default_factory=bytearray)
    tail: bytearray = field(default_factory=bytearray)
    total: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def last_line(self) -> tuple[str | None, bool]:
        """The last non-empty line kept, and whether its start may have been cut off.

        Found in the bytes, not the decoded text, to keep a copy of a full tail out of memory;
        split at newlines only, as a JSON string may hold U+2028 and the like unescaped."""
        with self.lock:
            end = len(self.tail)
            while True:
                start = self.tail.rfind(b"\n", 0, end) + 1
                line = bytes(self.tail[start:end]).strip()
                if line or start == 0:
                    break
                end = start - 1
            clipped = start == 0 and self.total > len(self.tail)
        return (line.decode("utf-8", "replace") if line else None), clipped

    def artifact(self) -> str:
        """Head and tail of the whole stream, within ARTIFACT_CAP bytes, saying how much was cut."""
        with self.lock:
            total = self.total
            if total <= ARTIFACT_CAP:  # then the tail holds all of it, as cap >= ARTIFACT_CAP
                return self.tail.decode("utf-8", "replace")
            head = bytes(self.head)
            keep = bytes(self.tail[len(head) - ARTIFACT_CAP :])
        cut = total - len(head) - len(keep)
        return (
            head.decode("utf-8", "replace")
            + f"\n[... {cut} bytes cut ...]\n"
            + keep.decode("utf-8", "replace")
        )


def _drain(pipe, capture: _Capture) -> None:
    fd = pipe.fileno()
    try:
        while True:
            try:
                chunk = os.read(fd, _CHUNK)
            except OSError:
                break
            if not chunk:
                break
            with capture.lock:
                if len(capture.head) < _STREAM_HEAD:
                    capture.head += chunk[: _STREAM_HEAD - len(capture.head)]
                capture.total += len(chunk)
                capture.tail += chunk
                if len(capture.tail) > capture.cap:
                    del capture.tail[: -capture.cap]
    finally:
        pipe.close()


# --- one hook run -----------------------------------------------------------------------------


@dataclass
class _Outcome:
    kind: str  # ok | failed | transient
    reason: str | None = None
    score: float | None = None
    metrics: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)


@lru_cache(maxsize=None)
def _gnu_timeout() -> str | None:
    # Only GNU timeout is known to signal its whole process group; others only the child.
    for name in ("timeout", "gtimeout"):
        path = shutil.which(name)
        if not path:
            continue
        try:
            version = subprocess.run(
                [path, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                text=True, timeout=10,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if "GNU coreutils" in version:
            return path
    return None


def _lookup_problem(name: str, worktree: Path, path: str) -> str | None:
    """Why execvp would not find `name` from `worktree`, or None.

    Checked up front because once wrapped in `timeout` a missing command would only show
    as exit status 127, indistinguishable from a hook that exits 127 itself."""
    if "/" in name:
        candidates = [worktree / name]
    else:
        candidates = [worktree / (d or ".") / name for d in path.split(os.pathsep)]
    denied = False
    for candidate in candidates:
        if candidate.is_file():
            if os.access(candidate, os.X_OK):
                return None
            denied = True
    return f"permission denied: {name}" if denied else f"command not found: {name}"


def _one_line(text: str, limit: int = 300) -> str:
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _quote(line: str, limit: int = 80) -> str:
    return repr(line) if len(line) <= limit else repr(line[:limit]) + "..."


def _truncate(text: str, cap: int = ARTIFACT_CAP) -> str:
    if len(text) <= cap:
        return text
    head = cap // 4
    tail = cap - head
    return f"{text[:head]}\n[... {len(text) - head - tail} characters cut ...]\n{text[-tail:]}"


def _is_number(x) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


def _json_words(x) -> str:
    try:
        text = json.dumps(x)
    except (TypeError, ValueError):
        text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _read_report(stage: Stage, out: _Capture):
    """(report, problem): the result object of the last stdout line, or why there is none.

    Metrics and artifacts of the wrong type are dropped with a warning rather than failing the
    candidate: a hook that adds a list-valued metric should not fail every candidate."""
    where = f"stage {stage.name!r}"
    line, clipped = out.last_line()
    if line is None:
        return None, f"{where}: printed nothing on stdout (expected a JSON object on its last line)"
    try:
        report = json.loads(line)
    except (ValueError, RecursionError):
        report = None
    if not isinstance(report, dict):
        problem = f"{where}: last line of stdout is not a JSON object: {_quote(line)}"
        if clipped:
            problem += f" (the line may be longer than the {STDOUT_TAIL // 1024} KiB kept)"
        return None, problem
    warnings = []
    metrics = report.get("metrics", {})
    if not isinstance(metrics, dict):
        warnings.append(f"metrics is not an object: {_json_words(metrics)}")
        metrics = {}
    kept_metrics = {}
    for key, value in metrics.items():
        if isinstance(value, (str, bool)) or _is_number(value):
            kept_metrics[key] = value
        else:
            warnings.append(
                f"metric {key!r} dropped: {_json_words(value)} is not a finite number, a string or a boolean"
            )
    artifacts = report.get("artifacts", {})
    if not isinstance(artifacts, dict):
        warnings.append(f"artifacts is not an object: {_json_words(artifacts)}")
        artifacts = {}
    kept_artifacts = {}
    for key, value in artifacts.items():
        if isinstance(value, str):
            kept_artifacts[key] = _truncate(value)
        else:
            warnings.append(f"artifact {key!r} dropped: {_json_words(value)} is not a string")
    if warnings:
        kept_artifacts[WARNINGS_ARTIFACT] = _truncate("\n".join(warnings))
    return {**report, "metrics": kept_metrics, "artifacts": kept_artifacts}, None


def _run_once(worktree: Path, stage: Stage, env: Mapping[str, str], epoch: int) -> _Outcome:
    where = f"stage {stage.name!r}"
    try:
        argv = shlex.split(stage.command)
    except ValueError as e:
        return _Outcome("failed", f"{where}: cannot parse command {_quote(stage.command)}: {e}")
    if not argv:
        return _Outcome("failed", f"{where}: empty command")
    # A hook may remove its own worktree; the next stage must then fail, not raise.
    if not worktree.is_dir():
        return _Outcome("failed", f"{where}: worktree does not exist: {worktree}")
    problem = _lookup_problem(argv[0], worktree, env.get("PATH", os.defpath))
    if problem:
        return _Outcome("failed", f"{where}: {problem}")

    limited = math.isfinite(stage.timeout) and stage.timeout > 0
    wrapper = _gnu_timeout() if limited else None
    if wrapper:
        # One second after our own deadline: the backstop for when gitevolve itself was
        # killed with -9 and its hooks were orphaned.
        argv = [wrapper, f"--kill-after={KILL_GRACE:g}", f"{stage.timeout + 1:.3f}", *argv]

    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv, cwd=worktree, env=dict(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
    except OSError as e:
        return _Outcome("failed", f"{where}: cannot run {argv[0]}: {e.strerror or e}")
    hook = _Live(proc, proc.pid)
    with _cond:
        _live.add(hook)
        if _epoch != epoch:  # terminate_all() ran while we were starting it
            hook.interrupted = True
    out, err = _Capture(STDOUT_TAIL), _Capture(STDERR_TAIL)
    readers = [
        threading.Thread(target=_drain, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=_drain, args=(proc.stderr, err), daemon=True),
    ]
    for reader in readers:
        reader.start()

    timed_out = False
    if hook.interrupted:
        _stop_groups([hook])
    try:
        proc.wait(timeout=stage.timeout if limited else None)
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop_groups([hook])
    else:
        # Whatever the hook left behind would hold our pipes open and outlive its worktree.
        if _group_alive(hook.pgid):
            _stop_groups([hook])
    code = proc.wait()
    elapsed = time.monotonic() - started
    for reader in readers:
        # A process that escaped the group (setsid) may keep a pipe open: take what we have.
        reader.join(timeout=1.0)
    with _cond:
        _live.discard(hook)
        interrupted = hook.interrupted

    streams = {}
    if out.total:
        streams["stdout"] = out.artifact()
    if err.total:
        streams["stderr"] = err.artifact()

    if interrupted:
        return _Outcome("failed", "interrupted", artifacts=streams)
    if timed_out or (wrapper and code == 124 and elapsed >= stage.timeout):
        return _Outcome(
            "failed", f"{where} timed out after {stage.timeout:g}s (process group killed)",
            artifacts=streams,
        )

    report, problem = _read_report(stage, out)
    metrics = report["metrics"] if report else {}
    artifacts = report["artifacts"] if report else {}
    # The hook's one-line reason: a top-level "reason" (what a hook author writes first), or an
    # artifact of that name (where a longer explanation fits).
    said = report.get("reason") if report else None
    hook_reason = said if isinstance(said, str) and said.strip() else artifacts.get("reason")
    with_streams = {**streams, **artifacts}

    if code == EX_TEMPFAIL:
        reason = _one_line(hook_reason) if hook_reason else f"{where} exited with status 75 (EX_TEMPFAIL)"
        return _Outcome("transient", reason, metrics=metrics, artifacts=with_streams)
    if code != 0:
        reason = f"{where} {exit_words(code)}"
        last_err, _ = err.last_line()
        if last_err:
            reason += f": {_one_line(last_err, 200)}"
        return _Outcome("failed", reason, metrics=metrics, artifacts=with_streams)
    if problem:
        return _Outcome("failed", problem, artifacts=streams)

    status = report.get("status")
    if status == "transient":
        reason = _one_line(hook_reason) if hook_reason else f"{where}: evaluator reported a transient failure"
        return _Outcome("transient", reason, metrics=metrics, artifacts=with_streams)
    if status == "failed":
        reason = _one_line(hook_reason) if hook_reason else "evaluator reported failure"
        return _Outcome("failed", reason, metrics=metrics, artifacts=with_streams)
    if status != "ok":
        return _Outcome(
            "failed",
            f"{where}: status must be ok, failed or transient, got {_json_words(status)}",
            metrics=metrics, artifacts=with_streams,
        )
    if "score" not in report:
        return _Outcome("failed", f"{where}: status ok without a score", metrics=metrics, artifacts=with_streams)
    score = report["score"]
    if not _is_number(score):
        return _Outcome(
            "failed", f"{where}: score must be a finite number, got {_json_words(score)}",
            metrics=metrics, artifacts=with_streams,
        )
    return _Outcome("ok", None, score=float(score), metrics=metrics, artifacts=artifacts)


# --- the cascade ------------------------------------------------------------------------------


def _interrupted_since(epoch: int) -> bool:
    with _cond:
        return _epoch != epoch


def _sleep(seconds: float, epoch: int) -> bool:
    """Sleep unless terminate_all() is called meanwhile; True if it was."""
    with _cond:
        return _cond.wait_for(lambda: _epoch != epoch, timeout=seconds)


def evaluate(
    worktree: Path,
    stages: Sequence[Stage],
    env: Mapping[str, str],
    retries: int = 0,
    backoff: float = 1.0,
    bars: Mapping[str, float] | None = None,
) -> Evaluation:
    """Run the stages in the worktree (cwd), cascade with thresholds (a stage's own, and the
    `bars` the loop sets from the island's champion), transient retries with exponential backoff
    + jitter (backoff * 2**k), merge metrics, return one Evaluation. Never raises for anything
    the hook does."""
    if not stages:
        raise ValueError("evaluate() needs at least one stage")
    worktree = Path(worktree)
    started = time.monotonic()
    with _cond:
        epoch = _epoch
    metrics: dict = {}
    artifacts: dict[str, str] = {}
    attempts = 0

    scores: dict = {}
    spent: dict = {}

    def result(status, score, reason, stage):
        return Evaluation(
            status, score, metrics, artifacts, reason, stage.name, attempts,
            time.monotonic() - started, dict(scores), dict(spent),
        )

    score = None
    for stage in stages:
        stage_started = time.monotonic()
        stage_env = {**env, "GITEVOLVE_STAGE": stage.name}
        tries = max(0, retries) + 1
        for k in range(tries):
            if k:
                delay = backoff * 2 ** (k - 1)
                # Jitter keeps workers that hit the same busy resource from retrying in lockstep.
                delay += random.uniform(0, delay / 10)
                _sleep(delay, epoch)
            if _interrupted_since(epoch):
                outcome = _Outcome("failed", "interrupted")
                break
            outcome = _run_once(worktree, stage, stage_env, epoch)
            attempts += 1
            if outcome.kind != "transient":
                break
        if outcome.kind == "transient":
            n = f"{tries} attempt" + ("s" if tries != 1 else "")
            outcome = _Outcome(
                "failed", f"transient failure persisted after {n}: {outcome.reason}",
                metrics=outcome.metrics, artifacts=outcome.artifacts,
            )
        spent[stage.name] = round(time.monotonic() - stage_started, 3)
        metrics.update(outcome.metrics)
        artifacts.update(outcome.artifacts)
        if outcome.kind == "failed":
            return result("failed", None, outcome.reason, stage)
        score = scores[stage.name] = outcome.score
        if stage.threshold is not None and score < stage.threshold:
            return result(
                "rejected", score,
                f"stage {stage.name!r} scored {score:g}, below its threshold {stage.threshold:g}",
                stage,
            )
        bar = (bars or {}).get(stage.name)
        if bar is not None and score < bar:
            return result(
                "rejected", score,
                f"stage {stage.name!r} scored {score:g}, below {stage.within:.0%} of the island champion's "
                f"({bar:g}): not worth the later stages",
                stage,
            )
    return result("ok", score, None, stage)
