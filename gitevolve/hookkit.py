"""What an evaluator hook may rely on from gitevolve: a small, stable, standard-library-only API.

A hook is a separate program (docs/hooks.md); it depends on the protocol, not on the agent's
internals, and an evaluator that users copy to write their own must keep working when the agent
changes. Everything here is kept compatible across releases; everything else in `gitevolve` may
change. The agent itself uses these same functions, so the two cannot drift apart.

    regions(text), frame(text), has_blocks(text)   the EVOLVE-BLOCK markers, parsed
    check_frame(path, before, after)               raises FrameChanged if `after` edited
                                                   outside `before`'s blocks
    signal_group(pgid, sig), exit_words(code)      process-group helpers for supervising a child
"""

from __future__ import annotations

import os
import signal

START, END = "EVOLVE-BLOCK-START", "EVOLVE-BLOCK-END"


class FrameChanged(ValueError):
    """Text outside the EVOLVE-BLOCKs changed, or the markers themselves are broken."""


def regions(text: str) -> list[tuple[int, int]]:
    """(first, last) line indexes strictly inside each block; raises FrameChanged on unbalanced markers."""
    found, start = [], None
    for i, line in enumerate(text.splitlines()):
        if START in line:
            if start is not None:
                raise FrameChanged(f"line {i + 1}: {START} inside another block")
            start = i
        elif END in line:
            if start is None:
                raise FrameChanged(f"line {i + 1}: {END} without a {START}")
            found.append((start + 1, i - 1))
            start = None
    if start is not None:
        raise FrameChanged(f"line {start + 1}: {START} is never closed")
    return found


def has_blocks(text: str) -> bool:
    return START in text


def frame(text: str) -> list[list[str]]:
    """The lines outside the blocks, as the runs between them (markers included)."""
    lines = text.splitlines()
    runs, position = [], 0
    for first, last in regions(text):
        runs.append(lines[position:first])
        position = last + 1
    runs.append(lines[position:])
    return runs


def check_frame(path: str, before: str, after: str) -> None:
    """Raise FrameChanged if `after` changed anything outside `before`'s blocks, or the blocks themselves."""
    if not has_blocks(before):
        return
    try:
        old, new = frame(before), frame(after)
    except FrameChanged as e:
        raise FrameChanged(f"{path}: the edit broke the EVOLVE-BLOCK markers ({e})") from None
    if len(old) != len(new):
        raise FrameChanged(f"{path}: the edit added or removed EVOLVE-BLOCK markers")
    for i, (a, b) in enumerate(zip(old, new)):
        if a != b:
            where = "before the first block" if i == 0 else "after the last block" if i == len(old) - 1 else f"between blocks {i} and {i + 1}"
            changed = next((x for x, y in zip(a + [""], b + [""]) if x != y), "")
            raise FrameChanged(f"{path}: the edit changed text outside the EVOLVE-BLOCK ({where}: {changed.strip()[:60]!r})")


def signal_group(pgid: int, sig: int) -> None:
    """Signal a process group that may already be gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone (PermissionError: macOS says so for a group of zombies)


def exit_words(code: int) -> str:
    """A child's return code in words: "exited with status 3", "was killed by SIGSEGV"."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
