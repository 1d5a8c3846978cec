"""Which MLX backend evaluates the candidate: the CPU, CUDA (Linux, NVIDIA) or Metal (Apple silicon).

    auto   Metal if available, else CUDA if available, else the CPU
    cpu    always possible; custom kernels cannot run there
    cuda   needs `pip install 'mlx[cuda13]'` on Linux with an NVIDIA GPU
    metal  needs Apple silicon

A backend that was asked for by name and is missing is an error with one line saying what to
install, never a silent fall back to the CPU: a CUDA run that quietly timed the CPU would report
numbers about the wrong machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from evaluators.gqa import faults
from evaluators.gqa.cli import BACKENDS

HOW_TO_GET = {
    "cuda": "on Linux with an NVIDIA GPU: pip install 'mlx[cuda13]' (in place of mlx[cpu])",
    "metal": "Metal needs Apple silicon (an M-series Mac): pip install mlx there",
}


class Unavailable(Exception):
    """The backend asked for is not in this MLX install or on this machine; the message is one line."""


@dataclass(frozen=True)
class Backend:
    name: str  # cpu, cuda or metal

    @property
    def scenario_set(self) -> str:
        """The scenario set sized for this backend (shapes.SETS)."""
        return "cpu" if self.name == "cpu" else "gpu"


def _is_available(module: str) -> bool:
    # mx.cuda appeared in MLX 0.29 builds and mx.metal is absent from some; neither may exist.
    probe = getattr(getattr(mx, module, None), "is_available", None)
    try:
        return bool(probe()) if callable(probe) else False
    except Exception as e:
        if faults.classify(str(e)) == "transient":
            raise  # a busy device: the evaluation is retried, not failed
        return False  # a broken install reads as "not available", with what to install


def available() -> dict[str, bool]:
    return {"cpu": True, "cuda": _is_available("cuda"), "metal": _is_available("metal")}


def choose(requested: str = "auto") -> Backend:
    """The backend for `requested`, made MLX's default device; Unavailable when it cannot be had."""
    if requested not in BACKENDS:
        raise Unavailable(f"--backend must be one of {', '.join(BACKENDS)}, not {requested!r}")
    here = available()
    if requested == "auto":
        name = "metal" if here["metal"] else "cuda" if here["cuda"] else "cpu"
    elif here[requested]:
        name = requested
    else:
        raise Unavailable(f"--backend {requested}: this MLX ({mx.__version__}) cannot use {requested} here; "
                          f"{HOW_TO_GET[requested]}")
    mx.set_default_device(mx.cpu if name == "cpu" else mx.gpu)
    return Backend(name)


def current() -> str:
    """The backend MLX's default device runs on now."""
    if mx.default_device().type == mx.cpu:
        return "cpu"
    return "metal" if _is_available("metal") else "cuda"
