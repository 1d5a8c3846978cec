"""Device memory: the peak of one call, and whose fault an out-of-memory error is.

Peak memory is what a call allocates on top of what is already alive (its inputs). The published
OpenEvolve run reported memory next to speed; a kernel that wins time by materialising a
(B, H, Lq, Lk) score matrix or copying K/V per query head shows up here.
"""

from __future__ import annotations

import re
from typing import Callable

import mlx.core as mx


def peak_bytes(fn: Callable, args: tuple) -> int:
    """Bytes of device memory `fn(*args)` held at its peak, above what was held before the call."""
    mx.synchronize()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    out = fn(*args)
    mx.eval(out)
    peak = mx.get_peak_memory() - before
    del out
    return max(0, peak)


def device_bytes() -> int | None:
    """The default device's memory, where MLX says (CUDA: total_memory, Metal: memory_size)."""
    try:
        info = mx.device_info()
    except Exception:
        return None
    size = info.get("total_memory") or info.get("memory_size")
    return int(size) if size else None


def own_out_of_memory(message: str) -> str | None:
    """Why an out-of-memory error is the candidate's own doing, or None when it may be another
    process's (a GPU shared with other work): the request alone, or what this process already
    holds, is at least half the device."""
    total = device_bytes()
    if not total:
        return None
    held = max(mx.get_peak_memory(), mx.get_active_memory())
    asked = max((int(n) for n in re.findall(r"allocate (\d+) bytes", message)), default=0)
    if asked >= total / 2:
        return f"it asked for {asked / 2**30:.1f} GiB at once, of {total / 2**30:.1f} GiB on the device"
    if held >= total / 2:
        return f"this evaluation held {held / 2**30:.1f} GiB of the device's {total / 2**30:.1f} GiB"
    return None
