"""What a run shows while it works: a live rich panel on a terminal, plain lines elsewhere."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gitevolve.population import Candidate, Population
from gitevolve.report import format_score

if TYPE_CHECKING:
    from gitevolve.loop import Stats


class Progress(Protocol):
    def begin(self, population: Population, iterations: int) -> None: ...
    def update(self, population: Population, stats: Stats, candidate: Candidate) -> None: ...
    def say(self, line: str) -> None: ...
    def end(self) -> None: ...


def for_console(console: Console) -> Progress:
    return LivePanel(console) if console.is_terminal else PlainLines(console)


def _score(c: Candidate | None) -> str:
    return format_score(c.score if c else None)


def _headline(population: Population, stats: Stats, total: int | None) -> str:
    best = population.best()
    where = "" if best is None or best.island is None else f" (island {best.island}, {best.sha[:10]})"
    return (
        f"evaluated {stats.evaluated} · iterations {stats.done}{'' if total is None else f'/{total}'} · "
        f"{stats.per_minute():.1f} evaluations/min · "
        f"best {_score(best)}{where}"
    )


class PlainLines:
    """One line per evaluated candidate: for logs, CI and pipes."""

    def __init__(self, console: Console) -> None:
        self.console, self.total = console, 0

    def begin(self, population: Population, iterations: int) -> None:
        self.total = iterations

    def update(self, population: Population, stats: Stats, candidate: Candidate) -> None:
        island = "seed" if candidate.island is None else f"island {candidate.island}"
        verdict = f"score {_score(candidate)}" if candidate.status == "ok" else candidate.status
        if candidate.duplicate_of:
            verdict += f" (the same program as {candidate.duplicate_of[:10]}: not evaluated again)"
        self.console.print(
            f"{candidate.sha[:10]} {island}: {verdict} - {candidate.subject[:60]}  [{_headline(population, stats, self.total)}]",
            markup=False, highlight=False, soft_wrap=True,
        )

    def say(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def end(self) -> None:
        pass


class LivePanel:
    """A panel redrawn in place: the headline, then each island's champion."""

    def __init__(self, console: Console) -> None:
        self.console, self.total = console, 0
        self.live = Live(console=console, refresh_per_second=4, transient=False)

    def begin(self, population: Population, iterations: int) -> None:
        self.total = iterations
        self.live.start()

    def update(self, population: Population, stats: Stats, candidate: Candidate) -> None:
        table = Table(box=None, pad_edge=False)
        for column in ("island", "champion", "score", "candidates", "last"):
            table.add_column(column)
        for k in population.islands:
            champion = population.candidates.get(population.champions[k])
            members = population.members(k)
            last = max(members, key=lambda c: c.iteration or 0)
            table.add_row(str(k), champion.sha[:10] if champion else "-", _score(champion), str(len(members)), last.subject[:50])
        self.live.update(Group(Text(_headline(population, stats, self.total)), table))

    def say(self, line: str) -> None:
        self.live.console.print(line, markup=False, highlight=False)

    def end(self) -> None:
        self.live.stop()
