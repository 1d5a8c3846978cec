"""Proof that a candidate's own kernel computes the answer that is timed.

While a candidate is loaded and called, mx.fast.cuda_kernel and mx.fast.metal_kernel are
replaced by factories that build the real kernel and hand back a wrapper counting its launches
(mx.fast.precompiled_cuda_kernel, which launches directly, is counted itself). With that:

  - every call of a candidate that built any kernel must launch one: a kernel built at import
    and never used, beside an MLX-ops computation, is not the thing being timed;
  - `poisoned(value)` makes every launch return arrays filled with `value` in place of the
    kernel's outputs; the evaluation requires the candidate's result to change, once with NaN
    and once with zeros (NaN alone would let `mlx_result + 0 * kernel_output` through).

The published OpenEvolve GQA run timed a process that never loaded its kernel; this is the
check that would have said so. It proves dependence, not that the kernel does all the work: a
candidate can still route its result through a kernel and compute most of it with MLX ops, and
its time then says so honestly. Wrapping costs about 0.3 us per launch, on the candidate's side.

mx.compile is watched too: a compiled function replays its graph without calling Python, so a
replayed call is credited with the launches its trace made, and poisoned calls run with
compilation disabled so that the wrappers are reached.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import mlx.core as mx

FACTORIES = {"cuda_kernel": "cuda", "metal_kernel": "metal"}
DIRECT = {"precompiled_cuda_kernel": "cuda"}  # launch functions, not factories


class NotLaunched(RuntimeError):
    """A candidate that built a kernel returned from a call without launching any."""


@dataclass
class Kernel:
    name: str
    language: str  # cuda or metal
    launches: int = 0


@dataclass
class Ledger:
    kernels: list[Kernel] = field(default_factory=list)
    launches: int = 0
    calls: int = 0  # calls of the candidate, through counted()
    step: str = ""  # what the evaluation is doing, for messages
    silent: int = 0  # calls that launched nothing
    first_silent: str = ""  # the step of the first of them
    poison: float | None = None

    @property
    def kind(self) -> str:
        languages = sorted({k.language for k in self.kernels})
        return "mlx-ops" if not languages else "+".join(languages) + "-kernel"

    def names(self) -> str:
        return ",".join(sorted({k.name for k in self.kernels}))

    def metrics(self) -> dict:
        return {"kind": self.kind, "kernel_launches": self.launches, "candidate_calls": self.calls,
                "kernels": self.names()}

    def unlaunched(self) -> str | None:
        """Why the candidate fails check (a), or None: it built a kernel and some call launched none.
        Checked again at the end because a kernel first built in a later call makes the earlier
        kernel-free calls count too."""
        if not self.kernels or not self.silent:
            return None
        return (f"built a kernel ({self.names()}) but did not launch it in {self.silent} of "
                f"{self.calls} calls, first in {self.first_silent}: the result does not come from it")

    @contextmanager
    def poisoned(self, value: float) -> Iterator[None]:
        """Every launch inside returns its outputs filled with `value`; compiled functions run
        traced, so that no replayed graph skips the wrappers."""
        self.poison = value
        mx.disable_compile()
        try:
            yield
        finally:
            self.poison = None
            if not os.environ.get("MLX_DISABLE_COMPILE"):
                mx.enable_compile()


def _filled(out: mx.array, value: float) -> mx.array:
    if mx.issubdtype(out.dtype, mx.floating):
        return mx.full(out.shape, value, dtype=out.dtype)
    # Integer outputs cannot hold NaN: all bits set stands in for it.
    return mx.full(out.shape, 0 if value == 0 else -1, dtype=mx.int64).astype(out.dtype)


class _Launcher:
    """A kernel object as the candidate sees it: launches the real one and counts."""

    __slots__ = ("_real", "_kernel", "_ledger")

    def __init__(self, real, kernel: Kernel, ledger: Ledger) -> None:
        self._real, self._kernel, self._ledger = real, kernel, ledger

    def __call__(self, *args, **kwargs):
        outputs = self._real(*args, **kwargs)
        self._kernel.launches += 1
        self._ledger.launches += 1
        if self._ledger.poison is not None:
            return [_filled(o, self._ledger.poison) for o in outputs]
        return outputs


def _factory(real, language: str, ledger: Ledger):
    def build(*args, **kwargs):
        kernel_object = real(*args, **kwargs)
        kernel = Kernel(str(kwargs.get("name", args[0] if args else "?")), language)
        ledger.kernels.append(kernel)
        return _Launcher(kernel_object, kernel, ledger)

    build.__doc__ = real.__doc__
    return build


def _direct(real, language: str, ledger: Ledger):
    by_name: dict[str, Kernel] = {}

    def launch(*args, **kwargs):
        name = str(kwargs.get("name", "?"))
        if name not in by_name:
            by_name[name] = Kernel(name, language)
            ledger.kernels.append(by_name[name])
        return _Launcher(real, by_name[name], ledger)(*args, **kwargs)

    launch.__doc__ = real.__doc__
    return launch


def _signature(args: tuple, kwargs: dict) -> tuple:
    def one(a):
        if isinstance(a, mx.array):
            return ("array", tuple(a.shape), str(a.dtype))
        try:
            hash(a)
            return a
        except TypeError:
            return repr(a)

    return tuple(one(a) for a in args) + tuple((k, one(v)) for k, v in sorted(kwargs.items()))


def _compile(real, ledger: Ledger):
    def compile(*args, **kwargs):
        compiled = real(*args, **kwargs)
        traced: dict[tuple, int] = {}

        def call(*a, **k):
            before = ledger.launches
            out = compiled(*a, **k)
            made = ledger.launches - before
            key = _signature(a, k)
            if made:
                traced[key] = made
            else:
                ledger.launches += traced.get(key, 0)
            return out

        return call

    compile.__doc__ = real.__doc__
    return compile


@contextmanager
def watch() -> Iterator[Ledger]:
    """While inside, every kernel built or launched through mx.fast is counted in the ledger.
    The factories in place on entry (real, or a test's fakes) are wrapped and put back on exit."""
    ledger = Ledger()
    saved: list[tuple[object, str, object]] = []
    for entries, wrap in ((FACTORIES, _factory), (DIRECT, _direct)):
        for name, language in entries.items():
            if hasattr(mx.fast, name):
                saved.append((mx.fast, name, getattr(mx.fast, name)))
                setattr(mx.fast, name, wrap(getattr(mx.fast, name), language, ledger))
    saved.append((mx, "compile", mx.compile))
    mx.compile = _compile(mx.compile, ledger)
    try:
        yield ledger
    finally:
        for owner, name, real in reversed(saved):
            setattr(owner, name, real)


def counted(fn: Callable, ledger: Ledger) -> Callable:
    """`fn` (the candidate's gqa_attention) with each call's launches counted: a call that
    launches nothing once the candidate has built a kernel raises NotLaunched."""

    def call(*args):
        before = ledger.launches
        out = fn(*args)
        ledger.calls += 1
        if ledger.launches == before:
            ledger.silent += 1
            ledger.first_silent = ledger.first_silent or ledger.step or "a call"
            if ledger.kernels:
                raise NotLaunched(ledger.unlaunched())
        return out

    return call


def changed(poisoned, clean: mx.array) -> bool:
    """Whether a poisoned call's result differs from the clean one (NaN differs from everything)."""
    if not isinstance(poisoned, mx.array) or poisoned.shape != clean.shape:
        return True
    return not mx.array_equal(poisoned, clean).item()


POISONS = (math.nan, 0.0)
