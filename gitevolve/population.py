"""The population of one run, rebuilt from refs and notes.

Nothing here is saved anywhere: `load` reads the store, and the loop adds what it records.
Islands are isolated by construction: a candidate belongs to the island its note (or its
commit's trailers, before it is scored) names; a seed belongs to the islands whose seed ref
points at it. MAP-Elites keeps, per island, the best candidate of each cell of a fixed grid
over the configured features; the population cap then keeps cell elites and the best of the
rest. A candidate that leaves the population stays in git.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from gitevolve.config import FeatureConfig
from gitevolve.store import RefState, Store, parse_trailers

SCORED = ("ok",)


@dataclass(frozen=True)
class Candidate:
    sha: str
    parent: str | None
    island: int | None  # None: a seed, shared by the islands that start from it
    iteration: int | None  # None for seeds and migrations
    generation: int
    status: str  # ok | failed | rejected | pending
    score: float | None = None
    tree: str | None = None
    operator: str = ""
    subject: str = ""
    metrics: dict = field(default_factory=dict, compare=False)
    features: dict = field(default_factory=dict, compare=False)
    remeasured: float | None = None  # median of `gitevolve promote`'s fresh evaluations, if any
    settings: dict = field(default_factory=dict, compare=False)  # its tunables' values (tunables.settings)
    # The program as evaluated: the tree with every dead tunable at its first choice. Two
    # candidates with one content are one program, evaluated once (loop.py).
    content: str | None = None
    duplicate_of: str | None = None  # the candidate whose evaluation this one took
    measurements: tuple = field(default=(), compare=False)  # every score it got, re-measurements included (duel.py)
    stages: dict = field(default_factory=dict, compare=False)  # its score at each evaluator stage it passed through
    stage_seconds: dict = field(default_factory=dict, compare=False)  # the time each of those stages took
    evaluated_at: str | None = None  # when its evaluation ended (ISO 8601, seconds)

    @property
    def alive(self) -> bool:
        return self.status in SCORED and self.score is not None

    @property
    def migration(self) -> bool:
        return self.operator.startswith("migration")

    @classmethod
    def from_note(cls, sha: str, note: dict) -> Candidate:
        score = note.get("score")
        return cls(
            sha=sha,
            parent=note.get("parent"),
            island=note.get("island"),
            iteration=note.get("iteration"),
            generation=int(note.get("generation") or 0),
            status=str(note.get("status", "failed")),
            score=number(score),
            tree=note.get("tree"),
            operator=str(note.get("operator", "")),
            subject=str(note.get("subject", "")),
            metrics=note.get("metrics") or {},
            features=note.get("features") or {},
            remeasured=_median((note.get("remeasured") or {}).get("scores")),
            settings=note.get("settings") or {},
            content=note.get("content") or note.get("tree"),
            duplicate_of=note.get("duplicate_of"),
            measurements=tuple(x for x in map(number, note.get("measurements") or []) if x is not None),
            stages={k: v for k, v in (note.get("stage_scores") or {}).items() if number(v) is not None},
            stage_seconds={k: v for k, v in (note.get("stage_seconds") or {}).items() if number(v) is not None},
            evaluated_at=note.get("evaluated_at") if isinstance(note.get("evaluated_at"), str) else None,
        )


def number(value: object) -> float | None:
    """`value` as a float if it is a number in a note (true and false are not scores)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _median(scores) -> float | None:
    numbers = [x for x in map(number, scores or []) if x is not None]
    return statistics.median(numbers) if numbers else None


def pending_from_commit(sha: str, raw: bytes, seed_of: set[int]) -> Candidate:
    """An unscored candidate, described by its commit (the crash left no note)."""
    header, _, message = raw.decode(errors="replace").partition("\n\n")
    fields = dict(line.split(" ", 1) for line in header.splitlines() if " " in line)
    trailers = parse_trailers(message)
    island = trailers.get("island")
    iteration = trailers.get("iteration")
    return Candidate(
        sha=sha,
        parent=fields.get("parent"),
        island=None if seed_of or island is None else int(island),
        iteration=int(iteration) if iteration else None,
        generation=int(trailers.get("generation", 0)),
        status="pending",
        tree=fields.get("tree"),
        content=fields.get("tree"),  # dead tunables unknown until its files are read: the tree itself
        operator=trailers.get("operator", "seed" if seed_of else ""),
        subject=message.splitlines()[0] if message else "",
    )


@dataclass
class Population:
    base: str
    seeds: dict[int, str]
    champions: dict[int, str]
    candidates: dict[str, Candidate]
    _evaluated: dict[str, str] = field(default_factory=dict, init=False, repr=False)  # content -> sha

    def __post_init__(self) -> None:
        for c in self.candidates.values():
            self._index(c)

    @property
    def islands(self) -> list[int]:
        return sorted(self.seeds)

    def add(self, candidate: Candidate) -> None:
        self.candidates[candidate.sha] = candidate
        self._index(candidate)

    def _index(self, c: Candidate) -> None:
        if c.content and c.status != "pending" and c.duplicate_of is None:
            self._evaluated.setdefault(c.content, c.sha)

    def members(self, island: int) -> list[Candidate]:
        """Every candidate of an island, its seed included, scored or not."""
        seed = self.seeds[island]  # the base, or any candidate that `run --from` started the island at
        return [c for c in self.candidates.values() if c.island == island or c.sha == seed]

    def alive(self, island: int) -> list[Candidate]:
        return [c for c in self.members(island) if c.alive]

    def pending(self) -> list[Candidate]:
        return sorted(
            (c for c in self.candidates.values() if c.status == "pending"),
            key=lambda c: (c.iteration is not None, c.iteration or 0, c.sha),
        )

    def next_iteration(self) -> int:
        return 1 + max((c.iteration for c in self.candidates.values() if c.iteration is not None), default=0)

    def contents(self, island: int) -> set[str]:
        """The programs an island has tried (by content): one tried on another island is still new here."""
        return {c.content for c in self.members(island) if c.content}

    def evaluated(self, content: str) -> Candidate | None:
        """The candidate of the run, any island, whose evaluation gave `content`'s result; None if none has."""
        sha = self._evaluated.get(content)
        return self.candidates[sha] if sha else None

    def islands_of(self, candidate: Candidate) -> list[int]:
        """The islands a candidate belongs to: its own, or every island a seed starts."""
        if candidate.island is not None:
            return [candidate.island]
        return [k for k, sha in sorted(self.seeds.items()) if sha == candidate.sha]

    def best(self, island: int | None = None) -> Candidate | None:
        pool = self.alive(island) if island is not None else [c for c in self.candidates.values() if c.alive]
        return max(pool, key=rank, default=None)

    def migrated_at(self, generation: int) -> bool:
        return any(c.migration and c.generation == generation for c in self.candidates.values())


def load(store: Store, state: RefState) -> Population:
    notes = store.read_notes(state.notes)
    candidates = {sha: Candidate.from_note(sha, note) for sha, note in notes.items()}
    seed_islands: dict[str, set[int]] = {}
    for k, sha in state.seeds.items():
        seed_islands.setdefault(sha, set()).add(k)
    unscored = [sha for sha in (state.pins | set(seed_islands)) if sha not in candidates]
    for sha, raw in store.cat_batch(unscored).items():
        candidates[sha] = pending_from_commit(sha, raw, seed_islands.get(sha, set()))
    return Population(state.base or "", dict(state.seeds), dict(state.islands), candidates)


def cell(candidate: Candidate, features: list[FeatureConfig]) -> tuple[int, ...]:
    """The MAP-Elites cell: fixed bins over a fixed range, so cells never drift as values arrive."""
    index = []
    for f in features:
        value = candidate.features.get(f.name, candidate.metrics.get(f.name))
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            index.append(0)
            continue
        low, high = f.range
        position = (min(max(value, low), high) - low) / (high - low)
        index.append(min(int(position * f.bins), f.bins - 1))
    return tuple(index)


def elites(candidates: list[Candidate], features: list[FeatureConfig]) -> dict[tuple[int, ...], Candidate]:
    grid: dict[tuple[int, ...], Candidate] = {}
    for c in candidates:
        key = cell(c, features)
        if key not in grid or rank(c) > rank(grid[key]):
            grid[key] = c
    return grid


def island_population(population: Population, island: int, features: list[FeatureConfig], cap: int) -> list[Candidate]:
    """The candidates an island selects from: cell elites first, then the best of the rest, up to the cap."""
    alive = sorted(population.alive(island), key=rank, reverse=True)
    kept = sorted(elites(alive, features).values(), key=rank, reverse=True)[:cap]
    chosen = {c.sha for c in kept}
    kept += [c for c in alive if c.sha not in chosen][: cap - len(kept)]
    return sorted(kept, key=rank, reverse=True)


def rank(c: Candidate) -> tuple[float, int]:
    # Ties go to the earlier candidate so that ranking does not depend on dict order.
    return (c.score if c.score is not None else -math.inf, -(c.iteration or 0))
