"""Migration: an island's best ideas cherry-picked onto other islands' champions.

The last mutation of a migrant (its diff against its parent) is applied to the target island's
champion with a three-way merge of each evolvable file, exactly what `git cherry-pick` does to
them, but without a work tree. Where that merge conflicts, the migrant's whole file is taken
instead. Either way the result is a new candidate on the target island, evaluated like any
other: OpenEvolve copied programs with their old scores, which measured nothing.
"""

from __future__ import annotations

import math
import random
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gitevolve.config import Config
from gitevolve.mutate import tunables
from gitevolve.population import Candidate, Population, island_population
from gitevolve.store import Store


@dataclass(frozen=True)
class Migration:
    source: Candidate
    source_island: int
    target_island: int
    target: str  # the target island's champion commit: the new candidate's parent
    files: dict[str, str]
    whole_files: list[str]  # files whose cherry-pick conflicted and that migrated whole

    @property
    def operator(self) -> str:
        return "migration:whole-file" if self.whole_files else "migration:cherry-pick"

    def message(self, target_files: dict[str, str]) -> tuple[str, str]:
        """Subject and body. The subject says what this commit changes against its parent, the
        target's champion (`target_files`): where only tunables' values differ, exactly which;
        else the migrant's own change, which a clean cherry-pick replays."""
        src = self.source
        # A migrant may itself have migrated: name the change, not the chain of moves.
        change = tunables.changed_values(target_files, self.files) or re.sub(r"^(Migrate from island \d+: )+", "",
                                                                            src.subject)
        subject = f"Migrate from island {self.source_island}: {change}"
        body = (
            f"Cherry-picked {src.sha[:10]} (island {self.source_island}, score {src.score:.4g}) "
            f"onto island {self.target_island}'s champion {self.target[:10]}."
        )
        if self.whole_files:
            body += f"\nThe cherry-pick conflicted in {', '.join(self.whole_files)}, so the whole file migrated."
        return subject, body


def plan(store: Store, population: Population, config: Config, rng: random.Random) -> list[Migration]:
    """The migrations of one migration round: each island's best send their last mutation on."""
    islands = population.islands
    if len(islands) < 2:
        return []
    found = []
    for k in islands:
        # Only the island's own mutations migrate: its seed is no mutation (its git parent, if the
        # base has one, is some commit of the user's history, likely without the evolvable files).
        pool = [c for c in island_population(population, k, config.features, config.population_size) if c.island == k and c.parent]
        count = max(1, math.ceil(config.migration.rate * len(pool))) if pool else 0
        for migrant in pool[:count]:
            target = islands[(islands.index(k) + 1) % len(islands)]
            if config.migration.topology == "random":
                target = rng.choice([i for i in islands if i != k])
            migration = cherry_pick(store, migrant, k, target, population.champions[target], config.files)
            if migration is not None:
                found.append(migration)
    return found


def cherry_pick(store: Store, migrant: Candidate, source: int, target: int, onto: str, paths: list[str]) -> Migration | None:
    """The migrant's last mutation applied onto `onto`, or None when it would change nothing."""
    files, whole = {}, []
    for path in paths:
        base, theirs, ours = (store.read_file(sha, path) for sha in (migrant.parent, migrant.sha, onto))
        if base == theirs or theirs == ours:
            continue
        merged = merge_file(ours, base, theirs)
        if merged is None:
            merged = theirs
            whole.append(path)
        if merged != ours:
            files[path] = merged
    if not files:
        return None
    return Migration(migrant, source, target, onto, files, whole)


def merge_file(ours: str, base: str, theirs: str) -> str | None:
    """`git merge-file` of three texts: the merged text, or None on conflict."""
    with tempfile.TemporaryDirectory(prefix="gitevolve-merge-") as tmp:
        names = []
        for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            (Path(tmp) / name).write_text(text)
            names.append(str(Path(tmp) / name))
        done = subprocess.run(["git", "merge-file", "-p", "--quiet", *names], capture_output=True)
    if done.returncode != 0:  # >0: the number of conflicts; <0: an error, treated the same
        return None
    return done.stdout.decode()
