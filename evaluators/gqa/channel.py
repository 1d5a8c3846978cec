"""JSON lines over a pair of pipes: how the supervisor drives a timing process (standard library only).

The supervisor keeps the clock. A timing process announces the start and the end of each timed
block on its pipe, and the supervisor reads the time when each announcement arrives: both cross
the same pipe, so its latency falls on both ends and cancels, and nothing in the timed process,
its clock functions included, can change the figure.

The candidate's process can write to its own pipe (the file descriptor is inherited), so the
reader trusts nothing it reads: a line that is not one JSON object, longer than MAX_LINE, or an
announcement out of order ends the evaluation as tampering (race.py).
"""

from __future__ import annotations

import json
import os
import select
import time

MAX_LINE = 1 << 16


class Closed(EOFError):
    """The other end closed its pipe: the process exited or died."""


class TimedOut(TimeoutError):
    pass


class Garbled(ValueError):
    """What arrived is not a message the protocol knows."""


class Channel:
    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self._buffer = b""

    @classmethod
    def from_arg(cls, text: str) -> "Channel":
        read_fd, write_fd = (int(x) for x in text.split(","))
        return cls(read_fd, write_fd)

    def send(self, message: dict) -> None:
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        while data:
            data = data[os.write(self.write_fd, data):]

    def receive(self, deadline: float | None = None) -> tuple[dict, int]:
        """The next message and time.perf_counter_ns() when it arrived; `deadline` in time.monotonic()."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise Garbled(f"a line longer than {MAX_LINE} bytes")
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                    raise TimedOut("no message before the deadline")
            chunk = os.read(self.read_fd, MAX_LINE)
            if not chunk:
                raise Closed("the other end closed the channel")
            self._buffer += chunk
        arrived = time.perf_counter_ns()
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            raise Garbled(f"not JSON: {line[:80]!r}") from None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise Garbled(f"not a message: {line[:80]!r}")
        return message, arrived

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
