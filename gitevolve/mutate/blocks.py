"""EVOLVE-BLOCK markers: what an operator may change, enforced on every proposal.

The parsing lives in gitevolve.hookkit, the public module that evaluator hooks use too; here its
errors become MutationRejected, the agent's refusal of a proposal.

A file with `EVOLVE-BLOCK-START` / `EVOLVE-BLOCK-END` lines (in any comment syntax: `#`, `//`,
`/* */`) may change only between them; a file without markers may change anywhere. OpenEvolve
treated the markers as hints (their issue #422); here an edit outside them is refused.
"""

from __future__ import annotations

from gitevolve.mutate import MutationRejected

from gitevolve import hookkit
from gitevolve.hookkit import END, START, has_blocks  # noqa: F401  (re-exported for the agent)


def regions(text: str) -> list[tuple[int, int]]:
    """(first, last) line indexes strictly inside each block; raises on unbalanced markers."""
    try:
        return hookkit.regions(text)
    except hookkit.FrameChanged as e:
        raise MutationRejected(str(e)) from None


def frame(text: str) -> list[list[str]]:
    """The lines outside the blocks, as the runs between them (markers included)."""
    try:
        return hookkit.frame(text)
    except hookkit.FrameChanged as e:
        raise MutationRejected(str(e)) from None


def editable_lines(text: str) -> range | set[int]:
    """The 0-based lines an operator may change: those inside blocks, or all when there are none."""
    if not has_blocks(text):
        return range(len(text.splitlines()))
    return {i for first, last in regions(text) for i in range(first, last + 1)}


def check(path: str, before: str, after: str) -> None:
    """Refuse `after` if it changed anything outside `before`'s blocks, or the blocks themselves."""
    try:
        hookkit.check_frame(path, before, after)
    except hookkit.FrameChanged as e:
        raise MutationRejected(str(e)) from None
