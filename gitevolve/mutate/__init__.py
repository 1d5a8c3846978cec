"""Mutation operators: each proposes new contents for the evolvable files of a parent.

An operator is anything with a `name` and a `propose` method (see `Operator`); the built-in
tunables operator and the model-driven one plug in the same way. Operators never touch git:
they get file contents and return file contents, and the loop commits what passes the
EVOLVE-BLOCK check.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

from gitevolve.errors import GitevolveError
from gitevolve.population import Candidate


class MutationRejected(GitevolveError):
    """This proposal cannot become a candidate (no applicable edit, edit outside the blocks ...)."""


@dataclass(frozen=True)
class Program:
    """A candidate with the text of its evolvable files, as an operator sees it."""

    candidate: Candidate
    files: dict[str, str]
    island: int | None = None  # the island a mutation of it is for (a seed is every island's)


@dataclass(frozen=True)
class Observed:
    """A scored candidate, as an operator that learns from scores is told of it."""

    settings: dict  # its tunables' values by key (tunables.settings), from its note
    score: float | None  # None: it failed


@dataclass(frozen=True)
class Proposal:
    files: dict[str, str]  # only the files that change
    subject: str  # the commit's subject line: what the mutation does
    body: str  # why: the operator's description or the model's rationale
    operator: str  # e.g. "tunables:mutate", "llm:gemini-2.5-flash"
    meta: dict = field(default_factory=dict)  # goes into the note (model, tokens, latency ...)


class Operator(Protocol):
    """Also read by the loop when an operator has them: `concurrency` (proposals it may be asked
    for at once), `duplicate_attempts` (proposals per iteration while they rebuild programs the
    island already has; 8 otherwise), `duplicate(parent, proposal)` (told when that happens) and
    `observe(island, Observed)` (told of every scored candidate of an island: all of them when a
    run starts, then each batch's in the order it was planned)."""

    name: str

    def propose(self, parent: Program, inspirations: list[Program], rng: random.Random) -> Proposal: ...
