"""Model calls and refused replies, kept in the repository beside the run's other refs.

`refs/gitevolve/<run>/llm` points at one JSON blob:

    {"models":   {"<model>": {"calls", "replies", "proposals", "retries", "prompt_tokens",
                              "completion_tokens", "seconds", "failures": {"<kind>": n}}},
     "feedback": {"<parent sha>": [{"model", "kind", "reason", "at"}, ...]}}

`models` is what `gitevolve status` shows per model, failed calls included (those made no
commit, so no note could count them). `feedback` holds the last reasons a parent's replies were
refused, which the next prompt for that parent repeats, in this run or a later one. Each write is
one compare-and-swap ref update: a crash leaves the previous state, never half of one. A blob and
not a commit: its history would say nothing the counters do not.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from typing import Callable

from gitevolve.errors import GitevolveError, StaleRef
from gitevolve.store import Store

FEEDBACK_PER_PARENT = 3
FEEDBACK_PARENTS = 500
REASON_CHARS = 400
COUNTERS = ("calls", "replies", "proposals", "retries", "prompt_tokens", "completion_tokens")


def ref(store: Store) -> str:
    return store.refs.namespace + "llm"


def read(store: Store) -> tuple[str | None, dict]:
    """The ledger's blob and contents; empty when the run has made no model call."""
    sha = store.ref_value(ref(store))
    if sha is None:
        return None, {"models": {}, "feedback": {}}
    try:
        state = json.loads(store.git("cat-file", "blob", sha))
    except json.JSONDecodeError as e:
        raise GitevolveError(f"{ref(store)} is not the JSON gitevolve writes ({e}): delete it with "
                             f"`git update-ref -d {ref(store)}` to start its counts afresh") from None
    return sha, {"models": state.get("models", {}), "feedback": state.get("feedback", {})}


class Ledger:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._sha, self._state = read(store)

    def feedback(self, parent: str) -> list[dict]:
        with self._lock:
            return list(self._state["feedback"].get(parent, []))

    def record(self, model: str, *, attempts: int, prompt_tokens: int = 0, completion_tokens: int = 0,
               seconds: float = 0.0, replied: bool, proposed: bool = False, failure: str | None = None,
               parent: str | None = None, reason: str | None = None) -> None:
        """Count one call (and its retries); a refused reply also leaves its reason for the parent."""

        def change(state: dict) -> None:
            usage = state["models"].setdefault(model, {})
            for name, n in zip(COUNTERS, (1, replied, proposed, attempts - 1, prompt_tokens, completion_tokens)):
                usage[name] = usage.get(name, 0) + int(n)
            usage["seconds"] = round(usage.get("seconds", 0.0) + seconds, 3)
            _refuse(state, model, failure, parent, reason)

        self._write(change)

    def refused(self, model: str, *, failure: str, parent: str, reason: str) -> None:
        """A reply that applied but was refused later (a program the island already has): counted
        under its model and told to the next prompt for the parent, the call itself already counted."""
        self._write(lambda state: _refuse(state, model, failure, parent, reason))

    def _write(self, change: Callable[[dict], None]) -> None:
        with self._lock:
            for _ in range(10):
                change(self._state)
                payload = (json.dumps(self._state, indent=1) + "\n").encode()  # unsorted: feedback keeps recency order
                sha = self.store.git("hash-object", "-w", "--stdin", input=payload).strip()
                try:
                    self.store.update_refs([(ref(self.store), sha, self._sha)], "model usage")
                    self._sha = sha
                    return
                except StaleRef:  # another writer (a second machine's run sharing the refs): redo on theirs
                    self._sha, self._state = read(self.store)
            raise StaleRef(f"could not update {ref(self.store)}: it keeps moving")


def _refuse(state: dict, model: str, failure: str | None, parent: str | None, reason: str | None) -> None:
    usage = state["models"].setdefault(model, {})
    if failure:
        failures = usage.setdefault("failures", {})
        failures[failure] = failures.get(failure, 0) + 1
    if parent and reason:
        kept = state["feedback"].pop(parent, [])  # popped and put back: the dict stays in recency order
        kept.append({"model": model, "kind": failure, "reason": reason[:REASON_CHARS],
                     "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        state["feedback"][parent] = kept[-FEEDBACK_PER_PARENT:]
        for old in list(state["feedback"])[:-FEEDBACK_PARENTS]:
            del state["feedback"][old]
