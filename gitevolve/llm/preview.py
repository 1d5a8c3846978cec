"""`gitevolve prompt <rev>`: the messages a run would send for that parent, without sending them."""

from __future__ import annotations

import random

from gitevolve import loop, selection
from gitevolve.config import Config
from gitevolve.llm.ledger import Ledger
from gitevolve.llm.prompt import Prompts
from gitevolve.mutate import Observed
from gitevolve.population import Candidate, island_population, load
from gitevolve.store import Store


def messages(store: Store, config: Config, rev: str) -> list[dict]:
    """The prompt for `rev`; its inspirations drawn from its island as a run draws them."""
    sha = store.resolve(rev)
    state = store.ref_state()
    candidate, inspirations, tried = None, [], []
    if state.base is not None:
        population = load(store, state)
        candidate = population.candidates.get(sha)
        if candidate is not None and candidate.island is not None:
            pool = island_population(population, candidate.island, config.features, config.population_size)
            rng = random.Random(f"{config.seed}/{store.refs.run}/prompt/{sha}")
            inspirations = selection.inspirations(pool, candidate, config, rng)
            tried = [Observed(c.settings, c.score if c.alive else None) for c in population.members(candidate.island)
                     if c.settings and c.status != "pending"]
    if candidate is None:  # not (yet) a candidate of this run: its code and history still make a prompt
        candidate = Candidate(sha, store.parent(sha), None, None, 0, "pending")
    parent = loop.program(store, config, candidate)
    feedback = Ledger(store).feedback(sha)
    return Prompts(store, config).messages(parent, [loop.program(store, config, c) for c in inspirations], feedback,
                                           tried)


def render(messages: list[dict]) -> str:
    return "\n".join(f"=== {m['role']} ===\n{m['content'].rstrip()}\n" for m in messages)
