"""The built-in operator: change declared tunables, no model needed.

A tunable is a line that assigns a literal and says which values it may take:

    BLOCK = 64  # gitevolve: choices=[32, 64, 128, 256]
    constexpr int BLOCK = 64;  // gitevolve: choices=[32, 64, 128]
    #define UNROLL 4  // gitevolve: choices=[1, 2, 4, 8]

A mutation sets one or more of them to another of their choices; a crossover takes some
settings from an inspiration (another candidate of the island). Only tunables inside the
EVOLVE-BLOCK count, so the operator cannot change what the markers protect.
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass

from gitevolve.mutate import MutationRejected, Program, Proposal
from gitevolve.mutate.blocks import editable_lines

LINE = re.compile(
    r"^(?P<lead>\s*(?:(?:const|constexpr|static|constant|inline|unsigned|int|float|bool|auto|uint|#define)\s+)*"
    r"(?P<name>[A-Za-z_]\w*)\s*(?:=\s*|\s+))"
    r"(?P<value>[^;#/]+?)"
    r"(?P<tail>\s*;?\s*(?:#|//)\s*gitevolve:\s*(?P<spec>.*?)\s*)$"
)


@dataclass(frozen=True)
class Tunable:
    path: str
    line: int  # 0-based
    name: str
    value: object
    choices: tuple


def _literal(text: str, where: str) -> object:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        raise MutationRejected(f"{where}: {text.strip()!r} is not a literal value") from None


def parse(path: str, text: str) -> list[Tunable]:
    """The tunables a file declares inside its EVOLVE-BLOCKs; a malformed declaration is an error."""
    found, inside = [], editable_lines(text)
    for i, line in enumerate(text.splitlines()):
        if "gitevolve:" not in line or i not in inside:
            continue
        where = f"{path}:{i + 1}"
        m = LINE.match(line)
        if not m:
            raise MutationRejected(f"{where}: a tunable reads `NAME = VALUE  # gitevolve: choices=[...]`")
        spec = m.group("spec")
        if not spec.startswith("choices="):
            raise MutationRejected(f"{where}: expected `gitevolve: choices=[...]`, got {spec!r}")
        choices = _literal(spec.removeprefix("choices="), where)
        if not isinstance(choices, list) or len(choices) < 2:
            raise MutationRejected(f"{where}: choices must be a list of at least two values")
        found.append(Tunable(path, i, m.group("name"), _literal(m.group("value"), where), tuple(choices)))
    return found


def render(value: object, like: str) -> str:
    """A value as source text, keeping the quote style of the text it replaces."""
    if isinstance(value, str):
        quote = "'" if like.strip().startswith("'") else '"'
        return quote + value.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote
    return repr(value)


def apply(text: str, settings: dict[int, object]) -> str:
    """`text` with the tunables on the given lines set to new values."""
    lines = text.splitlines(keepends=True)
    for i, value in settings.items():
        m = LINE.match(lines[i].rstrip("\r\n"))
        assert m, "settings name only lines that parse() accepted"
        ending = lines[i][len(lines[i].rstrip("\r\n")) :]
        lines[i] = m.group("lead") + render(value, m.group("value")) + m.group("tail") + ending
    return "".join(lines)


def _show(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


class TunablesOperator:
    name = "tunables"

    def __init__(self, max_changes: int = 2, crossover: float = 0.3) -> None:
        self.max_changes = max_changes
        self.crossover = crossover

    def propose(self, parent: Program, inspirations: list[Program], rng: random.Random) -> Proposal:
        tunables = [t for path, text in sorted(parent.files.items()) for t in parse(path, text)]
        if not tunables:
            raise MutationRejected("no tunables declared in the evolvable files (`NAME = VALUE  # gitevolve: choices=[...]`)")
        if inspirations and rng.random() < self.crossover:
            proposal = self._crossover(parent, tunables, rng.choice(inspirations), rng)
            if proposal is not None:
                return proposal
        return self._mutate(parent, tunables, rng)

    def _mutate(self, parent: Program, tunables: list[Tunable], rng: random.Random) -> Proposal:
        changes = {}
        for t in rng.sample(tunables, rng.randint(1, min(self.max_changes, len(tunables)))):
            options = [c for c in t.choices if c != t.value]
            changes[t] = rng.choice(options)
        said = ", ".join(f"{t.name} {_show(t.value)} -> {_show(v)}" for t, v in changes.items())
        body = (
            f"The built-in tunables operator changed {len(changes)} of the {len(tunables)} declared "
            f"tunables of {parent.candidate.sha[:10]} at random, each to another of its choices."
        )
        return Proposal(self._write(parent, changes), f"Set {said}", body, "tunables:mutate")

    def _crossover(self, parent: Program, tunables: list[Tunable], other: Program, rng: random.Random) -> Proposal | None:
        theirs = {(t.path, t.name): t.value for path, text in other.files.items() for t in parse(path, text)}
        differing = [t for t in tunables if (t.path, t.name) in theirs and theirs[(t.path, t.name)] != t.value]
        if not differing:
            return None
        taken = [t for t in differing if rng.random() < 0.5] or [rng.choice(differing)]
        changes = {t: theirs[(t.path, t.name)] for t in taken}
        said = ", ".join(f"{t.name}={_show(v)}" for t, v in changes.items())
        mine, their = parent.candidate, other.candidate
        body = (
            f"Crossover: kept {mine.sha[:10]} (score {_score(mine)}) and took {len(changes)} of the "
            f"{len(differing)} settings where {their.sha[:10]} (score {_score(their)}) differs."
        )
        return Proposal(self._write(parent, changes), f"Take {said} from {their.sha[:10]}", body, "tunables:crossover")

    @staticmethod
    def _write(parent: Program, changes: dict[Tunable, object]) -> dict[str, str]:
        files = {}
        for path in sorted({t.path for t in changes}):
            settings = {t.line: v for t, v in changes.items() if t.path == path}
            files[path] = apply(parent.files[path], settings)
        return files


def _score(c) -> str:
    return f"{c.score:.4g}" if c.score is not None else "none"
