"""The candidate's kernels compiled once across candidates: NVRTC's results kept on disk.

MLX compiles each `mx.fast.cuda_kernel` variant with NVRTC on first use and keeps the result only
for the life of the process, so every candidate, a fresh process, pays every compile again:
20-45 s of a 65-106 s evaluation on the H200, for kernels that earlier candidates had already
compiled. nvrtc_cache.c sits between MLX and NVRTC in the candidate's process (LD_PRELOAD) and
serves a compile whose every input (source, headers, options, NVRTC's version) is byte for byte
one it has seen; why that is safe is in its header.

The supervisor builds the library with the system's C compiler into the cache directory (once
per source of the library) and gives it to the candidate's process only: the baseline never
loads it. Where there is no compiler, or the cache is off, the candidate compiles as before,
and the metrics say why (`compile_cache`).

A re-measure that decides a champion or a pull request (GITEVOLVE_PURPOSE remeasure or promote)
compiles afresh: the cache is a directory the candidate's own process can write, so a score that
moves a branch must not rest on what an earlier candidate left there (docs/evaluator-threats.md).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("nvrtc_cache.c")
DIRECTORY = "GITEVOLVE_NVRTC_CACHE"  # read by the library: where the entries are
CAUTIOUS = ("remeasure", "promote")  # GITEVOLVE_PURPOSE values that compile afresh


def default_directory(environ=os.environ) -> Path:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gitevolve" / "nvrtc"


def choose(setting: str, environ=os.environ) -> tuple[Path | None, str]:
    """The cache directory for `--compile-cache` (`auto`, `off` or a directory), and why not if None."""
    if setting == "off":
        return None, "off (--compile-cache off)"
    purpose = environ.get("GITEVOLVE_PURPOSE", "")
    if purpose in CAUTIOUS:
        return None, f"off (a {purpose} compiles afresh)"
    return (default_directory(environ) if setting == "auto" else Path(setting)), "on"


def build(directory: Path) -> Path:
    """The library for this source of nvrtc_cache.c, built into `directory` if it is not there yet.
    Raises OSError (no compiler, a compile error) with the compiler's first line."""
    source = SOURCE.read_bytes()
    library = directory / f"nvrtc-cache-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if library.exists():
        return library
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc) to build nvrtc_cache.c")
    directory.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=directory, suffix=".so.partial")
    os.close(fd)
    try:
        done = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", partial, str(SOURCE), "-ldl", "-lpthread"],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["(no output)"])[0]
            raise OSError(f"building nvrtc_cache.c failed: {first}")
        os.replace(partial, library)  # others building at the same time replace it with the same bytes
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return library


def environment(setting: str, environ=os.environ) -> tuple[dict[str, str], str]:
    """What to add to the candidate's environment for the cache, and the `compile_cache` metric."""
    directory, why = choose(setting, environ)
    if directory is None:
        return {}, why
    try:
        library = build(directory)
    except (OSError, subprocess.SubprocessError) as e:
        return {}, f"off ({e})"
    preload = " ".join(p for p in (str(library), environ.get("LD_PRELOAD", "")) if p)
    return {"LD_PRELOAD": preload, DIRECTORY: str(directory)}, "on"


def for_candidate(backend: str, setting: str, environ=os.environ) -> tuple[dict[str, str] | None, str | None]:
    """The candidate process's environment (None: the supervisor's own) and the `compile_cache`
    metric (None where NVRTC is not used: the CPU and Metal backends)."""
    # Without importing MLX (the supervisor never does): `auto` picks CUDA where a GPU's device node is.
    if backend not in ("cuda", "auto") or (backend == "auto" and not Path("/dev/nvidiactl").exists()):
        return None, None
    extra, why = environment(setting, environ)
    return ({**environ, **extra} if extra else None), why


def stats() -> dict:
    """In the candidate's process: what the cache did there (nothing when the library is not loaded).
    The counters are the candidate process's own, so they inform; they never enter the score."""
    try:
        report = ctypes.CDLL(None).gitevolve_nvrtc_cache_stats
    except AttributeError:
        return {}
    hits, misses, errors, saved = ctypes.c_long(), ctypes.c_long(), ctypes.c_long(), ctypes.c_double()
    report.argtypes = [ctypes.POINTER(ctypes.c_long)] * 3 + [ctypes.POINTER(ctypes.c_double)]
    if not report(ctypes.byref(hits), ctypes.byref(misses), ctypes.byref(errors), ctypes.byref(saved)):
        return {}
    return {"compile_cache_hits": hits.value, "compile_cache_misses": misses.value,
            "compile_cache_write_errors": errors.value, "compile_cache_saved_seconds": round(saved.value, 2)}
