"""What kind of trouble an error message describes: a kernel that did not compile, a GPU fault,
or a busy device that may be free on the next try.

Used on both sides of the process boundary: in the evaluation, on the message of an exception
the candidate's call raised (MLX raises compiler errors and CUDA errors as RuntimeError from
mx.eval), and in the supervisor, on the stderr of a child that died without a result. Standard
library only: the supervisor must not import MLX (it would touch the GPU it is guarding).

The message texts are MLX's own (0.32): mlx/backend/cuda/jit_module.cpp raises "Failed to
compile kernel: <NVRTC log>." and "Failed to load compiled <name> kernel: <log>.";
mlx/backend/metal/device.cpp "[metal::Device] Unable to build metal library from source\\n<log>";
mlx/backend/cuda/utils.cpp "<call> failed: <cudaGetErrorString>", e.g. "an illegal memory access
was encountered" or "out of memory"; mlx/backend/metal/device.cpp "[METAL] Command buffer execution
failed: <reason>." (a GPU page fault reads "Caused GPU Address Fault Error (...kIOGPU...)").
"""

from __future__ import annotations

import re

# Order matters: a compile log may quote any text, and an out-of-memory error reads as a CUDA error.
TRANSIENT = re.compile(
    r"out of memory|cudaErrorMemoryAllocation|CUDA_ERROR_OUT_OF_MEMORY"
    r"|busy or unavailable|cudaErrorDevicesUnavailable|CUDA_ERROR_DEVICE_UNAVAILABLE"
    r"|device (?:is )?busy|device (?:is )?unavailable",
    re.IGNORECASE,
)
COMPILE = re.compile(
    r"Failed to compile kernel|Failed to load compiled .* kernel|Unable to build metal library"
    r"|NVRTC_ERROR|nvrtc\w*\(.*\) failed|error detected in the compilation of"
)
# "Metal" stays case-sensitive: a Python traceback quoting `mx.metal` is no GPU fault.
GPU_FAULT = re.compile(
    r"(?i:illegal memory access|illegal address|misaligned address|unspecified launch failure"
    r"|illegal instruction was encountered|device-side assert|launch timed out"
    r"|CUDA error|cudaError|CUDA_ERROR_|command buffer|kIOGPU|GPU Address Fault|Caused GPU)"
    r"|\bXid\b|\bMetal\b|\[METAL\]"
)


def safety(kind: str = "none") -> dict:
    """The safety metrics every result carries, for a failure of `kind` ("none" when it passed)."""
    return {"failure_kind": kind, "compile_errors": int(kind == "compile_error"),
            "gpu_faults": int(kind == "gpu_fault")}


def failure(kind: str, reason: str, transient: bool, metrics: dict, artifacts: dict) -> dict:
    """A failed (or transient) hook result: `metrics` with the safety metrics of `kind`, and the
    reason also among the artifacts, where every reader of the note finds it."""
    return {"status": "transient" if transient else "failed", "reason": reason,
            "metrics": {**metrics, **safety(kind)}, "artifacts": {"reason": reason, **artifacts}}


def transient_kind(text: str) -> str:
    """The failure_kind of a transient error: out of memory, or a busy or unavailable device."""
    return "out_of_memory" if "memory" in text.lower() else "device_unavailable"


def classify(text: str) -> str | None:
    """"transient", "compile_error", "gpu_fault", or None for an ordinary error."""
    if TRANSIENT.search(text):
        return "transient"
    if COMPILE.search(text):
        return "compile_error"
    if GPU_FAULT.search(text):
        return "gpu_fault"
    return None


def telling_line(text: str, kind: str | None = None, limit: int = 300) -> str:
    """The line of `text` that says most: the first compiler `error:` line of a compile log, the
    first line matching the kind's pattern, else the first non-empty line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    wanted = []
    if kind == "compile_error":
        wanted.append(re.compile(r"\berror\b", re.IGNORECASE))
    pattern = {"transient": TRANSIENT, "compile_error": COMPILE, "gpu_fault": GPU_FAULT}.get(kind or "")
    if pattern:
        wanted.append(pattern)
    for want in wanted:
        for line in lines:
            if want.search(line):
                return line[:limit]
    return lines[0][:limit]
