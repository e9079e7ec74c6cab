"""Subjects that enter and leave their state step by step, when the test says go."""
from __future__ import annotations

import os
import select
import signal
from contextlib import contextmanager
from typing import Iterator

from tests.support.subjects import Subject, start

STEP_TIMEOUT = 10.0   # for a subject to acknowledge a step


# Subjects block SIGUSR1 and take it with sigwait(): step() returns when the test
# says go, ack() tells the test the step is done (with the time it began).
STEPS = """
import struct
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
ACK_FD = int(os.environ["ACK_FD"])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def step():
    signal.sigwait({signal.SIGUSR1})
    return time.monotonic_ns()
def ack(started):
    os.write(ACK_FD, f"{started}\\n".encode())
def syscall_fd(number, *args):
    fd = libc.syscall(number, *args)
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"syscall {number}")
    return fd
"""


class Stepped:
    """A running subject, and the pipe on which it acknowledges each step."""

    def __init__(self, running: Subject, acks: int):
        self.running, self.pid, self.note = running, running.pid, running.note
        self._acks = os.fdopen(acks, "rb", buffering=0)

    def advance(self, pid: int | None = None) -> int:
        """Let the subject (or its child `pid`) take its next step; returns when it began."""
        os.kill(pid or self.pid, signal.SIGUSR1)
        ready, _, _ = select.select([self._acks], [], [], STEP_TIMEOUT)
        line = self._acks.readline() if ready else b""
        assert line, f"pid {pid or self.pid} did not acknowledge its step"
        return int(line)

    def close(self) -> None:
        self.running.stop()
        self._acks.close()


@contextmanager
def stepped(code: str, env: dict[str, str] | None = None) -> Iterator[Stepped]:
    read_end, write_end = os.pipe()
    try:
        running = start(STEPS + code, pass_fds=(write_end,),
                        env={**(env or {}), "ACK_FD": str(write_end)})
    finally:
        os.close(write_end)
    subject = Stepped(running, read_end)
    try:
        yield subject
    finally:
        subject.close()
