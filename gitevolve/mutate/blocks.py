"""EVOLVE-BLOCK markers: what an operator may change, enforced on every proposal.

A file with `EVOLVE-BLOCK-START` / `EVOLVE-BLOCK-END` lines (in any comment syntax: `#`, `//`,
`/* */`) may change only between them; a file without markers may change anywhere. OpenEvolve
treated the markers as hints (their issue #422); here an edit outside them is refused.
"""

from __future__ import annotations

from gitevolve.mutate import MutationRejected

START, END = "EVOLVE-BLOCK-START", "EVOLVE-BLOCK-END"


def regions(text: str) -> list[tuple[int, int]]:
    """(first, last) line indexes strictly inside each block; raises on unbalanced markers."""
    found, start = [], None
    for i, line in enumerate(text.splitlines()):
        if START in line:
            if start is not None:
                raise MutationRejected(f"line {i + 1}: {START} inside another block")
            start = i
        elif END in line:
            if start is None:
                raise MutationRejected(f"line {i + 1}: {END} without a {START}")
            found.append((start + 1, i - 1))
            start = None
    if start is not None:
        raise MutationRejected(f"line {start + 1}: {START} is never closed")
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


def editable_lines(text: str) -> range | set[int]:
    """The 0-based lines an operator may change: those inside blocks, or all when there are none."""
    if not has_blocks(text):
        return range(len(text.splitlines()))
    return {i for first, last in regions(text) for i in range(first, last + 1)}


def check(path: str, before: str, after: str) -> None:
    """Refuse `after` if it changed anything outside `before`'s blocks, or the blocks themselves."""
    if not has_blocks(before):
        return
    try:
        old, new = frame(before), frame(after)
    except MutationRejected as e:
        raise MutationRejected(f"{path}: the edit broke the EVOLVE-BLOCK markers ({e})") from None
    if len(old) != len(new):
        raise MutationRejected(f"{path}: the edit added or removed EVOLVE-BLOCK markers")
    for i, (a, b) in enumerate(zip(old, new)):
        if a != b:
            where = "before the first block" if i == 0 else "after the last block" if i == len(old) - 1 else f"between blocks {i} and {i + 1}"
            changed = next((x for x, y in zip(a + [""], b + [""]) if x != y), "")
            raise MutationRejected(f"{path}: the edit changed text outside the EVOLVE-BLOCK ({where}: {changed.strip()[:60]!r})")
