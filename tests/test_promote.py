"""`gitevolve promote`: the winner, re-measured, as one commit on the base."""

import json

import pytest

from conftest import git, gitevolve

from test_run import notes, ok


def test_promote_commits_the_winner_on_the_base_after_re_measuring_it(repo):
    ok(gitevolve(repo, "run"))
    base = git(repo, "rev-parse", "main").strip()
    board = json.loads(ok(gitevolve(repo, "status", "--json")).stdout)
    best = max((r for r in board["islands"]), key=lambda r: r["score"])
    done = ok(gitevolve(repo, "promote", "--repeats", "2"))
    assert "Branch gitevolve/promoted" in done.stdout
    promoted = git(repo, "rev-parse", "gitevolve/promoted").strip()
    assert git(repo, "rev-parse", f"{promoted}^").strip() == base, "one commit on top of the base"
    assert git(repo, "diff", "--name-only", base, promoted).split() == ["prog.py"]
    assert git(repo, "show", f"{promoted}:prog.py") == git(repo, "show", f"{best['champion']}:prog.py")
    message = git(repo, "log", "-1", "--format=%B", promoted)
    assert f"Gitevolve-Candidate: {best['champion']}" in message
    remeasured = notes(repo)[best["champion"]]["remeasured"]
    assert len(remeasured["scores"]) == 2 and len(remeasured["base_scores"]) == 2
    assert "median score" in done.stdout and "How it got there" in done.stdout
    board = json.loads(ok(gitevolve(repo, "status", "--json")).stdout)
    row = next(r for r in board["islands"] if r["champion"] == best["champion"])
    assert row["remeasured"] == pytest.approx(sum(remeasured["scores"]) / 2)
    assert "(re-measured " in ok(gitevolve(repo, "status")).stdout
    assert git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/main"

    again = gitevolve(repo, "promote", "--repeats", "0")
    assert again.returncode == 1 and "already exists: pass --force" in again.stderr
    ok(gitevolve(repo, "promote", "--repeats", "0", "--force", "--branch", "evolved"))
    assert git(repo, "rev-parse", "evolved^").strip() == base


def test_promote_refuses_what_is_not_a_scored_candidate(repo):
    ok(gitevolve(repo, "run", "--iterations", "3"))
    base = gitevolve(repo, "promote", "main", "--repeats", "0")
    assert base.returncode == 1 and "is the base of run 'default': nothing to promote" in base.stderr
    git(repo, "commit", "--allow-empty", "--quiet", "-m", "not a candidate")
    stranger = gitevolve(repo, "promote", "HEAD", "--repeats", "0")
    assert stranger.returncode == 1 and "is not a scored candidate of run 'default'" in stranger.stderr
    missing = gitevolve(repo, "promote", "no-such-ref")
    assert missing.returncode == 1 and "does not name a commit" in missing.stderr
