"""The git repository as the run's only storage.

A candidate is a commit whose parent is the candidate it was mutated from, pinned by a ref
under `refs/gitevolve/<run>/candidates/`; its score is a JSON note on a notes ref of the run's
own; each island's champion is a branch. Nothing else holds state, so a run resumes, and is
shared, by reading refs and notes.

Objects are written through GitPython's object database (no process per object); ref updates
go through `git update-ref --stdin`, one atomic transaction each, with the old value checked so
a concurrent writer is detected instead of overwritten. Bulk reads (every note of a run) use one
`git cat-file --batch` process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import git
from git.objects.fun import tree_entries_from_data, tree_to_stream
from gitdb import LooseObjectDB
from gitdb.base import IStream

from gitevolve.errors import GitevolveError, StaleRef

ZERO = "0" * 40
IDENTITY = git.Actor("gitevolve", "gitevolve@localhost")
TREE_MODE = 0o040000
BLOB_MODE = 0o100644
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TRAILER = re.compile(r"^Gitevolve-([A-Za-z-]+): (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class RunRefs:
    """Where a run keeps its refs. The default run gets the short names users type."""

    run: str

    def __post_init__(self) -> None:
        if not RUN_NAME.match(self.run) or self.run.endswith(".lock") or re.match(r"island-\d+$", self.run):
            raise GitevolveError(f"run name {self.run!r}: use letters, digits, '.', '_' or '-' (not 'island-N')")

    @property
    def default(self) -> bool:
        return self.run == "default"

    @property
    def flag(self) -> str:
        """What a command needs to name this run: nothing for the default one."""
        return "" if self.default else f" --run {self.run}"

    @property
    def namespace(self) -> str:
        return f"refs/gitevolve/{self.run}/"

    @property
    def branch_prefix(self) -> str:
        return "refs/heads/gitevolve/" if self.default else f"refs/heads/gitevolve/{self.run}/"

    @property
    def notes(self) -> str:
        # One notes ref per run: the same commit (the base, say) can carry a different score in
        # each run, measured by each run's own evaluator.
        return "refs/notes/gitevolve" if self.default else f"refs/notes/gitevolve-{self.run}"

    @property
    def base(self) -> str:
        return self.namespace + "base"

    def island(self, k: int) -> str:
        return f"{self.branch_prefix}island-{k}"

    def seed(self, k: int) -> str:
        return f"{self.namespace}seeds/island-{k}"

    def pin(self, sha: str) -> str:
        return f"{self.namespace}candidates/{sha}"


@dataclass(frozen=True)
class RefState:
    """The run's refs at one moment: one `for-each-ref`."""

    base: str | None
    seeds: dict[int, str]
    islands: dict[int, str]
    pins: set[str]
    notes: str | None


def parse_trailers(message: str) -> dict[str, str]:
    return {key.lower(): value.strip() for key, value in TRAILER.findall(message)}


def format_message(subject: str, body: str, trailers: dict[str, object]) -> str:
    subject = " ".join(subject.split())[:100] or "Mutate"
    lines = [subject, ""]
    if body.strip():
        lines += [body.strip(), ""]
    lines += [f"Gitevolve-{key}: {value}" for key, value in trailers.items() if value is not None]
    return "\n".join(lines) + "\n"


class Store:
    """Reads and writes one run's candidates, scores and champions in a repository."""

    def __init__(self, path: Path | str, run: str = "default") -> None:
        try:
            self.repo = git.Repo(path, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise GitevolveError(f"{path} is not inside a git repository: run `git init` first") from None
        if self.repo.bare:
            raise GitevolveError("gitevolve needs a repository with a work tree, not a bare one")
        self.root = Path(self.repo.working_tree_dir)
        self.git_dir = Path(self.repo.git_dir)
        # GitPython's own store() runs `git hash-object` per object; gitdb writes loose objects
        # in-process (atomically: temp file, then rename), which is what keeps bookkeeping cheap.
        self._objects = LooseObjectDB(str(Path(self.repo.common_dir) / "objects"))
        self.refs = RunRefs(run)
        self._notes_head: str | None = None
        self._notes_known = False

    def close(self) -> None:
        self.repo.close()

    # --- plain git -----------------------------------------------------------------------

    def git(self, *args: str, input: bytes | None = None, check: bool = True) -> str:
        done = subprocess.run(
            ["git", *args], cwd=self.root, input=input, capture_output=True, env=_git_env()
        )
        if check and done.returncode != 0:
            said = (done.stderr or done.stdout).decode(errors="replace").strip()  # `git commit` explains on stdout
            raise GitevolveError(f"git {args[0]} failed: {said or f'exit status {done.returncode}'}")
        return done.stdout.decode(errors="replace")

    def resolve(self, rev: str) -> str:
        """The commit a revision names, or a clear error."""
        try:
            return self.repo.rev_parse(f"{rev}^{{commit}}").hexsha
        except (git.BadName, ValueError, git.BadObject):
            raise GitevolveError(f"{rev!r} does not name a commit in this repository") from None

    def head_commit(self) -> str | None:
        try:
            return self.repo.head.commit.hexsha
        except ValueError:
            return None

    def read_file(self, sha: str, path: str) -> str:
        try:
            blob = self.repo.commit(sha).tree / path
        except KeyError:
            raise GitevolveError(f"{path!r} is not in commit {sha[:10]}") from None
        return blob.data_stream.read().decode()

    def parent(self, sha: str) -> str | None:
        parents = self.repo.commit(sha).parents
        return parents[0].hexsha if parents else None

    def message(self, sha: str) -> str:
        return self.repo.commit(sha).message

    # --- refs ------------------------------------------------------------------------------

    def run_names(self) -> list[str]:
        """Every run in the repository (each has a base ref), the default first."""
        found = []
        for line in self.git("for-each-ref", "--format=%(refname)", "refs/gitevolve/").splitlines():
            m = re.fullmatch(r"refs/gitevolve/([^/]+)/base", line.strip())
            if m:
                found.append(m.group(1))
        return sorted(found, key=lambda name: (name != "default", name))

    def known_runs(self) -> str:
        """For an error about a run that is not there: the ones that are."""
        runs = self.run_names()
        return f"runs here: {', '.join(runs)}" if runs else "no run yet"

    def ref_state(self) -> RefState:
        out = self.git(
            "for-each-ref", "--format=%(objectname) %(refname)",
            self.refs.namespace, self.refs.branch_prefix, self.refs.notes,
        )
        seeds, islands, pins = {}, {}, set()
        base = notes = None
        island_ref = re.compile(re.escape(self.refs.branch_prefix) + r"island-(\d+)$")
        seed_ref = re.compile(re.escape(self.refs.namespace) + r"seeds/island-(\d+)$")
        for line in out.splitlines():
            sha, ref = line.split(" ", 1)
            if ref == self.refs.base:
                base = sha
            elif ref == self.refs.notes:
                notes = sha
            elif ref.startswith(self.refs.namespace + "candidates/"):
                pins.add(sha)
            elif m := island_ref.match(ref):
                islands[int(m.group(1))] = sha
            elif m := seed_ref.match(ref):
                seeds[int(m.group(1))] = sha
        return RefState(base, seeds, islands, pins, notes)

    def tidy(self) -> None:
        """Let git pack what a run wrote: objects are written loose and pins are loose refs.

        `git gc --auto` does nothing until there are thousands of loose objects; run in the
        foreground so that a command that returned has left nothing writing to the repository.
        """
        self.git("-c", "gc.autoDetach=false", "gc", "--auto", "--quiet", check=False)

    def update_refs(self, updates: list[tuple[str, str, str | None]], reason: str) -> None:
        """Apply (ref, new, old) updates as one transaction. old=None means 'must not exist yet'."""
        lines = "".join(f"update {ref} {new} {old or ZERO}\n" for ref, new, old in updates)
        done = subprocess.run(
            ["git", "update-ref", "-m", f"gitevolve: {reason}", "--stdin"],
            cwd=self.root, input=lines.encode(), capture_output=True, env=_git_env(),
        )
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip()
            if "but expected" in err or "already exists" in err or "unable to resolve" in err:
                raise StaleRef(f"another writer moved a ref first: {err}")
            raise GitevolveError(f"git update-ref failed: {err}")

    # --- objects ---------------------------------------------------------------------------

    def _store(self, kind: bytes, data: bytes) -> bytes:
        return self._objects.store(IStream(kind, len(data), BytesIO(data))).binsha

    def _tree_entries(self, binsha: bytes) -> dict[str, tuple[bytes, int]]:
        data = self.repo.odb.stream(binsha).read()
        return {name: (sha, mode) for sha, mode, name in tree_entries_from_data(data)}

    def _write_tree(self, entries: dict[str, tuple[bytes, int]]) -> bytes:
        # git orders tree entries as if directory names ended in '/'.
        order = sorted(entries, key=lambda n: n + "/" if entries[n][1] == TREE_MODE else n)
        buf = BytesIO()
        tree_to_stream([(entries[n][0], entries[n][1], n) for n in order], buf.write)
        return self._store(b"tree", buf.getvalue())

    def _replace_path(self, tree: bytes | None, parts: list[str], blob: bytes) -> bytes:
        entries = self._tree_entries(tree) if tree else {}
        head, rest = parts[0], parts[1:]
        if rest:
            sub = entries.get(head)
            entries[head] = (self._replace_path(sub[0] if sub and sub[1] == TREE_MODE else None, rest, blob), TREE_MODE)
        else:
            mode = entries.get(head, (None, BLOB_MODE))[1]
            entries[head] = (blob, mode if mode != TREE_MODE else BLOB_MODE)
        return self._write_tree(entries)

    def _commit(self, tree: bytes, parents: list[str], message: str) -> str:
        now = int(time.time())
        commit = git.Commit(
            self.repo, git.Commit.NULL_BIN_SHA, tree=git.Tree(self.repo, tree),
            author=IDENTITY, authored_date=now, author_tz_offset=0,
            committer=IDENTITY, committed_date=now, committer_tz_offset=0, message=message,
            parents=[git.Commit(self.repo, bytes.fromhex(p)) for p in parents], encoding="UTF-8",
        )
        buf = BytesIO()
        commit._serialize(buf)
        return self._store(b"commit", buf.getvalue()).hex()

    def tree_with(self, parent: str, files: dict[str, str]) -> str:
        """The tree of `parent` with `files` replaced (written, but nothing points at it yet)."""
        tree = self.repo.commit(parent).tree.binsha
        for path, text in files.items():
            tree = self._replace_path(tree, path.split("/"), self._store(b"blob", text.encode()))
        return tree.hex()

    # --- candidates and notes --------------------------------------------------------------

    def add_candidate(self, parent: str, tree: str, message: str) -> str:
        """Commit a candidate and pin it. The commit exists before the ref that makes it reachable."""
        sha = self._commit(bytes.fromhex(tree), [parent], message)
        self.update_refs([(self.refs.pin(sha), sha, None)], f"candidate {sha[:10]}")
        return sha

    def movable_branch(self, ref: str, *, force: bool) -> str | None:
        """Branch `ref`'s commit, None if it does not exist; an error if it does and not `force`."""
        old = self.ref_value(ref)
        if old is not None and not force:
            name = ref.removeprefix("refs/heads/")
            raise GitevolveError(f"branch {name} already exists: pass --force to move it, or --branch NAME")
        return old

    def commit_branch(self, ref: str, parent: str, tree: str, message: str, *, force: bool, signoff: bool = False) -> str:
        """A commit on `parent` with `tree`, as branch `ref`; an existing branch moves only with `force`.

        Unlike the run's candidates, this commit is the user's, for their pull request: `git
        commit-tree` makes it, so it carries their user.name and user.email and is signed where
        commit.gpgSign says so; `signoff` adds their Signed-off-by."""
        old = self.movable_branch(ref, force=force)
        if signoff:
            ident = self.git("var", "GIT_COMMITTER_IDENT").rsplit(" ", 2)[0]
            message = message.rstrip("\n") + f"\nSigned-off-by: {ident}\n"
        # commit-tree signs only when told (git 2.39 ignores commit.gpgSign there): read the setting.
        sign = self.git("config", "--type=bool", "--default=false", "commit.gpgSign").strip() == "true"
        done = subprocess.run(["git", "commit-tree", tree, "-p", parent, *(["-S"] if sign else []), "-F", "-"],
                              cwd=self.root, env=_git_env(), input=message.encode(), capture_output=True)
        if done.returncode != 0:
            lines = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
            told = next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[-1] if lines else "")
            raise GitevolveError(f"git could not make the promoted commit ({told.strip()}): set user.name and user.email "
                                 f"(git config), or fix the signing that commit.gpgSign asks for")
        sha = done.stdout.decode().strip()
        self.update_refs([(ref, sha, old)], f"promote {sha[:10]}")
        return sha

    def start_islands(self, base: str, seeds: dict[int, str], create_base: bool) -> None:
        """Create the base ref (once) and, per new island, its seed ref and champion branch."""
        updates = [(self.refs.base, base, None)] if create_base else []
        for k, seed in seeds.items():
            updates += [(self.refs.seed(k), seed, None), (self.refs.island(k), seed, None)]
        self.update_refs(updates, "start islands")

    def record(self, sha: str, note: dict, champion: tuple[int, str] | None = None) -> bool:
        """Write `sha`'s note and, if given, move island k's branch old -> sha: one transaction.

        `champion` is (island, the branch's expected old value). Retried when another writer
        moved the notes ref in between (their note is kept and ours added on top); a champion
        branch that moved under us is left alone and the note still lands. Returns whether the
        branch moved.
        """
        payload = (json.dumps(note, indent=2, sort_keys=True) + "\n").encode()
        for _ in range(20):
            old = self._current_notes_head()
            new = self._notes_commit(old, {sha: payload})
            updates = [(self.refs.notes, new, old)]
            if champion is not None:
                k, old_champion = champion
                updates.append((self.refs.island(k), sha, old_champion))
            try:
                self.update_refs(updates, f"score {sha[:10]}")
                self._notes_head, self._notes_known = new, True
                return champion is not None
            except StaleRef:
                self._notes_known = False
                if champion is not None and self.ref_value(self.refs.island(champion[0])) != champion[1]:
                    champion = None
        raise GitevolveError(f"could not record the note of {sha[:10]}: the notes ref keeps moving")

    def ref_value(self, ref: str) -> str | None:
        out = self.git("rev-parse", "--verify", "--quiet", ref, check=False).strip()
        return out or None

    def _current_notes_head(self) -> str | None:
        if not self._notes_known:
            self._notes_head, self._notes_known = self.ref_value(self.refs.notes), True
        return self._notes_head

    def _notes_commit(self, parent: str | None, notes: dict[str, bytes]) -> str:
        root = self.repo.commit(parent).tree.binsha if parent else None
        entries = self._tree_entries(root) if root else {}
        for sha, payload in notes.items():
            blob = self._store(b"blob", payload)
            # A flat 40-hex entry (written by `git notes` on a small tree) would shadow ours.
            entries.pop(sha, None)
            fan = entries.get(sha[:2])
            entries[sha[:2]] = (self._put_note(fan[0] if fan else None, sha[2:], blob), TREE_MODE)
        message = "Notes added by 'gitevolve'\n"
        return self._commit(self._write_tree(entries), [parent] if parent else [], message)

    def _put_note(self, tree: bytes | None, rest: str, blob: bytes) -> bytes:
        entries = self._tree_entries(tree) if tree else {}
        deeper = entries.get(rest[:2])
        if deeper and deeper[1] == TREE_MODE:  # git fans out again on very large notes trees
            entries[rest[:2]] = (self._put_note(deeper[0], rest[2:], blob), TREE_MODE)
        else:
            entries[rest] = (blob, BLOB_MODE)
        return self._write_tree(entries)

    def read_notes(self, notes_head: str | None) -> dict[str, dict]:
        """Every note of the run, by commit: one ls-tree and one cat-file, whatever the count."""
        if notes_head is None:
            return {}
        listing = self.git("ls-tree", "-r", notes_head)
        blobs: dict[str, str] = {}
        for line in listing.splitlines():
            meta, path = line.split("\t", 1)
            blobs[path.replace("/", "")] = meta.split()[2]
        contents = self.cat_batch(list(blobs.values()))
        notes = {}
        for commit, blob in blobs.items():
            try:
                notes[commit] = json.loads(contents[blob])
            except (json.JSONDecodeError, UnicodeDecodeError):
                notes[commit] = {"status": "unreadable", "reason": "the note is not JSON"}
        return notes

    def note(self, sha: str) -> dict | None:
        out = subprocess.run(
            ["git", "notes", f"--ref={self.refs.notes}", "show", sha],
            cwd=self.root, capture_output=True, env=_git_env(),
        )
        if out.returncode != 0:
            return None
        return json.loads(out.stdout)

    def cat_batch(self, shas: list[str]) -> dict[str, bytes]:
        """Contents of many objects in one `git cat-file --batch`."""
        if not shas:
            return {}
        done = subprocess.run(
            ["git", "cat-file", "--batch"], cwd=self.root, input="\n".join(shas).encode() + b"\n",
            capture_output=True, env=_git_env(), check=True,
        )
        out, pos, result = done.stdout, 0, {}
        for sha in shas:
            end = out.index(b"\n", pos)
            header = out[pos:end].split()
            if len(header) < 3:  # "<sha> missing"
                pos = end + 1
                continue
            size = int(header[2])
            result[sha] = out[end + 1 : end + 1 + size]
            pos = end + 1 + size + 1
        return result


# Variables that point git at another repository, index or object store: set when gitevolve
# itself runs inside a git hook, they would send our commands elsewhere. Identity variables
# (GIT_AUTHOR_NAME ...) and the rest stay: they are the user's settings.
_LOCATION = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
             "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_PREFIX", "GIT_QUARANTINE_PATH")


def _git_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _LOCATION} | {"GIT_TERMINAL_PROMPT": "0"}
