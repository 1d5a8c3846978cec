"""What git says about a candidate's past and neighbours, for the prompt.

A few git commands whatever the size of the run: `git log` with the run's notes for a lineage
or a set of commits, `for-each-ref` over the candidate pins for a parent's earlier children,
`git diff` for what another candidate does differently. Only git subprocesses: the model
operator calls these from several threads at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gitevolve.population import number
from gitevolve.store import Store

SEP, END = "\x1f", "\x1e"  # JSON notes escape control characters, so these cannot occur in them


@dataclass(frozen=True)
class Entry:
    sha: str
    subject: str
    note: dict | None

    @property
    def score(self) -> float | None:
        return number((self.note or {}).get("score"))

    @property
    def seed(self) -> bool:
        """The start of an island: the base, or a ref a run was started `--from`."""
        return self.note is None or self.note.get("island") is None


def _log(store: Store, *args: str) -> list[Entry]:
    out = store.git("log", f"--notes={store.refs.notes}", f"--format=%H{SEP}%s{SEP}%N{END}", *args)
    entries = []
    for record in out.split(END):
        record = record.strip("\n")
        if not record:
            continue
        sha, subject, raw = record.split(SEP, 2)
        try:
            note = json.loads(raw) if raw.strip() else None
        except json.JSONDecodeError:
            note = None
        entries.append(Entry(sha, subject, note if isinstance(note, dict) else None))
    return entries


def commits(store: Store, shas: list[str]) -> dict[str, Entry]:
    if not shas:
        return {}
    return {e.sha: e for e in _log(store, "--no-walk=unsorted", *dict.fromkeys(shas))}


def lineage(store: Store, sha: str, depth: int) -> list[Entry]:
    """`sha` and its first-parent ancestors, newest first, down to the island's seed or `depth` of them."""
    entries = []
    for entry in _log(store, "--first-parent", f"-n{depth + 1}", sha):
        entries.append(entry)
        if entry.seed:
            break
    return entries


def children(store: Store, sha: str, count: int) -> list[Entry]:
    """The latest `count` candidates made from `sha`, newest first."""
    out = store.git("for-each-ref", "--format=%(objectname) %(parent)", store.refs.namespace + "candidates/")
    kids = [line.split()[0] for line in out.splitlines() if line.split()[1:2] == [sha]]
    entries = list(commits(store, kids).values())
    entries.sort(key=lambda e: ((e.note or {}).get("iteration") or 0, e.sha), reverse=True)
    return entries[:count]


def diff(store: Store, old: str, new: str, files: list[str], max_lines: int) -> str:
    """What `new` changes against `old` in the evolvable files, without git's header lines."""
    out = store.git("diff", "--no-color", "--no-ext-diff", "--unified=2", old, new, "--", *files)
    lines = [line for line in out.splitlines() if not line.startswith(("diff --git ", "index "))]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more lines)"]
    return "\n".join(lines)
