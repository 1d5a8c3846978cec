"""The data model of design.md, checked against plain git on real repositories."""

import json

import pytest

from conftest import git
from gitevolve.errors import GitevolveError, StaleRef
from gitevolve.store import RunRefs, Store, format_message, parse_trailers


def candidate(store: Store, parent: str, text: str, subject: str = "Change") -> str:
    tree = store.tree_with(parent, {"prog.py": text})
    return store.add_candidate(parent, tree, format_message(subject, "because", {"Island": 0, "Iteration": 1}))


def test_a_candidate_is_a_commit_on_its_parent_changing_only_evolvable_files(repo):
    store = Store(repo)
    base = store.head_commit()
    sha = candidate(store, base, "A = 2\n", "Set A 1 -> 2")
    assert git(repo, "rev-parse", f"{sha}^") .strip() == base
    assert git(repo, "diff", "--name-only", base, sha).split() == ["prog.py"]
    assert git(repo, "show", f"{sha}:prog.py") == "A = 2\n"
    assert git(repo, "for-each-ref", "--format=%(objectname)", f"refs/gitevolve/default/candidates/{sha}").strip() == sha
    message = git(repo, "log", "-1", "--format=%B", sha)
    assert message.startswith("Set A 1 -> 2\n\nbecause\n")
    assert parse_trailers(message) == {"island": "0", "iteration": "1"}


def test_nested_paths_and_file_modes_survive(tmp_path):
    from conftest import make_repo

    repo = make_repo(tmp_path / "r")
    (repo / "src" / "deep").mkdir(parents=True)
    (repo / "src" / "deep" / "k.py").write_text("x = 1\n")
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "run.sh").chmod(0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "more")
    store = Store(repo)
    base = store.head_commit()
    tree = store.tree_with(base, {"src/deep/k.py": "x = 2\n"})
    sha = store.add_candidate(base, tree, "Nested\n")
    assert git(repo, "diff", "--name-only", base, sha).split() == ["src/deep/k.py"]
    assert "100755" in git(repo, "ls-tree", sha, "run.sh")
    git(repo, "fsck", "--strict")


def test_notes_are_json_that_plain_git_reads(repo):
    store = Store(repo)
    base = store.head_commit()
    store.start_islands(base, {0: base}, create_base=True)
    sha = candidate(store, base, "A = 2\n")
    assert store.record(sha, {"status": "ok", "score": 2.5}, champion=(0, base))
    assert json.loads(git(repo, "notes", "--ref=gitevolve", "show", sha)) == {"score": 2.5, "status": "ok"}
    assert git(repo, "rev-parse", "gitevolve/island-0").strip() == sha
    git(repo, "fsck", "--strict")


def test_hundreds_of_notes_fan_out_and_all_stay_readable(repo):
    store = Store(repo)
    base = store.head_commit()
    shas = [candidate(store, base, f"A = {i}\n") for i in range(300)]
    for i, sha in enumerate(shas):
        store.record(sha, {"status": "ok", "score": i})
    assert len(git(repo, "notes", "--ref=gitevolve", "list").splitlines()) == 300
    notes = store.read_notes(store.ref_state().notes)
    assert {sha: n["score"] for sha, n in notes.items()} == {sha: i for i, sha in enumerate(shas)}
    assert json.loads(git(repo, "notes", "--ref=gitevolve", "show", shas[123]))["score"] == 123


def test_a_note_written_by_git_notes_in_between_is_kept(repo):
    store = Store(repo)
    base = store.head_commit()
    first, second = candidate(store, base, "A = 2\n"), candidate(store, base, "A = 3\n")
    store.record(first, {"score": 1})
    git(repo, "notes", "--ref=gitevolve", "add", "-m", '{"score": 99}', base)  # another writer
    store.record(second, {"score": 2})
    notes = store.read_notes(store.ref_state().notes)
    assert {sha: n["score"] for sha, n in notes.items()} == {first: 1, second: 2, base: 99}


def test_a_champion_branch_moved_by_someone_else_is_left_alone(repo):
    store = Store(repo)
    base = store.head_commit()
    store.start_islands(base, {0: base}, create_base=True)
    mine, theirs = candidate(store, base, "A = 2\n"), candidate(store, base, "A = 3\n")
    git(repo, "update-ref", "refs/heads/gitevolve/island-0", theirs)
    assert store.record(mine, {"score": 5}, champion=(0, base)) is False
    assert git(repo, "rev-parse", "gitevolve/island-0").strip() == theirs
    assert store.note(mine) == {"score": 5}


def test_ref_creation_is_compare_and_swap(repo):
    store = Store(repo)
    base = store.head_commit()
    store.start_islands(base, {0: base}, create_base=True)
    with pytest.raises(StaleRef):
        store.start_islands(base, {0: base}, create_base=True)


def test_named_runs_keep_their_own_refs_and_notes(repo):
    default, other = Store(repo), Store(repo, "wide")
    base = default.head_commit()
    default.start_islands(base, {0: base}, create_base=True)
    other.start_islands(base, {0: base}, create_base=True)
    default.record(base, {"score": 1})
    other.record(base, {"score": 2})
    assert default.note(base) == {"score": 1} and other.note(base) == {"score": 2}
    assert git(repo, "rev-parse", "--verify", "gitevolve/wide/island-0").strip() == base
    assert RunRefs("wide").notes == "refs/notes/gitevolve-wide"


@pytest.mark.parametrize("name", ["", "a/b", "island-3", "-x", "x.lock", "a b"])
def test_bad_run_names_are_refused(name):
    with pytest.raises(GitevolveError, match="run name"):
        RunRefs(name)


def test_outside_a_repository_is_a_clear_error(tmp_path):
    with pytest.raises(GitevolveError, match="not inside a git repository"):
        Store(tmp_path)
