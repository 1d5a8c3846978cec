"""The search operator: a model of the scores so far picks the next setting of the tunables.

One Optuna study per island, asked for a setting at each mutation (TPE by default, random search
to compare against). The loop tells it every scored candidate of its island, with the settings
the candidate's note keeps, so a run resumed from any ref rebuilds the same knowledge from git
alone; migrants are candidates of the island that receives them, and teach its study the same
way. Numeric choices are ordered (the study sees a position in the sorted list), others
categorical. A tunable whose `when=` condition is false is not asked for and keeps the parent's
value. A setting the island already has is told its known score at once and never proposed.

The parent the loop chose gives the text the setting is written into, so a commit's diff is the
tunables the study changed; which setting comes next is the study's choice, not the parent's.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from dataclasses import dataclass, field

from gitevolve.mutate import MutationRejected, Observed, Program, Proposal
from gitevolve.mutate import tunables as tun

SAMPLERS = ("tpe", "random")
# Asks per proposal while the study keeps coming back to settings the island has: each is told
# its score, so the study moves on; past this many, a setting is drawn at random instead.
ASKS = 16
RANDOM_DRAWS = 256


@dataclass
class _Island:
    study: object  # optuna.Study
    space: tuple  # the tunables the study was built for (tunables.Tunable)
    known: dict = field(default_factory=dict)  # live setting -> the value told
    pending: dict = field(default_factory=dict)  # live setting -> the trial asked for it
    worst: float | None = None  # the lowest score seen: what a failed candidate is told
    told: list = field(default_factory=list)  # every Observed, to tell a study made again


class SearchOperator:
    name = "search"
    needs_tunables = True  # it changes declared values only: the run refuses a program with none

    def __init__(self, sampler: str = "tpe", seed: int | None = None, startup: int = 10) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        self.sampler, self.seed, self.startup = sampler, seed, startup
        self._islands: dict[int, _Island] = {}
        self._waiting: dict[int, list[Observed]] = {}  # told before the island's first proposal

    def observe(self, island: int, seen: Observed) -> None:
        """Tell island `island`'s study about a scored candidate (any operator's)."""
        if island in self._islands:
            self._tell(self._islands[island], seen)
        else:
            self._waiting.setdefault(island, []).append(seen)

    def propose(self, parent: Program, inspirations: list[Program], rng: random.Random) -> Proposal:
        found, _ = tun.declared(parent.files)
        if not found:
            raise MutationRejected("no tunables declared in the evolvable files (`NAME = VALUE  # gitevolve: choices=[...]`)")
        island = self._island(parent.island if parent.island is not None else -1, tuple(found))
        values, trial = self._next(island, found, parent, rng)
        changed = {t: values[k] for t, k in zip(found, tun.keys(found)) if values[k] != t.value}
        by = "random search" if self.sampler == "random" else "Optuna's TPE sampler"
        told = len(island.known)
        body = (f"The search operator ({by}) chose this setting of the {len(found)} declared tunables, having been "
                f"told the scores of {told} setting{'s' if told != 1 else ''} of this island; it changes "
                f"{len(changed)} of them from {parent.candidate.sha[:10]}.")
        files = {}
        for path in sorted({t.path for t in changed}):
            files[path] = tun.apply(parent.files[path], {t.line: v for t, v in changed.items() if t.path == path})
        meta = {"sampler": self.sampler, **({"trial": trial} if trial is not None else {})}
        return Proposal(files, tun.subject(changed), body, f"search:{self.sampler}", meta)

    # --- the studies --------------------------------------------------------------------------

    def _island(self, island: int, space: tuple) -> _Island:
        """The island's study; made again (and told everything again) when the tunables changed."""
        current = self._islands.get(island)
        if current is not None and current.space == _shape(space):
            return current
        made = _Island(self._study(island), _shape(space))
        self._islands[island] = made
        for seen in (current.told if current else []) + self._waiting.pop(island, []):
            self._tell(made, seen)
        return made

    def _study(self, island: int):
        import optuna  # here: importing Optuna takes 0.2 s, which `gitevolve status` never needs

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = None if self.seed is None else int.from_bytes(
            hashlib.sha256(f"{self.seed}/island/{island}".encode()).digest()[:4], "little")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self.sampler == "random":
                sampler = optuna.samplers.RandomSampler(seed=seed)
            else:
                # multivariate and group: tunables interact, and conditional ones are asked only
                # where they matter; constant_liar: settings in flight count as taken.
                sampler = optuna.samplers.TPESampler(n_startup_trials=self.startup, multivariate=True, group=True,
                                                     constant_liar=True, seed=seed)
        return optuna.create_study(direction="maximize", sampler=sampler)

    def _tell(self, island: _Island, seen: Observed) -> None:
        import optuna

        island.told.append(seen)
        if seen.score is not None:
            island.worst = seen.score if island.worst is None else min(island.worst, seen.score)
        value = seen.score if seen.score is not None else (island.worst if island.worst is not None else 0.0)
        params = _params(island.space, seen.settings)
        if params is None:
            return  # settings from another version of the tunables: nothing this study can use
        setting = _setting(params)
        trial = island.pending.pop(setting, None)
        if setting in island.known:
            if trial is not None:
                island.study.tell(trial, island.known[setting])
            return
        island.known[setting] = value
        if trial is not None:
            island.study.tell(trial, value)
            return
        distributions = {name: d for name, (d, _) in params.items()}
        island.study.add_trial(optuna.trial.create_trial(
            params={name: v for name, (_, v) in params.items()}, distributions=distributions, value=value))

    def _next(self, island: _Island, found: list, parent: Program, rng: random.Random) -> tuple[dict, int | None]:
        """A setting the island has neither scored nor in flight, and the trial that asked for it."""
        import optuna

        for _ in range(ASKS):
            trial = island.study.ask()
            values = _suggest(trial, found)
            setting = _setting(_params(island.space, values) or {})
            if setting in island.known:
                island.study.tell(trial, island.known[setting])
            elif setting in island.pending:
                island.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                island.pending[setting] = trial
                return values, trial.number
        for _ in range(RANDOM_DRAWS):
            values = _suggest(_Randomly(rng), found)
            setting = _setting(_params(island.space, values) or {})
            if setting not in island.known and setting not in island.pending:
                island.pending[setting] = None
                return values, None
        raise MutationRejected(f"search: island {parent.island} has tried every setting the study could find")


def _shape(space: tuple) -> tuple:
    """What a study depends on: the tunables' names, choices and conditions, not their lines or values."""
    return tuple((t.path, t.name, t.choices, t.when, t.needs) for t in space)


def _name(key: str, choices: tuple) -> str:
    # The choices are part of the name: if a tunable's list changes, a position means another value.
    return f"{key}#{hashlib.sha1(repr(choices).encode()).hexdigest()[:8]}"


def _positions(t) -> list:
    return sorted(t.choices) if t.ordered else list(t.choices)


def _distribution(t):
    import optuna

    n = len(t.choices)
    return (optuna.distributions.IntDistribution(0, n - 1) if t.ordered
            else optuna.distributions.CategoricalDistribution(list(range(n))))


def _params(space: tuple, values: dict) -> dict | None:
    """The live tunables of `values` as study parameters: name -> (distribution, position)."""
    found = [tun.Tunable(path, 0, name, None, choices, when, needs) for path, name, choices, when, needs in space]
    params = {}
    for mine in _by_file(found):
        by_name = {t.name: values.get(k) for t, k in mine}
        alive = tun.live([t for t, _ in mine], by_name)
        for t, k in mine:
            if t.name not in alive:
                continue
            if by_name[t.name] not in t.choices:
                return None
            params[_name(k, t.choices)] = (_distribution(t), _positions(t).index(by_name[t.name]))
    return params


def _by_file(found: list) -> list[list[tuple]]:
    """(tunable, key) pairs, one list per file: conditions name tunables of their own file."""
    pairs = list(zip(found, tun.keys(found)))
    return [[(t, k) for t, k in pairs if t.path == path] for path in sorted({t.path for t in found})]


def _setting(params: dict) -> str:
    return json.dumps({name: position for name, (_, position) in sorted(params.items())})


def _suggest(trial, found: list) -> dict:
    """Every tunable's value: the live ones as the trial suggests, in the order their conditions need."""
    values = dict(zip(tun.keys(found), (t.value for t in found)))
    for mine in _by_file(found):
        key_of = {t.name: k for t, k in mine}
        by_name = {t.name: values[k] for t, k in mine}
        alive: set[str] = set()
        for t in tun.order([t for t, _ in mine]):
            if not (all(n in alive for n in t.needs) and t.live(by_name)):
                continue
            alive.add(t.name)
            name, positions = _name(key_of[t.name], t.choices), _positions(t)
            if t.ordered:
                index = trial.suggest_int(name, 0, len(positions) - 1)
            else:
                index = trial.suggest_categorical(name, list(range(len(positions))))
            values[key_of[t.name]] = by_name[t.name] = positions[index]
    return values


@dataclass
class _Randomly:
    """Suggests like a trial, uniformly at random."""

    rng: random.Random

    def suggest_int(self, name: str, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def suggest_categorical(self, name: str, choices: list) -> object:
        return self.rng.choice(choices)
