"""Which candidate to mutate next, and which others to show the operator.

A policy, not a state: it reads the island's population and a random stream, and keeps
nothing, like an Optuna sampler. Parent and inspirations always come from the parent's own
island (OpenEvolve's leaked across islands: their issues #40, #138, #222); ideas cross
islands only by migration.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gitevolve.config import Config
from gitevolve.population import Candidate, Population, cell, island_population


@dataclass(frozen=True)
class Choice:
    parent: Candidate
    inspirations: list[Candidate]
    how: str  # elite | exploitation | exploration


def choose(population: Population, island: int, config: Config, rng: random.Random) -> Choice | None:
    """A parent and inspirations from `island`, or None while the island has nothing scored."""
    pool = island_population(population, island, config.features, config.population_size)
    if not pool:
        return None
    s = config.selection
    draw = rng.random()
    if draw < s.elite:
        how, parent = "elite", rng.choice(pool[: max(1, len(pool) // 5)])
    elif draw < s.elite + s.exploitation:
        # Rank weights rather than raw scores: scores may be negative, or differ by orders of magnitude.
        how, parent = "exploitation", rng.choices(pool, weights=[1.0 / (r + 1) for r in range(len(pool))])[0]
    else:
        how, parent = "exploration", rng.choice(pool)
    return Choice(parent, inspirations(pool, parent, config, rng), how)


def inspirations(pool: list[Candidate], parent: Candidate, config: Config, rng: random.Random) -> list[Candidate]:
    """The island's best, then candidates from MAP-Elites cells other than the parent's, for diversity."""
    wanted = config.selection.inspirations
    others = [c for c in pool if c.sha != parent.sha]
    if wanted == 0 or not others:
        return []
    chosen = [others[0]]
    home = cell(parent, config.features)
    elsewhere = [c for c in others[1:] if cell(c, config.features) != home] or others[1:]
    chosen += rng.sample(elsewhere, min(wanted - 1, len(elsewhere)))
    return chosen
