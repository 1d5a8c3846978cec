"""Kill the run at random moments: nothing is lost, nothing is counted twice, the checkout is untouched."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import git, gitevolve

from test_run import notes, pins


def start(repo, *args):
    # SIGINT as a terminal delivers it: a suite started in the background (`make test &`, some CI
    # runners) hands its children SIGINT ignored, and Python then never raises KeyboardInterrupt.
    return subprocess.Popen(
        [sys.executable, "-m", "gitevolve", "run", *args], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "TOY_SLEEP": "0.2"}, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.fixture
def started(request):
    """Runs started by a test, killed when it ends however it ends: a run left behind (one with
    --time 1h) would load the machine for every test after it."""
    procs = []
    yield lambda repo, *args: procs.append(start(repo, *args)) or procs[-1]
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def user_view(repo):
    return [git(repo, *a) for a in (["status", "--porcelain"], ["rev-parse", "HEAD"], ["symbolic-ref", "HEAD"])]


def every_note_names_an_existing_commit(repo):
    for sha in notes(repo):
        assert git(repo, "cat-file", "-t", sha).strip() == "commit"


def test_sigkill_at_random_moments_loses_nothing(repo, started):
    rng = random.Random(2024)
    (repo / "untracked.txt").write_text("mine\n")
    before = user_view(repo)
    unscored_after_kill = 0
    for _ in range(5):
        proc = started(repo, "--time", "1h")  # runs until it is stopped: the stop never comes too late
        time.sleep(rng.uniform(0.4, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        every_note_names_an_existing_commit(repo)
        assert user_view(repo) == before
        unscored_after_kill += len(set(pins(repo)) - set(notes(repo)))
    assert unscored_after_kill > 0, "the kills should land between a commit and its note"
    done = gitevolve(repo, "run", "--iterations", "2", env={"TOY_SLEEP": "0"})
    assert done.returncode == 0, done.stderr
    scored = notes(repo)
    assert set(pins(repo)) <= set(scored), "every pinned candidate ends with a note"
    iterations = [n["iteration"] for n in scored.values() if n["iteration"] is not None]
    assert len(iterations) == len(set(iterations)), "no iteration recorded twice"
    assert all(n["status"] in ("ok", "failed") for n in scored.values())
    evaluated = [n["content"] for n in scored.values() if not n.get("duplicate_of")]
    assert len(evaluated) == len(set(evaluated)), "no program evaluated twice, kills and resumes included"
    assert user_view(repo) == before
    git(repo, "fsck", "--strict")


def test_ctrl_c_stops_cleanly_and_says_what_it_kept(repo, started):
    proc = started(repo, "--time", "1h")  # runs until it is stopped: the stop never comes too late
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert "Interrupted." in out and "`gitevolve run` evaluates them first" in out
    assert "Traceback" not in err
    done = gitevolve(repo, "run", "--iterations", "1")
    assert done.returncode == 0 and set(pins(repo)) <= set(notes(repo))


def test_one_run_at_a_time_per_repository(repo, started):
    proc = started(repo, "--time", "1h")  # runs until it is stopped: the stop never comes too late
    try:
        time.sleep(1.0)
        second = gitevolve(repo, "run")
        assert second.returncode == 1 and "another `gitevolve run` is working on run 'default'" in second.stderr
        other = gitevolve(repo, "status")
        assert other.returncode == 0, "reading is never locked out"
    finally:
        proc.kill()
        proc.wait()
    json.loads(gitevolve(repo, "status", "--json").stdout)
