"""What the harness relies on in the candidate's process, checked around every timed block.

A candidate runs in the same interpreter as the harness that judges it, and Python lets it
rebind anything: the clock, mx.eval, mx.fast's functions, the harness's own functions and
tables (a tolerance, a check). Just before the candidate is imported, `capture()` records every
such object; `changed()` names those that are no longer the same object (for functions, also
the same code), and any Python thread the candidate left running. The harness calls its own
captured references anyway (timing.py), so a rebinding cannot fool the timing: this check makes
the attempt visible as `harness_tampered` instead of letting it pass silently.

What it cannot see: changes inside C extensions (ctypes can write anywhere in the process), and
native threads, which cannot be told from MLX's and BLAS's own. Those cannot take the baseline's
CPU either: the candidate's process is stopped while the baseline runs (race.py).
"""

from __future__ import annotations

import builtins
import json
import os
import select
import sys
import threading
import time
import types
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

HARNESS = "evaluators.gqa"
_VALUES = (int, float, str, bytes, bool, type(None))


class _Table(tuple):
    """A dict's (key, value) pairs as captured: equal when the keys are and the values are the same objects."""

    def same(self, other: object) -> bool:
        return (isinstance(other, _Table) and len(self) == len(other)
                and all(a[0] == b[0] and a[1] is b[1] for a, b in zip(self, other)))


def _library() -> dict[str, object]:
    watched = {}
    for prefix, module, names in (
        ("time", time, ("perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "time", "time_ns",
                        "process_time", "sleep")),
        ("mx", mx, ("eval", "async_eval", "synchronize", "array", "array_equal", "stream", "default_device",
                    "new_stream", "compile", "disable_compile", "enable_compile", "full", "where", "softmax",
                    "get_peak_memory", "get_active_memory", "reset_peak_memory")),
        ("mx.random", mx.random, ("normal", "key", "split")),
        ("mx.fast", mx.fast, tuple(n for n in dir(mx.fast) if not n.startswith("_"))),
        ("np", np, ("array", "abs", "isfinite", "argwhere", "argmax", "unravel_index")),
        ("os", os, ("write", "read", "replace", "_exit", "getpid")),
        ("json", json, ("dump", "dumps", "loads")),
        ("select", select, ("select",)),
    ):
        for name in names:
            if hasattr(module, name):
                watched[f"{prefix}.{name}"] = getattr(module, name)
    for name, value in vars(builtins).items():
        if callable(value):
            watched[f"builtins.{name}"] = value
    for name in ("__getitem__", "astype", "view", "reshape", "item", "__array__", "tolist"):
        if hasattr(mx.array, name):
            watched[f"mx.array.{name}"] = getattr(mx.array, name)
    return watched


def _harness() -> dict[str, object]:
    """Every module-level name of the harness's modules; for functions and classes, their code and methods."""
    watched = {}
    for module_name, module in list(sys.modules.items()):
        if not (module_name == HARNESS or module_name.startswith(HARNESS + ".")) or module is None:
            continue
        for name, value in vars(module).items():
            if name == "__warningregistry__":  # Python's own: written when a warning is shown from the module
                continue
            key = f"{module_name}.{name}"
            watched[key] = value
            if isinstance(value, types.FunctionType):
                watched[f"{key}.__code__"] = value.__code__
                watched[f"{key}.__defaults__"] = value.__defaults__
            elif isinstance(value, type) and value.__module__ == module_name:
                for attr, member in vars(value).items():
                    if isinstance(member, types.FunctionType):
                        watched[f"{key}.{attr}"] = member
                        watched[f"{key}.{attr}.__code__"] = member.__code__
            elif isinstance(value, dict):  # tables: tolerances, factories
                watched[f"{key}[...]"] = _Table(value.items())
    return watched


@dataclass(frozen=True)
class Snapshot:
    objects: dict[str, object]
    values: dict[str, object]  # plain module constants and table entries, compared by value
    threads: frozenset[int]

    def changed(self) -> list[str]:
        """What the candidate replaced since capture(), by name (empty when nothing was)."""
        now = {**_library(), **_harness()}
        found = []
        for name, before in self.objects.items():
            after = now.get(name, _MISSING)
            same = before.same(after) if isinstance(before, _Table) else after is before
            if not same and not (name in self.values and self.values[name] == after):
                found.append(name)
        for name in sorted(set(now) - set(self.objects)):
            if name.startswith(HARNESS):
                found.append(name)
        found += [f"a thread {t.name!r} left running" for t in threading.enumerate() if t.ident not in self.threads]
        return found


_MISSING = object()


def capture() -> Snapshot:
    objects = {**_library(), **_harness()}
    values = {k: v for k, v in objects.items() if isinstance(v, _VALUES)}
    return Snapshot(objects, values, frozenset(t.ident for t in threading.enumerate()))


def describe(names: list[str]) -> str:
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"the candidate replaced what the harness relies on: {shown}"
