"""`gitevolve init`: a template to edit, or an example committed as the run's base."""

import pytest
import yaml

from conftest import IDENTITY, git, gitevolve

from test_run import notes, ok


def empty_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "commit", "--quiet", "--allow-empty", "-m", "Empty start")
    return repo


@pytest.mark.slow  # one of the suite's slowest (20-40 s): pytest -m 'not slow' leaves it out
def test_init_example_commits_the_example_and_its_hook_as_the_base(tmp_path):
    repo = empty_repo(tmp_path)
    (repo / "mine.txt").write_text("staged, not part of the example\n")
    git(repo, "add", "mine.txt")
    done = ok(gitevolve(repo, "init", "--example", "gqa-mlx"))
    assert "committed it as" in done.stdout and "this is the run's base" in done.stdout
    committed = git(repo, "show", "--name-only", "--format=", "HEAD").split()
    assert sorted(committed) == [".gitevolve.yml", "attention.py", "hooks/gqa_mlx.py"]
    assert git(repo, "diff", "--cached", "--name-only").split() == ["mine.txt"], "the user's staged work stays staged"
    assert (repo / "hooks" / "gqa_mlx.py").stat().st_mode & 0o111, "the hook stays executable"
    config = yaml.safe_load((repo / ".gitevolve.yml").read_text())
    assert config["files"] == ["attention.py"]

    # One short run on the example, end to end: the hook scores the base and a candidate.
    ok(gitevolve(repo, "run", "--islands", "1", "--iterations", "1", "--workers", "1", timeout=240))
    scored = notes(repo)
    base = git(repo, "rev-parse", "HEAD").strip()
    assert scored[base]["status"] == "ok" and scored[base]["score"] > 0
    assert len(scored) == 2

    again = gitevolve(repo, "init", "--example", "gqa-mlx")
    assert again.returncode == 0 and "already committed here, unchanged" in again.stdout
    assert git(repo, "rev-parse", "HEAD").strip() == base


def test_init_refuses_to_overwrite_and_names_the_examples(tmp_path):
    repo = empty_repo(tmp_path)
    (repo / "attention.py").write_text("mine\n")
    clash = gitevolve(repo, "init", "--example", "gqa-mlx")
    assert clash.returncode == 1 and "attention.py already exists here" in clash.stderr
    assert (repo / "attention.py").read_text() == "mine\n"
    unknown = gitevolve(repo, "init", "--example", "nope")
    assert unknown.returncode == 1 and "choose one of" in unknown.stderr and "gqa-mlx" in unknown.stderr
    ok(gitevolve(repo, "init", "--file", "attention.py", "--evaluator", "python score.py"))
    config = yaml.safe_load((repo / ".gitevolve.yml").read_text())
    assert config["files"] == ["attention.py"] and config["evaluator"]["command"] == "python score.py"
    twice = gitevolve(repo, "init")
    assert twice.returncode == 1 and "already exists" in twice.stderr


def test_init_without_a_git_identity_says_how_to_set_one(tmp_path):
    repo = empty_repo(tmp_path)
    strict = tmp_path / "gitconfig"
    strict.write_text("[user]\n\tuseConfigOnly = true\n")  # no guessing user@host
    nobody = {k: None for k in IDENTITY} | {"GIT_CONFIG_GLOBAL": str(strict), "GIT_CONFIG_NOSYSTEM": "1"}
    done = gitevolve(repo, "init", "--example", "gqa-mlx", env=nobody)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "git does not know who you are" in done.stderr
    assert "git config user.email" in done.stderr
