"""`gitevolve runs` and `gitevolve forget`: the runs a repository holds, and dropping one.

A run is its refs: `refs/gitevolve/<run>/` (base, seeds, pinned candidates), its island branches
and its notes ref (store.RunRefs). Listing reads only refs; forgetting deletes them in one ref
transaction and says what its branches, base and notes held, so a run dropped by mistake can be
put back with `git update-ref` until git's garbage collection prunes the commits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gitevolve import worktrees
from gitevolve.errors import GitevolveError
from gitevolve.loop import run_lock
from gitevolve.store import ZERO, RunRefs, Store


@dataclass(frozen=True)
class RunSummary:
    name: str
    base: str
    islands: int
    candidates: int  # pinned commits: every candidate the run made, scored or not


def summaries(store: Store) -> list[RunSummary]:
    rows = []
    for name in store.run_names():
        state = Store(store.root, name).ref_state()
        rows.append(RunSummary(name, state.base or "", len(state.islands), len(state.pins)))
    return rows


@dataclass(frozen=True)
class Forgotten:
    run: str
    refs: int
    kept: dict[str, str]  # the island branches, the base, the seeds and the notes ref -> what they held


def forget(store: Store) -> Forgotten:
    """Delete every ref of `store`'s run (refused while a `gitevolve run` works on it)."""
    refs: RunRefs = store.refs
    state = store.ref_state()
    if state.base is None:
        raise GitevolveError(f"no run {refs.run!r} to forget ({store.known_runs()})")
    with run_lock(store):
        listed = store.git("for-each-ref", "--format=%(objectname) %(refname)",
                           refs.namespace, refs.branch_prefix, refs.notes).splitlines()
        doomed, kept = [], {}
        for line in listed:
            sha, ref = line.split(" ", 1)
            if ref.startswith(refs.branch_prefix):
                if not re.fullmatch(r"island-\d+", ref[len(refs.branch_prefix):]):
                    continue  # another run's branch under the default run's prefix, or the user's own
                kept[ref] = sha
            elif ref in (refs.base, refs.notes) or ref.startswith(refs.namespace + "seeds/"):
                kept[ref] = sha
            doomed.append((ref, sha))
        store.update_refs([(ref, ZERO, sha) for ref, sha in doomed], f"gitevolve forget {refs.run}")
    worktrees.remove_all(store)
    return Forgotten(refs.run, len(doomed), kept)
