"""Evaluation worktrees: one per parallel worker, under `.git/gitevolve/worktrees/`.

The user's checkout, index and current branch are never touched: a candidate is checked out
(detached) in a worktree of its own, and cleaned of anything the previous evaluation left
(build outputs, caches), so no evaluation sees another's files.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from gitevolve.errors import GitevolveError
from gitevolve.store import Store


# `git worktree add` and `prune` share .git/worktrees: one at a time. Checking out and cleaning
# inside an existing worktree touches only that worktree, so workers do that in parallel.
_registry = threading.Lock()


def worktree_root(store: Store) -> Path:
    return Path(store.repo.common_dir) / "gitevolve" / "worktrees"


def checkout(store: Store, slot: int, sha: str) -> Path:
    """Worktree `slot` of this run, at `sha`, with no untracked or ignored files."""
    path = worktree_root(store) / f"{store.refs.run}-{slot}"
    if (path / ".git").is_file():
        try:
            store.git("-C", str(path), "checkout", "--quiet", "--detach", "--force", sha)
            store.git("-C", str(path), "clean", "-ffdxq")
            return path
        except GitevolveError:
            pass
    # A missing, half-made or foreign directory (a crash during `worktree add`): start it afresh.
    with _registry:
        shutil.rmtree(path, ignore_errors=True)
        store.git("worktree", "prune")
        path.parent.mkdir(parents=True, exist_ok=True)
        store.git("worktree", "add", "--quiet", "--detach", "--force", str(path), sha)
    return path


def remove_all(store: Store) -> None:
    """Drop this run's worktrees (they are recreated on demand)."""
    with _registry:
        for path in worktree_root(store).glob(f"{store.refs.run}-*"):
            if path.name.removeprefix(f"{store.refs.run}-").isdigit():  # not run "a-b"'s, beside run "a"
                shutil.rmtree(path, ignore_errors=True)
        store.git("worktree", "prune")
