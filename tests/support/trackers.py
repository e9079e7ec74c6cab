"""A real Tracker for the tests (probes compiled and attached, stopped at the end), a
recorder of what it hands out, and `crwatch watch` as a user runs it."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tracker.live.applier import Lost, Notice, Tracker
from tracker.live.model import Transition
from tracker.profiles import profile

ARRIVAL_TIMEOUT = 10.0   # for a probe event to become a transition
CRWATCH = Path(sys.executable).with_name("crwatch")


@contextmanager
def attached_tracker(*subscribers: Callable[[Notice], None]) -> Iterator[Tracker]:
    """Subscribers see every notice from the ready one on (for tests marked `bpf`). It
    serves `strict` too, so that every probe is attached (the futex one included)."""
    running = Tracker(profile("criu", (4, 2, 1)), served=[profile("strict", (4, 2, 1))])
    for subscriber in subscribers:
        running.subscribe(subscriber)
    running.start()
    try:
        assert running.degraded is None, running.degraded
        yield running
    finally:
        running.stop()


class Recorder:
    """Every notice the tracker hands out, and a way to await one."""

    def __init__(self):
        self._changed = threading.Condition()
        self.transitions: list[Transition] = []
        self.losses: list[Lost] = []

    def __call__(self, notice) -> None:
        with self._changed:
            if isinstance(notice, Transition):
                self.transitions.append(notice)
            elif isinstance(notice, Lost):
                self.losses.append(notice)
            self._changed.notify_all()

    def await_loss(self) -> Lost:
        with self._changed:
            if not self._changed.wait_for(lambda: self.losses, ARRIVAL_TIMEOUT):
                pytest.fail(f"no loss reported within {ARRIVAL_TIMEOUT} s")
            return self.losses[0]

    def of(self, pid: int) -> list[Transition]:
        with self._changed:
            return [t for t in self.transitions if t.pid == pid]

    def await_state(self, pid: int, state: str, after: int = 0) -> Transition:
        """The first transition of `pid` to `state` among its transitions from index `after`."""
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        with self._changed:
            while True:
                mine = [t for t in self.transitions if t.pid == pid][after:]
                found = next((t for t in mine if t.state == state), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no {state} transition for pid {pid} within {ARRIVAL_TIMEOUT} s; "
                                f"its transitions: {[(t.state, codes_of(t)) for t in mine]}")
                self._changed.wait(left)


class Brake:
    """A subscriber that, once engaged, holds the applier thread at the next transition
    of `pid` until released: the events behind it wait in the queue."""

    def __init__(self):
        self.pid: int | None = None
        self.holding = threading.Event()
        self.released = threading.Event()

    def __call__(self, notice) -> None:
        if isinstance(notice, Transition) and notice.pid == self.pid:
            self.holding.set()
            self.released.wait(2 * ARRIVAL_TIMEOUT)


def codes_of(transition: Transition) -> list[str]:
    return [reason["code"] for reason in transition.reasons]


class Watch:
    """`crwatch watch` as a user runs it, its stdout read line by line."""

    def __init__(self, *arguments: str):
        self.process = subprocess.Popen([str(CRWATCH), "watch", *arguments], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        self._unread = b""

    def line(self, timeout: float = 60.0) -> dict:
        # Read with os.read, not readline(): select() cannot see what a buffered
        # reader already holds.
        deadline = time.monotonic() + timeout
        stdout = self.process.stdout.fileno()
        while b"\n" not in self._unread:
            ready, _, _ = select.select([stdout], [], [], max(deadline - time.monotonic(), 0))
            chunk = os.read(stdout, 1 << 16) if ready else b""
            assert chunk, f"crwatch watch wrote no line within {timeout} s"
            self._unread += chunk
        text, _, self._unread = self._unread.partition(b"\n")
        return json.loads(text)

    def await_transition(self, pid: int, state: str, code: str | None = None) -> dict:
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while True:
            line = self.line(max(deadline - time.monotonic(), 0.01))
            if (line["kind"] == "transition" and line["pid"] == pid and line["state"] == state
                    and (code is None or code in [r["code"] for r in line["reasons"]])):
                return line

    def stop(self, number: int = signal.SIGINT) -> tuple[int, str]:
        self.process.send_signal(number)
        _, stderr = self.process.communicate(timeout=30)
        return self.process.returncode, stderr.decode()
