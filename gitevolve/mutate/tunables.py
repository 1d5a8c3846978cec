"""The built-in operator: change declared tunables, no model needed.

A tunable is a line that assigns a literal and says which values it may take:

    BLOCK = 64  # gitevolve: choices=[32, 64, 128, 256]
    constexpr int BLOCK = 64;  // gitevolve: choices=[32, 64, 128]
    #define UNROLL 4  // gitevolve: choices=[1, 2, 4, 8]

A tunable that only matters under another's value says so, with a condition over the other
tunables of its file (==, !=, <, >, in, not in, and, or, not):

    VECTOR = 4  # gitevolve: choices=[1, 2, 4, 8], when=PATH == "vector"

Under PATH = "mma" it is dead: settings that differ only in dead tunables are one program
(`canonical`), and the operators leave dead tunables alone. A tunable whose condition names a
dead tunable is dead too.

A mutation sets one or more of them to another of their choices; a crossover takes some
settings from an inspiration (another candidate of the island). Only tunables inside the
EVOLVE-BLOCK count, so the operator cannot change what the markers protect.
"""

from __future__ import annotations

import ast
import collections
import functools
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
    when: str | None = None  # the condition's source, as declared
    needs: tuple[str, ...] = ()  # the tunables it names

    @property
    def ordered(self) -> bool:
        """Numbers: a search may take 64 to lie between 32 and 128."""
        return all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in self.choices)

    def live(self, values: dict[str, object]) -> bool:
        """Whether this tunable matters, given the values of its file's tunables by name."""
        return self.when is None or bool(eval(_compiled(self.when), {"__builtins__": {}}, dict(values)))


# What a condition may say: comparisons of tunables with literals, joined by and / or / not.
_CONDITION_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Compare, ast.Eq,
                    ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Name, ast.Load,
                    ast.Constant, ast.List, ast.Tuple, ast.USub)


def _condition(text: str, where: str) -> tuple[str, ...]:
    """The names a `when=` condition reads; a condition that is not a plain comparison is an error."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise MutationRejected(f"{where}: when={text!r} is not an expression") from None
    for node in ast.walk(tree):
        if not isinstance(node, _CONDITION_NODES):
            raise MutationRejected(f"{where}: when= compares tunables with values (==, !=, in, and, or, not), "
                                   f"not {type(node).__name__}")
    return tuple(dict.fromkeys(n.id for n in ast.walk(tree) if isinstance(n, ast.Name)))


@functools.lru_cache(maxsize=1024)
def _compiled(text: str):
    return compile(text, "<when>", "eval")


def _spec(spec: str, where: str) -> tuple[list, str | None]:
    """`choices=[...]` and, after a comma, an optional `when=CONDITION`."""
    if not spec.startswith("choices="):
        raise MutationRejected(f"{where}: expected `gitevolve: choices=[...]`, got {spec!r}")
    rest = spec.removeprefix("choices=")
    # The list ends at the first "]" after which what is left is nothing or ", when=...".
    for end in (i + 1 for i, ch in enumerate(rest) if ch == "]"):
        tail = rest[end:].strip()
        if tail and not re.match(r"^,\s*when=", tail):
            continue
        choices = _literal(rest[:end], where)
        return choices, (re.sub(r"^,\s*when=", "", tail).strip() or None) if tail else None
    return _literal(rest, where), None


def _literal(text: str, where: str) -> object:
    try:
        return _evaluated(text.strip())
    except (ValueError, SyntaxError):
        raise MutationRejected(f"{where}: {text.strip()!r} is not a literal value") from None


@functools.lru_cache(maxsize=4096)
def _evaluated(text: str) -> object:
    # Candidates of a run repeat the same few literals: a cache keeps parsing a large file cheap.
    return ast.literal_eval(text)


def parse(path: str, text: str) -> list[Tunable]:
    """The tunables a file declares inside its EVOLVE-BLOCKs; a malformed declaration is an error."""
    return list(_parsed(path, text))


@functools.lru_cache(maxsize=16)
def _parsed(path: str, text: str) -> tuple[Tunable, ...]:
    # The loop reads a new candidate's settings and its canonical text: one parse for both.
    found, inside = [], editable_lines(text)
    for i, line in enumerate(text.splitlines()):
        if "gitevolve:" not in line or i not in inside:
            continue
        where = f"{path}:{i + 1}"
        m = LINE.match(line)
        if not m:
            raise MutationRejected(f"{where}: a tunable reads `NAME = VALUE  # gitevolve: choices=[...]`")
        choices, when = _spec(m.group("spec"), where)
        if not isinstance(choices, list) or len(choices) < 2:
            raise MutationRejected(f"{where}: choices must be a list of at least two values")
        needs = _condition(when, where) if when else ()
        found.append(Tunable(path, i, m.group("name"), _literal(m.group("value"), where), tuple(choices), when, needs))
    _check_conditions(path, found)
    return tuple(found)


def _check_conditions(path: str, found: list[Tunable]) -> None:
    names = {t.name for t in found}
    for t in found:
        for name in t.needs:
            if name not in names:
                raise MutationRejected(f"{path}:{t.line + 1}: when= names {name}, which is not a tunable of this "
                                       f"file's EVOLVE-BLOCKs")
    order(found)  # raises on a cycle


def order(found: list[Tunable]) -> list[Tunable]:
    """The tunables with every one after those its condition names (a search sets them in this order)."""
    by_name, done, result = {t.name: t for t in found}, set(), []

    def visit(t: Tunable, seen: tuple[str, ...]) -> None:
        if t.name in done:
            return
        if t.name in seen:
            raise MutationRejected(f"{t.path}:{t.line + 1}: when= conditions go round in a circle: "
                                   f"{' -> '.join(seen + (t.name,))}")
        for name in t.needs:
            visit(by_name[name], seen + (t.name,))
        done.add(t.name)
        result.append(t)

    for t in found:
        visit(t, ())
    return result


def live(found: list[Tunable], values: dict[str, object]) -> set[str]:
    """The names of the tunables that matter under `values` (by name; a file's tunables)."""
    alive: set[str] = set()
    for t in order(found):
        if all(n in alive for n in t.needs) and t.live(values):
            alive.add(t.name)
    return alive


def canonical(path: str, text: str) -> str:
    """`text` with every dead tunable at its first choice: one text per distinct program."""
    found = parse(path, text)
    values = {t.name: t.value for t in found}
    alive = live(found, values)
    dead = {t.line: t.choices[0] for t in found if t.name not in alive and t.value != t.choices[0]}
    return apply(text, dead) if dead else text


def settings(files: dict[str, str]) -> dict[str, object]:
    """Every tunable's value, by name (path:name where two files declare the same name)."""
    found = [t for path, text in sorted(files.items()) for t in parse(path, text)]
    return dict(zip(keys(found), (t.value for t in found)))


def declared(files: dict[str, str]) -> tuple[list[Tunable], list[Tunable]]:
    """Every tunable of `files`, and those of them that matter under the files' current values."""
    found, alive = [], []
    for path, text in sorted(files.items()):
        mine = parse(path, text)
        names = live(mine, {t.name: t.value for t in mine})
        found += mine
        alive += [t for t in mine if t.name in names]
    return found, alive


def keys(found: list[Tunable]) -> list[str]:
    """Each tunable's key, in order: its name, or path:name where two files declare the same name."""
    counts = collections.Counter(t.name for t in found)
    return [t.name if counts[t.name] == 1 else f"{t.path}:{t.name}" for t in found]


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


def changed_values(before: dict[str, str], after: dict[str, str]) -> str | None:
    """'Set A 1 -> 2, B x -> y' when the files of `after` differ from `before`'s only in tunables'
    values; None when other text changed too, or nothing did (a migration's subject must say its
    own diff)."""
    said = {}
    for path, new in sorted(after.items()):
        old = before.get(path)
        if old == new:
            continue
        if old is None:
            return None
        was, now = parse(path, old), parse(path, new)
        if [(t.line, t.name) for t in was] != [(t.line, t.name) for t in now]:
            return None
        if apply(old, {t.line: n.value for t, n in zip(was, now)}) != new:
            return None  # more than values changed
        said.update({t: n.value for t, n in zip(was, now) if t.value != n.value})
    return subject(said) if said else None


def subject(changes: dict[Tunable, object]) -> str:
    """'Set A 1 -> 2, B x -> y': a commit subject for new values of tunables, as every operator words it."""
    return "Set " + ", ".join(f"{t.name} {_show(t.value)} -> {_show(v)}" for t, v in changes.items())


def _show(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


class TunablesOperator:
    name = "tunables"
    needs_tunables = True  # it changes declared values only: the run refuses a program with none

    def __init__(self, max_changes: int = 2, crossover: float = 0.3) -> None:
        self.max_changes = max_changes
        self.crossover = crossover

    def propose(self, parent: Program, inspirations: list[Program], rng: random.Random) -> Proposal:
        tunables = declared(parent.files)[1]  # a dead tunable changes nothing: never worth a candidate
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
        body = (
            f"The built-in tunables operator changed {len(changes)} of the {len(tunables)} declared "
            f"tunables of {parent.candidate.sha[:10]} at random, each to another of its choices."
        )
        return Proposal(self._write(parent, changes), subject(changes), body, "tunables:mutate")

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
