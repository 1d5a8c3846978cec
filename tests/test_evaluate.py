"""Evaluator hooks as real subprocesses: small Python scripts written into tmp_path."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gitevolve import evaluate as ev
from gitevolve.evaluate import Evaluation, Stage, evaluate, hook_environment, terminate_all

ENV = hook_environment(os.environ, {"GITEVOLVE_RUN": "test"})


def hook(worktree: Path, body: str, name: str = "hook.py") -> str:
    worktree.mkdir(parents=True, exist_ok=True)
    script = "import json, os, sys, time, subprocess, signal\n" + textwrap.dedent(body)
    (worktree / name).write_text(script)
    return f"python {name}"


def run(worktree: Path, body: str, timeout: float = 10, **kw) -> Evaluation:
    return evaluate(worktree, [Stage("main", hook(worktree, body), timeout)], ENV, **kw)


def alive(pid: int) -> bool:
    # The init here may not reap orphans: a zombie is dead for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")


@pytest.fixture(params=["gnu-timeout", "plain"])
def wrapper(request, monkeypatch):
    if request.param == "gnu-timeout":
        if ev._gnu_timeout() is None:
            pytest.skip("no GNU timeout on PATH")
    else:
        monkeypatch.setattr(ev, "_gnu_timeout", lambda: None)
    return request.param


def test_ok_with_metrics_and_artifacts(tmp_path):
    result = run(tmp_path, """
        print("some progress output")
        print(json.dumps({"status": "ok", "score": 1.5,
                          "metrics": {"speedup": 1.3, "kind": "gqa", "exact": True, "n": 3,
                                      "stage": os.environ["GITEVOLVE_STAGE"],
                                      "run": os.environ["GITEVOLVE_RUN"],
                                      "cwd": os.getcwd(), "exe": sys.executable},
                          "artifacts": {"log": "all good"}}))
        print()
    """)
    assert result.status == "ok", result.reason
    assert result.score == 1.5 and result.reason is None
    m = result.metrics
    assert (m["speedup"], m["kind"], m["exact"], m["n"]) == (1.3, "gqa", True, 3)
    assert (m["stage"], m["run"], m["cwd"]) == ("main", "test", str(tmp_path))
    # `python` in the command is gitevolve's interpreter.
    assert os.path.dirname(m["exe"]) == os.path.dirname(sys.executable)
    assert result.artifacts == {"log": "all good"}
    assert (result.stage, result.attempts) == ("main", 1)
    assert json.loads(json.dumps(result.to_json()))["score"] == 1.5


def test_crash_keeps_traceback(tmp_path):
    result = run(tmp_path, """
        print("about to divide")
        1 / 0
    """)
    assert result.status == "failed" and result.score is None
    assert "exited with status 1" in result.reason
    assert "ZeroDivisionError" in result.reason
    assert "Traceback" in result.artifacts["stderr"]
    assert "ZeroDivisionError" in result.artifacts["stderr"]
    assert result.artifacts["stdout"] == "about to divide\n"


def test_nonzero_exit_fails_even_after_ok_json(tmp_path):
    result = run(tmp_path, """
        print(json.dumps({"status": "ok", "score": 3, "metrics": {"m": 1}}))
        sys.exit(3)
    """)
    assert result.status == "failed" and result.score is None
    assert result.reason == "stage 'main' exited with status 3"
    assert result.metrics == {"m": 1}


def test_killed_by_signal(tmp_path):
    result = run(tmp_path, """
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), signal.SIGSEGV)
    """)
    assert result.status == "failed"
    assert "killed by SIGSEGV" in result.reason


def test_garbage_last_line(tmp_path):
    result = run(tmp_path, """
        print(json.dumps({"status": "ok", "score": 1}))
        print("this is not json " + "x" * 500)
    """)
    assert result.status == "failed"
    assert result.reason.startswith("stage 'main': last line of stdout is not a JSON object: 'this is not json")
    assert len(result.reason) < 200
    assert "this is not json" in result.artifacts["stdout"]


@pytest.mark.parametrize("line", ["[1, 2]", "42", '{"status": "ok", "score": 1'])
def test_last_line_must_be_an_object(tmp_path, line):
    result = run(tmp_path, f"print({line!r})")
    assert result.status == "failed"
    assert "not a JSON object" in result.reason


def test_no_output(tmp_path):
    result = run(tmp_path, "pass")
    assert result.status == "failed"
    assert "printed nothing on stdout" in result.reason


def test_huge_output_then_result_keeps_memory_bounded(tmp_path):
    command = hook(tmp_path, """
        block = ("y" * 1023 + "\\n") * 1024
        for _ in range(50):
            sys.stdout.write(block)
        print(json.dumps({"status": "ok", "score": 2.0}))
    """)
    tracemalloc.start()
    try:
        result = evaluate(tmp_path, [Stage("main", command, 20)], ENV)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status == "ok", result.reason
    assert result.score == 2.0
    # About 2.5 MiB for the 1 MiB tail kept; keeping everything would be over 50 MiB.
    assert peak < 8 * 2**20, f"peak {peak} bytes while reading 50 MB of output"


def test_huge_failure_output_is_cut_to_head_and_tail(tmp_path):
    result = run(tmp_path, """
        sys.stdout.write("FIRST\\n" + "z" * 1_000_000 + "\\nLAST\\n")
        sys.stderr.write("e" * 100_000)
        sys.exit(1)
    """)
    assert result.status == "failed"
    out = result.artifacts["stdout"]
    assert out.startswith("FIRST") and out.endswith("LAST\n")
    assert "bytes cut ...]" in out
    assert len(out) < ev.ARTIFACT_CAP + 100
    assert len(result.artifacts["stderr"]) < ev.ARTIFACT_CAP + 100


def test_long_hook_artifact_is_truncated(tmp_path):
    result = run(tmp_path, """
        log = "head" + "a" * 100_000 + "tail"
        print(json.dumps({"status": "ok", "score": 1, "artifacts": {"log": log}}))
    """)
    log = result.artifacts["log"]
    assert log.startswith("head") and log.endswith("tail")
    assert "characters cut ...]" in log and len(log) < ev.ARTIFACT_CAP + 100


def test_result_line_longer_than_the_kept_tail(tmp_path):
    result = run(tmp_path, f"""
        print(json.dumps({{"status": "ok", "score": 1, "artifacts": {{"log": "a" * {ev.STDOUT_TAIL}}}}}))
    """)
    assert result.status == "failed"
    assert "may be longer than the" in result.reason


@needs_proc
def test_timeout_kills_the_whole_group(tmp_path, wrapper):
    result = run(tmp_path, """
        child = subprocess.Popen(["sleep", "1000"])
        with open("pids", "w") as f:
            f.write(f"{os.getpid()} {child.pid} {os.getppid()}")
        time.sleep(1000)
    """, timeout=1)
    assert result.status == "failed"
    assert result.reason == "stage 'main' timed out after 1s (process group killed)"
    assert result.seconds < 4
    hook_pid, child_pid, parent_pid = map(int, (tmp_path / "pids").read_text().split())
    deadline = time.monotonic() + 2
    while (alive(hook_pid) or alive(child_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(hook_pid) and not alive(child_pid)
    if wrapper == "gnu-timeout":
        # The backstop for an orphaned hook is really there.
        assert not alive(parent_pid)


@needs_proc
def test_sigterm_ignored_escalates_to_sigkill(tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "_gnu_timeout", lambda: None)  # we, not timeout, must escalate
    result = run(tmp_path, """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open("pid", "w") as f:
            f.write(str(os.getpid()))
        while True:
            time.sleep(1)
    """, timeout=0.5)
    assert result.status == "failed" and "timed out" in result.reason
    assert 2 <= result.seconds < 5
    assert not alive(int((tmp_path / "pid").read_text()))


@needs_proc
def test_leftover_background_process_is_killed_after_normal_exit(tmp_path):
    # The leftover inherits stdout: without the group kill, reading would never see EOF.
    result = run(tmp_path, """
        child = subprocess.Popen(["sleep", "1000"])
        open("pid", "w").write(str(child.pid))
        print(json.dumps({"status": "ok", "score": 1}))
    """)
    assert result.status == "ok", result.reason
    assert result.seconds < 4
    assert not alive(int((tmp_path / "pid").read_text()))


@pytest.mark.parametrize(
    "score, words",
    [("true", "got true"), ("NaN", "got NaN"), ("Infinity", "got Infinity"), ('"1.5"', 'got "1.5"'), ("null", "got null")],
)
def test_score_must_be_a_finite_number(tmp_path, score, words):
    result = run(tmp_path, f"""
        print('{{"status": "ok", "score": {score}, "metrics": {{"m": 1}}}}')
    """)
    assert result.status == "failed" and result.score is None
    assert result.reason == f"stage 'main': score must be a finite number, {words}"
    assert result.metrics == {"m": 1}


def test_missing_score_and_bad_status(tmp_path):
    assert run(tmp_path, "print('{\"status\": \"ok\"}')").reason == "stage 'main': status ok without a score"
    result = run(tmp_path, "print('{\"status\": \"great\", \"score\": 1}')")
    assert result.status == "failed" and "got \"great\"" in result.reason


def test_bad_metrics_and_artifacts_are_dropped_with_a_warning(tmp_path):
    result = run(tmp_path, """
        print('{"status": "ok", "score": 1, "metrics": {"good": 2, "list": [1], "nan": NaN},'
              ' "artifacts": {"log": "x", "n": 3}}')
    """)
    assert result.status == "ok"
    assert result.metrics == {"good": 2}
    assert result.artifacts["log"] == "x" and "n" not in result.artifacts
    warnings = result.artifacts[ev.WARNINGS_ARTIFACT]
    assert "'list'" in warnings and "'nan'" in warnings and "'n'" in warnings


def test_hook_reported_failure(tmp_path):
    result = run(tmp_path, """
        print(json.dumps({"status": "failed", "metrics": {"max_err": 0.5},
                          "artifacts": {"reason": "output mismatch at [3, 4]\\nmore", "diff": "..."}}))
    """)
    assert result.status == "failed" and result.score is None
    assert result.reason == "output mismatch at [3, 4]"
    assert result.metrics == {"max_err": 0.5}
    assert result.artifacts["diff"] == "..."
    assert run(tmp_path, "print('{\"status\": \"failed\"}')").reason == "evaluator reported failure"


COUNTER = """
    n = int(open("count").read()) + 1 if os.path.exists("count") else 1
    open("count", "w").write(str(n))
"""


def test_transient_then_success_on_third_attempt(tmp_path):
    result = run(tmp_path, COUNTER + """
    if n < 3:
        print(json.dumps({"status": "transient", "artifacts": {"reason": "GPU busy"}}))
    else:
        print(json.dumps({"status": "ok", "score": n}))
    """, retries=2, backoff=0.05)
    assert result.status == "ok", result.reason
    assert (result.score, result.attempts) == (3.0, 3)
    assert result.seconds >= 0.05 + 0.1  # backoff * 2**0 + backoff * 2**1


def test_transient_persisting(tmp_path):
    result = run(tmp_path, COUNTER + """
    print(json.dumps({"status": "transient", "artifacts": {"reason": "GPU busy"}}))
    """, retries=1, backoff=0.01)
    assert result.status == "failed"
    assert result.reason == "transient failure persisted after 2 attempts: GPU busy"
    assert result.attempts == 2
    assert (tmp_path / "count").read_text() == "2"


def test_exit_75_is_transient(tmp_path):
    result = run(tmp_path, COUNTER + """
    if n == 1:
        sys.exit(75)
    print(json.dumps({"status": "ok", "score": 1}))
    """, retries=1, backoff=0.01)
    assert result.status == "ok" and result.attempts == 2
    result = run(tmp_path / "again", "sys.exit(75)")
    assert result.status == "failed"
    assert result.reason == (
        "transient failure persisted after 1 attempt: stage 'main' exited with status 75 (EX_TEMPFAIL)"
    )


def stage_hook(worktree: Path, name: str, score: float, metrics: dict) -> str:
    return hook(worktree, f"""
        open("ran-{name}", "w").close()
        print(json.dumps({{"status": "ok", "score": {score}, "metrics": {metrics!r}}}))
    """, name=f"{name}.py")


def test_stages_merge_metrics_and_score_is_the_last(tmp_path):
    stages = [
        Stage("correctness", stage_hook(tmp_path, "correctness", 1.0, {"a": 1, "shared": "first"}), 5, threshold=1.0),
        Stage("benchmark", stage_hook(tmp_path, "benchmark", 7.0, {"b": 2, "shared": "second"}), 5),
    ]
    result = evaluate(tmp_path, stages, ENV)
    assert result.status == "ok", result.reason
    assert result.score == 7.0
    assert result.metrics == {"a": 1, "b": 2, "shared": "second"}
    assert (result.stage, result.attempts) == ("benchmark", 2)


def test_threshold_rejects_and_stops_the_cascade(tmp_path):
    stages = [
        Stage("correctness", stage_hook(tmp_path, "correctness", 0.5, {"a": 1}), 5, threshold=1.0),
        Stage("benchmark", stage_hook(tmp_path, "benchmark", 7.0, {"b": 2}), 5),
    ]
    result = evaluate(tmp_path, stages, ENV)
    assert result.status == "rejected"
    assert result.score == 0.5
    assert result.metrics == {"a": 1}
    assert result.stage == "correctness"
    assert result.reason == "stage 'correctness' scored 0.5, below its threshold 1"
    assert not (tmp_path / "ran-benchmark").exists()


def test_failed_stage_stops_the_cascade(tmp_path):
    stages = [
        Stage("build", hook(tmp_path, "sys.exit(2)", name="build.py"), 5),
        Stage("benchmark", stage_hook(tmp_path, "benchmark", 7.0, {}), 5),
    ]
    result = evaluate(tmp_path, stages, ENV)
    assert (result.status, result.stage) == ("failed", "build")
    assert not (tmp_path / "ran-benchmark").exists()


def test_command_not_found(tmp_path):
    result = evaluate(tmp_path, [Stage("main", "definitely-not-a-command-xyz --flag", 5)], ENV)
    assert result.status == "failed"
    assert result.reason == "stage 'main': command not found: definitely-not-a-command-xyz"
    result = evaluate(tmp_path, [Stage("main", "./missing.sh", 5)], ENV)
    assert result.reason == "stage 'main': command not found: ./missing.sh"
    result = evaluate(tmp_path, [Stage("main", "python 'unclosed", 5)], ENV)
    assert result.status == "failed" and "cannot parse command" in result.reason


def test_hook_environment():
    base = {
        "GIT_DIR": "/repo/.git", "GIT_INDEX_FILE": "/repo/.git/index", "OPENAI_API_KEY": "sk-secret",
        "HOME": "/home/me", "PATH": "/usr/bin:/bin", "GITHUB_TOKEN_NOT_LISTED": "kept",
    }
    env = hook_environment(base, {"GITEVOLVE_CANDIDATE": "a" * 40}, secrets=["OPENAI_API_KEY"])
    assert "GIT_DIR" not in env and "GIT_INDEX_FILE" not in env and "OPENAI_API_KEY" not in env
    assert env["HOME"] == "/home/me" and env["GITHUB_TOKEN_NOT_LISTED"] == "kept"
    assert env["GITEVOLVE_CANDIDATE"] == "a" * 40
    bindir = os.path.dirname(sys.executable)
    assert env["PATH"] == os.pathsep.join([bindir, "/usr/bin", "/bin"])
    assert hook_environment({"PATH": f"/x:{bindir}"}, {})["PATH"] == f"{bindir}:/x"
    assert base["GIT_DIR"] == "/repo/.git"  # the caller's mapping is left alone


def wait_for(path: Path, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@needs_proc
def test_terminate_all_interrupts_a_hanging_hook(tmp_path):
    command = hook(tmp_path, """
        child = subprocess.Popen(["sleep", "1000"])
        open("pids.tmp", "w").write(f"{os.getpid()} {child.pid}")
        os.rename("pids.tmp", "pids")
        time.sleep(1000)
    """)
    results = []
    worker = threading.Thread(target=lambda: results.append(evaluate(tmp_path, [Stage("main", command, 30)], ENV)))
    worker.start()
    wait_for(tmp_path / "pids")
    started = time.monotonic()
    terminate_all()
    worker.join(10)
    assert not worker.is_alive()
    assert time.monotonic() - started < 5
    (result,) = results
    assert (result.status, result.reason) == ("failed", "interrupted")
    assert not any(alive(int(pid)) for pid in (tmp_path / "pids").read_text().split())


def test_terminate_all_cuts_a_retry_backoff_short(tmp_path):
    command = hook(tmp_path, COUNTER + "    sys.exit(75)\n")
    results = []
    worker = threading.Thread(
        target=lambda: results.append(evaluate(tmp_path, [Stage("main", command, 30)], ENV, retries=3, backoff=30))
    )
    worker.start()
    wait_for(tmp_path / "count")
    time.sleep(0.2)
    terminate_all()
    worker.join(10)
    assert not worker.is_alive()
    (result,) = results
    assert (result.status, result.reason, result.attempts) == ("failed", "interrupted", 1)
    # Evaluations that start after terminate_all() run normally.
    assert run(tmp_path / "later", "print('{\"status\": \"ok\", \"score\": 1}')").status == "ok"


def test_parallel_evaluations(tmp_path):
    body = """
        time.sleep(1)
        print(json.dumps({"status": "ok", "score": len(os.getcwd()), "metrics": {"cwd": os.getcwd()}}))
    """
    trees = [tmp_path / "one", tmp_path / "three"]
    stages = [Stage("main", hook(tree, body), 10) for tree in trees]
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda i: evaluate(trees[i], [stages[i]], ENV), range(2)))
    assert time.monotonic() - started < 1.8  # concurrently, not one after the other
    for tree, result in zip(trees, results):
        assert result.status == "ok", result.reason
        assert result.metrics["cwd"] == str(tree) and result.score == len(str(tree))


def test_a_failure_reason_is_read_from_the_top_level_or_an_artifact(tmp_path):
    top = run(tmp_path / "a", """
        print(json.dumps({"status": "failed", "reason": "decode-1000: max abs error 3.1e-01",
                          "artifacts": {"mismatch": "index (0, 3, 0, 17)"}}))
    """)
    assert (top.status, top.reason) == ("failed", "decode-1000: max abs error 3.1e-01")
    assert top.artifacts["mismatch"] == "index (0, 3, 0, 17)"
    artifact = run(tmp_path / "b", """
        print(json.dumps({"status": "transient", "artifacts": {"reason": "GPU busy"}}))
    """)
    assert (artifact.status, artifact.reason) == ("failed", "transient failure persisted after 1 attempt: GPU busy")
