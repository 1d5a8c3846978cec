"""One device, several evaluations at once: no evaluation's GPU work runs beside a timed race.

gitevolve runs `workers` hooks at a time. On one GPU that pays where an evaluation waits on the
host (NVRTC compiles, loading, correctness): those overlap. What must not overlap is a timed
race with any other evaluation's work on the device, which would slow one side of the race by
chance. So each supervisor holds the device's lock, shared while its candidate loads, compiles
and checks, and exclusive from its first race until both its timing processes are gone:

    shared     any number at once; none while an exclusive holder races
    exclusive  one, alone; it waits for the shared holders to finish their checks, and while it
               waits no new shared holder comes in (a turnstile lock), so a stream of checks
               cannot keep it waiting for ever

The supervisor, never the candidate, holds the lock, and it keeps its candidate's process
stopped whenever the lock is not its own to use (referee.py): a candidate that ignores the
protocol cannot run work beside another evaluation's race by waiting for its turn.

The lock is an flock(2) on a file per user, backend and visible GPU (GQA_DEVICE_LOCK names
another); the kernel drops it when a supervisor dies, however it dies. Standard library only.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ENV = "GQA_DEVICE_LOCK"
POLL_SECONDS = 0.01


class Busy(TimeoutError):
    """The device stayed in other evaluations' hands until the deadline."""


def default_path(backend: str) -> Path:
    """One lock per user, backend and set of visible GPUs (evaluations on different GPUs of one
    machine never wait for each other)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all").replace(",", "-") or "none"
    return Path(tempfile.gettempdir()) / f"gqa-device-{os.getuid()}-{backend}-{visible}.lock"


class DeviceLock:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._main = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._turn = os.open(path.with_name(path.name + ".turn"), os.O_RDWR | os.O_CREAT, 0o600)
        self.mode: str | None = None
        self.waited = 0.0  # seconds spent waiting for the lock, in all

    @classmethod
    def for_backend(cls, backend: str) -> "DeviceLock":
        named = os.environ.get(ENV)
        return cls(Path(named) if named else default_path(backend))

    def _take(self, fd: int, how: int, deadline: float, what: str) -> None:
        started = time.monotonic()
        try:
            while True:
                try:
                    fcntl.flock(fd, how | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Busy(f"other evaluations held the device ({self.path}) for {what} until the "
                                   f"deadline: run fewer workers on one GPU, or give the hook a longer "
                                   f"--timeout") from None
                    time.sleep(POLL_SECONDS)
        finally:
            self.waited += time.monotonic() - started

    def shared(self, deadline: float) -> None:
        self._take(self._turn, fcntl.LOCK_EX, deadline, "a timed race")
        try:
            self._take(self._main, fcntl.LOCK_SH, deadline, "a timed race")
        finally:
            fcntl.flock(self._turn, fcntl.LOCK_UN)
        self.mode = "shared"

    def exclusive(self, deadline: float) -> None:
        """From shared (or nothing) to exclusive. Not atomic: the shared hold is let go first, so
        that two evaluations that both want to race cannot wait for each other."""
        if self.mode == "exclusive":
            return
        self.release()
        self._take(self._turn, fcntl.LOCK_EX, deadline, "their checks or races")
        try:
            self._take(self._main, fcntl.LOCK_EX, deadline, "their checks or races")
        finally:
            fcntl.flock(self._turn, fcntl.LOCK_UN)
        self.mode = "exclusive"

    def release(self) -> None:
        if self.mode is not None:
            fcntl.flock(self._main, fcntl.LOCK_UN)
            self.mode = None

    def close(self) -> None:
        self.release()
        for fd in (self._main, self._turn):
            os.close(fd)


@contextmanager
def held(backend: str, deadline: float) -> Iterator[DeviceLock]:
    """The device's lock, shared on entry; let go on exit, whatever happened."""
    lock = DeviceLock.for_backend(backend)
    try:
        lock.shared(deadline)
        yield lock
    finally:
        lock.close()
