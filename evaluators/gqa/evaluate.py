"""One candidate file in, one hook result (docs/hooks.md) out.

    frame check -> load under the tripwire -> correctness on every scenario -> interleaved timing
    -> the timed path's own output checked -> score = geometric mean of the speedups

The same steps serve every backend: a candidate whose gqa_attention builds its result from MLX
ops, or launches its own kernel through mx.fast.metal_kernel or mx.fast.cuda_kernel, is called
the same way and judged against the same reference.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import mlx.core as mx

from evaluators.gqa.correctness import check, compare, fresh_rounds, overwritten, remake
from evaluators.gqa.guards import BaselineCalled, Tripwire, baseline_hidden, check_frame, load_candidate
from evaluators.gqa.reference import gqa_reference
from evaluators.gqa.shapes import Scenario, select
from evaluators.gqa.timing import Budget, Race, baseline, race

STAGES = ("full", "correctness", "benchmark")
TRACEBACK_TAIL = 3000


class Failed(Exception):
    """Ends the evaluation with status failed: `reason` is one line, `artifacts` the evidence."""

    def __init__(self, reason: str, **artifacts: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.artifacts = artifacts


@dataclass(frozen=True)
class Setup:
    stage: str = "full"  # "correctness" stops before timing, with score 1.0 when all is right
    budget: Budget = Budget()
    base: str | None = None  # GITEVOLVE_BASE: the frame outside the EVOLVE-BLOCK must equal it
    files: tuple[str, ...] = ()  # the files whose frame is checked, relative to root
    root: Path = Path(".")


def evaluate(path: str | Path, scenarios: Sequence[Scenario] | str = "cpu", setup: Setup = Setup()) -> dict:
    """The hook result for the candidate file at `path` on `scenarios` (a list, or a set's name)."""
    if isinstance(scenarios, str):
        scenarios = select(scenarios)
    if setup.stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, not {setup.stage!r}")
    metrics: dict = {"device": str(mx.default_device()), "stage": setup.stage}
    try:
        return _evaluate(Path(path), scenarios, setup, metrics)
    except Failed as f:
        return {"status": "failed", "reason": f.reason, "metrics": metrics,
                "artifacts": {"reason": f.reason, **f.artifacts}}


def _evaluate(path: Path, scenarios: Sequence[Scenario], setup: Setup, metrics: dict) -> dict:
    files = list(dict.fromkeys([*setup.files, _relative(path, setup.root)]))
    frame = check_frame(files, setup.base, setup.root)
    metrics["frame_check"] = frame.status
    if frame.status == "changed":
        raise Failed(f"edited outside the EVOLVE-BLOCK: {frame.detail.splitlines()[0]}", frame=frame.detail)

    with baseline_hidden() as wire:
        attention = _load(path, wire)
        checks = [_correct(s, attention, wire) for s in scenarios]
        metrics["max_abs_error"] = max((v.max_abs_error for v in checks), default=0.0)
        artifacts = {"correctness": "\n".join(v.report for v in checks)}
        if setup.stage == "correctness":
            return {"status": "ok", "score": 1.0, "metrics": metrics, "artifacts": artifacts}
        races = {s.name: _time(s, attention, wire, setup.budget) for s in scenarios}

    speedups = {name: r.speedup for name, r in races.items()}
    for name, r in races.items():
        metrics[f"speedup.{name}"] = round(r.speedup, 4)
        metrics[f"candidate_us.{name}"] = round(r.candidate.median_us, 1)
        metrics[f"baseline_us.{name}"] = round(r.baseline.median_us, 1)
    score = _geomean(speedups.values())
    metrics["geomean_speedup"] = round(score, 4)
    for kind in ("decode", "prefill"):
        mine = [speedups[s.name] for s in scenarios if s.kind == kind]
        if mine:
            metrics[f"{kind}_speedup"] = round(_geomean(mine), 4)
    metrics["worst_spread"] = round(max(max(r.candidate.spread, r.baseline.spread) for r in races.values()), 4)
    artifacts["timings"] = _table(scenarios, races)
    return {"status": "ok", "score": score, "metrics": metrics, "artifacts": artifacts}


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _tail(limit: int = TRACEBACK_TAIL) -> str:
    text = traceback.format_exc()
    return text if len(text) <= limit else "..." + text[-limit:]


def _baseline_called(wire: Tripwire, when: str) -> Failed:
    return Failed(f"{when}: the candidate called mx.fast.scaled_dot_product_attention ({wire.calls} time(s)), "
                  f"the baseline it is timed against", traceback=_tail())


def _load(path: Path, wire: Tripwire):
    try:
        module = load_candidate(path)
    except (Exception, SystemExit) as e:
        if wire.calls:
            raise _baseline_called(wire, f"importing {path.name}") from None
        raise Failed(f"importing {path.name} raised {type(e).__name__}: {_first_line(e)}", traceback=_tail()) from None
    attention = getattr(module, "gqa_attention", None)
    if not callable(attention):
        raise Failed(f"{path.name} defines no function gqa_attention(queries, keys, values, scale, causal)")
    return attention


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else "(no message)"


def _call_site(scenario: Scenario, step: str, wire: Tripwire, fn, *args):
    """fn(*args), turning whatever the candidate raises (or the tripwire) into a Failed."""
    try:
        result = fn(*args)
    except (Exception, SystemExit) as e:
        if wire.calls or isinstance(e, BaselineCalled):
            raise _baseline_called(wire, f"{scenario.name} ({step})") from None
        raise Failed(f"{scenario.name} ({step}): gqa_attention raised {type(e).__name__}: {_first_line(e)}",
                     traceback=_tail(), scenario=scenario.describe()) from None
    if wire.calls:
        raise _baseline_called(wire, f"{scenario.name} ({step})")
    return result


def _correct(scenario: Scenario, attention, wire: Tripwire):
    verdict = _call_site(scenario, "correctness", wire, check, scenario, attention)
    if not verdict.ok:
        raise Failed(f"wrong output: {verdict.report}", mismatch=verdict.report, scenario=scenario.describe())
    return verdict


def _time(scenario: Scenario, attention, wire: Tripwire, budget: Budget) -> Race:
    result = _call_site(scenario, "timing", wire, race, attention, baseline, fresh_rounds(scenario), budget)
    # The output of the last timed call, on that call's inputs: proof that what was timed is
    # the candidate that was checked, computing this answer and not an earlier one.
    inputs = remake(scenario, result.last_inputs)
    changed = overwritten(result.last_inputs, inputs)
    if changed:
        raise Failed(f"{scenario.name} (timing): gqa_attention overwrote its input {changed} in place")
    expected = gqa_reference(*inputs.args())
    verdict = compare(scenario, inputs, result.last_output, expected, " (last timed call)")
    if not verdict.ok:
        raise Failed(f"wrong output while timed: {verdict.report}", mismatch=verdict.report,
                     scenario=scenario.describe())
    return result


def _geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _table(scenarios: Sequence[Scenario], races: dict[str, Race]) -> str:
    rows = [f"{'scenario':<24} {'candidate us':>13} {'baseline us':>12} {'speedup':>8} {'spread':>7}  shape"]
    for s in scenarios:
        r = races[s.name]
        spread = max(r.candidate.spread, r.baseline.spread)
        rows.append(f"{s.name:<24} {r.candidate.median_us:>13.1f} {r.baseline.median_us:>12.1f} "
                    f"{r.speedup:>8.3f} {spread:>7.1%}  {s.describe().split(': ', 1)[1]}")
    return "\n".join(rows)
