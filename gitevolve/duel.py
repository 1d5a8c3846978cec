"""Head to head: a challenger is evaluated again beside an island's champion before it takes the branch.

One evaluation's score is noisy (repeats of one setting differed by 6.6% at the median and up
to 23% on the CPU), so the best of many candidates is partly the luckiest draw. Before a
challenger moves an island's branch, both are evaluated `times` more, interleaved (C I I C C I
...) so that drift on a shared machine falls on both alike, and the challenger takes the branch
only if its new mean leads the champion's new mean by the margin. The notes keep every
measurement; a candidate's score becomes the mean of its own.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable

from gitevolve.population import Candidate


@dataclass(frozen=True)
class Duel:
    challenger: list  # its new scores, in order; None where that evaluation did not pass
    incumbent: list
    margin: float

    @property
    def won(self) -> bool:
        ours, theirs = _passed(self.challenger), _passed(self.incumbent)
        if len(ours) < len(self.challenger) or not ours:
            return False  # a challenger that fails when evaluated again is not one to build on
        if not theirs:
            return True
        lead = statistics.mean(ours) - statistics.mean(theirs)
        return lead > self.margin * abs(statistics.mean(theirs))

    def describe(self) -> str:
        ours, theirs = _passed(self.challenger), _passed(self.incumbent)
        mean = lambda xs: f"{statistics.mean(xs):.4g}" if xs else "-"  # noqa: E731
        verdict = "takes the branch" if self.won else "the champion stays"
        return (f"re-measured {len(self.challenger)}x each, interleaved: {mean(ours)} against the champion's "
                f"{mean(theirs)} (margin {self.margin:.0%}): {verdict}")

    def to_json(self, against: str) -> dict:
        return {"against": against, "challenger": self.challenger, "incumbent": self.incumbent,
                "margin": self.margin, "won": self.won}


def clear_lead(challenger: float, incumbent: float, sure: float) -> bool:
    """Whether a first score leads by more than noise could make up: no duel needed."""
    return sure > 0 and challenger - incumbent > sure * abs(incumbent)


def duel(measure: Callable[[Candidate], float | None], incumbent: Candidate, challenger: Candidate, times: int,
         margin: float) -> Duel:
    """Evaluate both `times` more, interleaved; `measure` gives a score, None if the evaluation failed."""
    ours: list = []
    theirs: list = []
    for i in range(times):
        for c in ((challenger, incumbent) if i % 2 == 0 else (incumbent, challenger)):
            (ours if c is challenger else theirs).append(measure(c))
    return Duel(ours, theirs, margin)


def measurements(note: dict) -> list[float]:
    """Every score a candidate's note records (its first evaluation's, then its re-measurements)."""
    kept = note.get("measurements")
    if isinstance(kept, list):
        return [x for x in kept if isinstance(x, (int, float)) and not isinstance(x, bool)]
    score = note.get("score")
    return [score] if isinstance(score, (int, float)) and not isinstance(score, bool) else []


def _passed(scores: list) -> list[float]:
    return [x for x in scores if x is not None]
