"""Keeping a candidate honest: it cannot call the baseline it races, cannot edit outside its
EVOLVE-BLOCK, and is loaded from its file every time.

Under the hook, the candidate's process has no baseline to call: the baseline runs in a process
of its own (baseline.py), and here mx.fast.scaled_dot_product_attention becomes a tripwire for
good, the real function dropped, so no module table, closure or frame of the harness holds it.

The published OpenEvolve GQA run "beat" MLX with a benchmark that never ran the evolved kernel;
these checks are cheap and make that kind of result impossible to report by accident.
"""

from __future__ import annotations

import difflib
import importlib.util
import itertools
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterator

import mlx.core as mx

from gitevolve.hookkit import FrameChanged, check_frame as check_text, frame

_modules = itertools.count()


class BaselineCalled(RuntimeError):
    pass


@dataclass
class Tripwire:
    calls: int = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise BaselineCalled(
            "the candidate called mx.fast.scaled_dot_product_attention, the baseline it is timed against"
        )


@contextmanager
def baseline_hidden(restore: bool = True) -> Iterator[Tripwire]:
    """While inside, mx.fast.scaled_dot_product_attention raises and counts its calls, so a
    candidate that catches the error is still caught. With `restore`, the real function comes
    back on exit (in-process use: tests, benchmarks); without, it is gone from this process."""
    wire = Tripwire()
    real = mx.fast.scaled_dot_product_attention if restore else None
    mx.fast.scaled_dot_product_attention = wire
    try:
        yield wire
    finally:
        if real is not None:
            mx.fast.scaled_dot_product_attention = real


def load_candidate(path: Path) -> ModuleType:
    """Execute the file as a new module under a name never used before, so neither an earlier
    import nor another candidate's module in sys.modules can stand in for it."""
    path = Path(path).resolve()
    name = f"_gqa_candidate_{os.getpid()}_{next(_modules)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a module up by name while it runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


@dataclass(frozen=True)
class FrameCheck:
    status: str  # "unchanged", "changed" or "skipped"
    detail: str


def check_frame(files: list[str], base: str | None, cwd: Path) -> FrameCheck:
    """Text outside the EVOLVE-BLOCKs of `files` must equal the base commit's (`git show`).

    gitevolve already refuses such proposals; this check is for a candidate that reached the
    evaluator some other way (a hand-made commit, another tool), and it cannot be skipped by
    the candidate itself. Without a base (the hook run by hand) there is nothing to compare."""
    if not base:
        return FrameCheck("skipped", "GITEVOLVE_BASE is not set (hook run by hand): EVOLVE-BLOCK frame not checked")
    changed = []
    for file in files:
        shown = subprocess.run(["git", "show", f"{base}:{file}"], cwd=cwd, capture_output=True, text=True)
        if shown.returncode != 0:
            changed.append(f"{file}: cannot read it at the base {base[:12]}: {shown.stderr.strip()}")
            continue
        try:
            now = (cwd / file).read_text()
        except OSError as e:
            changed.append(f"{file}: {e}")
            continue
        try:
            check_text(file, shown.stdout, now)
        except FrameChanged as e:
            changed.append(f"{e}\n{_frame_diff(file, shown.stdout, now)}")
    if changed:
        return FrameCheck("changed", "\n".join(changed))
    return FrameCheck("unchanged", f"outside the EVOLVE-BLOCK, {', '.join(files)} equal the base {base[:12]}")


def _frame_diff(file: str, before: str, after: str) -> str:
    """A unified diff of the text outside the blocks, each block's inside shown as one line."""

    def outside(text: str) -> list[str]:
        try:
            runs = frame(text)
        except FrameChanged:
            return text.splitlines()  # markers broken: the whole file is the evidence
        return [line for i, run in enumerate(runs) for line in ([] if i == 0 else ["    [inside the EVOLVE-BLOCK]"]) + run]

    return "\n".join(difflib.unified_diff(outside(before), outside(after), f"base:{file}", file, lineterm=""))
