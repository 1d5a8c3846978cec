"""One candidate file in, one hook result (docs/hooks.md) out.

    frame check -> the timer prepares (supervised: the baseline is timed alone, elsewhere)
    -> load with the baseline hidden, kernels watched, and the harness's objects captured
    -> correctness on every scenario (and, for a kernel, its result must depend on the kernel)
    -> timed blocks as the timer asks (the harness checked intact around each) -> the timed
    path's own output checked, the kernel's part in it again -> peak memory -> the timer's result

The timer is where the clock and the baseline live. Run by the hook, it is the supervisor
(child.Supervised): this process never holds the baseline, and its result has no speed in it;
the supervisor adds that from its own clock (report.py). In one process, for tests and
benchmarks, it is local.Local, which cannot keep a candidate honest and says so.

The same steps serve every backend: a candidate whose gqa_attention builds its result from MLX
ops, or launches its own kernel through mx.fast.metal_kernel or mx.fast.cuda_kernel, is called
the same way and judged against the same reference.

The score is the geometric mean over scenarios of baseline median / candidate median, and it is
given only when every scenario is correct: one wrong scenario fails the candidate. The other
figures (decode/prefill means and spread, throughput, memory, gain bands) are in summary.py.

Every result carries the safety metrics failure_kind, compile_errors and gpu_faults (0 or 1).
failure_kind is "none" for a passing candidate, else one of
    frame_changed        edited outside the EVOLVE-BLOCK
    import_error         the file does not import, or defines no gqa_attention
    exception            gqa_attention raised
    compile_error        a kernel did not compile (the compiler's whole message is an artifact)
    gpu_fault            a kernel faulted (illegal address, misaligned access, Metal errors...)
    out_of_memory        the candidate's own, or (status transient) the device's, busy with others
    device_unavailable   the device was busy or unavailable (status transient)
    baseline_called      it called mx.fast.scaled_dot_product_attention
    wrong_output         mismatch with the reference, wrong shape or dtype, NaN, a stale result
    input_overwritten    it wrote into its inputs
    kernel_not_launched  it built a kernel and returned without launching one
    kernel_bypassed      its result does not change when its kernels' outputs are replaced
    impossible_speed     faster than the device can read the K/V cache
    harness_tampered     it replaced the clock, mx.eval, mx.fast or the harness's own objects,
                         or left a thread running (integrity.py)
    timing_tampered      its process's clock disagreed with the supervisor's, or the timing
                         channel carried what the harness did not send (race.py, referee.py)
    baseline_slowed      the baseline ran slower against it than alone (race.py)
    background_work      it started a process (referee.py)
child.py adds backend_unavailable and evaluator_error (the harness itself failed); supervise.py adds
hang and crash, and tells compile_error, gpu_fault and the transient kinds from a dead child's stderr.
An output bit-for-bit the baseline's on every timed block scores 0 (report.py).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import mlx.core as mx

from evaluators.gqa import backend, faults, integrity, launches, timing
from evaluators.gqa.cli import STAGES
from evaluators.gqa.correctness import Inputs, check, make_inputs, verify
from evaluators.gqa.faults import safety
from evaluators.gqa.guards import BaselineCalled, Tripwire, baseline_hidden, check_frame, load_candidate
from evaluators.gqa.memory import own_out_of_memory, peak_bytes
from evaluators.gqa.report import PEAK
from evaluators.gqa.shapes import Scenario, select

class Timer(Protocol):
    """Where the clock and the baseline are (module docstring)."""

    keeps_baseline: bool  # False: mx.fast.scaled_dot_product_attention is gone from this process for good

    def prepare(self, scenarios: Sequence[Scenario]) -> None:
        """Before the candidate is loaded."""

    def race(self, scenario: Scenario, block: timing.Block) -> None:
        """Have `block` run the candidate's timed blocks for `scenario`, until the race is over."""

    def finish(self, scenarios: Sequence[Scenario], checked: dict) -> dict:
        """The hook result, from what this process `checked` (status ok, candidate peaks in its metrics)."""

TRACEBACK_TAIL = 3000


class Failed(Exception):
    """Ends the evaluation: `reason` is one line, `kind` a failure_kind, `artifacts` the evidence;
    `transient` makes the status transient (gitevolve retries) instead of failed."""

    def __init__(self, reason: str, kind: str, transient: bool = False, **artifacts: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.transient = transient
        self.artifacts = artifacts


@dataclass(frozen=True)
class Setup:
    stage: str = "full"  # "correctness" stops before timing, with score 1.0 when all is right
    timer: Timer | None = None  # needed unless stage is "correctness"
    base: str | None = None  # GITEVOLVE_BASE: the frame outside the EVOLVE-BLOCK must equal it
    files: tuple[str, ...] = ()  # the files whose frame is checked, relative to root
    root: Path = Path(".")
    # Told each step before it starts, with the metrics so far: a child process that dies
    # mid-step leaves its supervisor knowing where.
    progress: Callable[[str, dict], None] | None = None


@dataclass(frozen=True)
class Guard:
    wire: Tripwire
    ledger: launches.Ledger
    snapshot: integrity.Snapshot


def evaluate(path: str | Path, scenarios: Sequence[Scenario] | str = "cpu", setup: Setup = Setup()) -> dict:
    """The hook result for the candidate file at `path` on `scenarios` (a list, or a set's name)."""
    if isinstance(scenarios, str):
        scenarios = select(scenarios)
    if setup.stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, not {setup.stage!r}")
    if setup.stage != "correctness" and setup.timer is None:
        raise ValueError(f"stage {setup.stage!r} times the candidate: Setup needs a timer")
    metrics: dict = {"backend": backend.current(), "device": str(mx.default_device()), "stage": setup.stage,
                     **safety()}
    try:
        return _evaluate(Path(path), scenarios, setup, metrics)
    except Failed as f:
        return _failed(f, metrics)
    except RuntimeError as e:
        # CUDA reports a kernel's fault at the next synchronisation, which can be the harness's
        # own (fresh inputs, a reference) rather than the candidate's call; a busy device can
        # show first in the bandwidth measurement.
        if faults.classify(str(e)) is None:
            raise
        return _failed(_raised(e, "in the harness's own device work", "evaluator_error", str(e)), metrics)


def _failed(f: Failed, metrics: dict) -> dict:
    if f.kind in ("wrong_output", "input_overwritten"):
        metrics["all_correct"] = False
    return faults.failure(f.kind, f.reason, f.transient, metrics, f.artifacts)


@dataclass
class Steps:
    """Where the evaluation is, for the supervisor's progress note, and how long each step took,
    as one metric (`step_seconds`, "bandwidth 0.03, import 0.21, ..."): an evaluation killed at
    its timeout still says where its time went, and a model's prompt gets one line, not forty."""

    setup: Setup
    metrics: dict
    key: str | None = None
    started: float = field(default_factory=time.monotonic)
    seconds: dict = field(default_factory=dict)

    def enter(self, key: str | None, label: str = "", extra: dict | None = None) -> None:
        now = time.monotonic()
        if self.key is not None:
            self.seconds[self.key] = now - self.started
            self.metrics["step_seconds"] = ", ".join(f"{k} {v:.2f}" for k, v in self.seconds.items())
        self.key, self.started = key, now
        if key is not None and self.setup.progress:
            self.setup.progress(label, {**self.metrics, **(extra or {})})


def _evaluate(path: Path, scenarios: Sequence[Scenario], setup: Setup, metrics: dict) -> dict:
    files = list(dict.fromkeys([*setup.files, _relative(path, setup.root)]))
    frame = check_frame(files, setup.base, setup.root)
    metrics["frame_check"] = frame.status
    if frame.status == "changed":
        raise Failed(f"edited outside the EVOLVE-BLOCK: {frame.detail.splitlines()[0]}", "frame_changed",
                     frame=frame.detail)
    steps = Steps(setup, metrics)
    timer = setup.timer
    if timer is not None:
        # Before the candidate is loaded: nothing it does can touch what is measured here.
        steps.enter("baseline", "timing the baseline alone")
        timer.prepare(scenarios)

    with baseline_hidden(restore=timer is None or timer.keeps_baseline) as wire, launches.watch() as ledger:
        guard = Guard(wire, ledger, integrity.capture())
        try:
            steps.enter("import", f"importing {path.name}")
            attention = launches.counted(_load(path, wire), ledger)
            _intact(guard, f"importing {path.name}")
            checks = []
            for s in scenarios:
                steps.enter(f"correctness.{s.name}", f"{s.name} (correctness)", ledger.metrics())
                checks.append(_correct(s, attention, guard))
            steps.enter(None)
            metrics["max_abs_error"] = max((v.max_abs_error for v in checks), default=0.0)
            metrics["all_correct"] = True
            artifacts = {"correctness": "\n".join(v.report for v in checks)}
            if setup.stage == "correctness":
                _all_launched(ledger)
                _intact(guard, "after the correctness checks")
                return {"status": "ok", "score": 1.0, "metrics": metrics, "artifacts": artifacts}
            for s in scenarios:
                steps.enter(f"timing.{s.name}", f"{s.name} (timing)", ledger.metrics())
                last = _time(s, attention, guard, timer)
                metrics[f"{PEAK}{s.name}"] = _call_site(s, "memory", guard, peak_bytes, attention, last.args())
            steps.enter(None)
            _all_launched(ledger)
            _intact(guard, "at the end of the evaluation")
        finally:
            metrics.update(ledger.metrics())
    return timer.finish(scenarios, {"status": "ok", "metrics": metrics, "artifacts": artifacts})


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
                  f"the baseline it is timed against", "baseline_called", traceback=_tail())


def _raised(e: BaseException, where: str, plain_kind: str, plain_reason: str, **artifacts: str) -> Failed:
    """What the candidate raised, as a Failed of the kind its message shows. MLX raises compiler
    and CUDA errors as RuntimeError; the candidate's own errors are any type."""
    text = str(e)
    kind = faults.classify(text) if isinstance(e, RuntimeError) else None
    line = faults.telling_line(text, kind)
    evidence = {"traceback": _tail(), **artifacts}
    if kind == "compile_error":
        # All of it: the compiler names every error with its line, not only the first.
        return Failed(f"{where}: a kernel did not compile: {line}", kind, compile_error=text.strip(), **evidence)
    if kind == "gpu_fault":
        return Failed(f"{where}: GPU fault: {line}", kind, gpu_error=text.strip(), **evidence)
    if kind == "transient":
        if faults.transient_kind(text) == "device_unavailable":
            return Failed(f"{where}: the device is busy or unavailable: {line}", "device_unavailable",
                          transient=True, **evidence)
        own = own_out_of_memory(text)
        if own:
            return Failed(f"{where}: out of memory, and {own}: {line}", "out_of_memory", **evidence)
        return Failed(f"{where}: out of memory, maybe held by another process: {line}", "out_of_memory",
                      transient=True, **evidence)
    return Failed(plain_reason, plain_kind, **evidence)


def _load(path: Path, wire: Tripwire):
    try:
        module = load_candidate(path)
    except (Exception, SystemExit) as e:
        if wire.calls:
            raise _baseline_called(wire, f"importing {path.name}") from None
        raise _raised(e, f"importing {path.name}", "import_error",
                      f"importing {path.name} raised {type(e).__name__}: {faults.telling_line(str(e))}") from None
    attention = getattr(module, "gqa_attention", None)
    if not callable(attention):
        raise Failed(f"{path.name} defines no function gqa_attention(queries, keys, values, scale, causal)",
                     "import_error")
    return attention


def _call_site(scenario: Scenario, step: str, guard: Guard, fn, *args):
    """fn(*args), turning whatever the candidate raises (or the tripwire) into a Failed."""
    where = f"{scenario.name} ({step})"
    guard.ledger.step = where
    try:
        result = fn(*args)
    except (Exception, SystemExit) as e:
        if guard.wire.calls or isinstance(e, BaselineCalled):
            raise _baseline_called(guard.wire, where) from None
        if isinstance(e, launches.NotLaunched):
            raise Failed(f"{where}: {e}", "kernel_not_launched", scenario=scenario.describe()) from None
        raise _raised(e, where, "exception", f"{where}: gqa_attention raised {type(e).__name__}: {faults.telling_line(str(e))}",
                      scenario=scenario.describe()) from None
    if guard.wire.calls:
        raise _baseline_called(guard.wire, where)
    return result


def _verdict_failure(verdict, scenario: Scenario, prefix: str = "") -> Failed:
    return Failed(f"{prefix}{verdict.report}", verdict.kind, mismatch=verdict.report, scenario=scenario.describe())


def _correct(scenario: Scenario, attention, guard: Guard):
    verdict = _call_site(scenario, "correctness", guard, check, scenario, attention)
    if not verdict.ok:
        raise _verdict_failure(verdict, scenario, "wrong output: ")
    if guard.ledger.kernels:
        inputs = make_inputs(scenario)
        clean = _call_site(scenario, "kernel check", guard, _evaluated, attention, inputs.args())
        _depends_on_kernels(scenario, "kernel check", attention, guard, inputs, clean)
    return verdict


def _evaluated(fn, args: tuple):
    out = fn(*args)
    if isinstance(out, mx.array):
        mx.eval(out)
    return out


def _depends_on_kernels(scenario: Scenario, step: str, attention, guard: Guard, inputs: Inputs, clean) -> None:
    """Check (b): with every kernel output replaced by NaN, then by zeros, the result must change."""
    if not isinstance(clean, mx.array):
        return  # compare() has already failed such a result
    for value in launches.POISONS:
        with guard.ledger.poisoned(value):
            try:
                got = _call_site(scenario, step, guard, _evaluated, attention, inputs.args())
            except Failed as f:
                if f.kind in ("exception", "gpu_fault"):
                    continue  # raising on poisoned outputs is depending on them
                raise
        if not launches.changed(got, clean):
            raise Failed(f"{scenario.name} ({step}): built a kernel ({guard.ledger.names()}) but its result does "
                         f"not come from it: with every kernel output replaced by {value}, gqa_attention returned "
                         f"the same result", "kernel_bypassed", scenario=scenario.describe())


def _all_launched(ledger: launches.Ledger) -> None:
    why = ledger.unlaunched()
    if why:
        raise Failed(why, "kernel_not_launched")


def _intact(guard: Guard, where: str) -> None:
    changed = guard.snapshot.changed()
    if changed:
        raise Failed(f"{where}: {integrity.describe(changed)}", "harness_tampered", replaced="\n".join(changed))


def _time(scenario: Scenario, attention, guard: Guard, timer: Timer) -> Inputs:
    """Serve the timer's blocks; check the last timed output; return the inputs it answered."""
    blocks, last = timing.Blocks(scenario), []

    def block(command: dict, announce: Callable[[dict], None]) -> None:
        _intact(guard, f"{scenario.name} (before a timed block)")
        inputs = blocks.inputs(command)
        seconds, out = _call_site(scenario, "timing", guard, timing.run, attention, inputs, announce)
        _intact(guard, f"{scenario.name} (timed block)")
        if inputs:
            last[:] = [out, inputs[-1]]
        announce(timing.calls_message(seconds, out))

    timer.race(scenario, block)
    if not last:
        raise Failed(f"{scenario.name}: the timer ran no block of calls", "evaluator_error")
    out, inputs = last
    # The output of the last timed call, on that call's inputs: proof that what was timed is
    # the candidate that was checked, computing this answer and not an earlier one.
    verdict, _, _ = verify(scenario, inputs, out, " (last timed call)")
    if not verdict.ok:
        raise _verdict_failure(verdict, scenario, "wrong output while timed: ")
    if guard.ledger.kernels:
        # On inputs the timing loop made (keys shared between rounds), where a candidate that
        # recognised the benchmark would have switched paths.
        _depends_on_kernels(scenario, "timed kernel check", attention, guard, inputs, out)
    return inputs
