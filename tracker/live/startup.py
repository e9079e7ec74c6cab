"""A tracker's start, phase by phase: what it does now, how long each phase took, and
a line for people at each step.

Attaching the probes compiles them first (clang, through bcc: about a second on an
idle host, many on a loaded one), and seeding audits every process of the host.
`crwatch watch` and `crwatch serve` print these lines on stderr until the tracker is
ready, each with the time since the start, so that a slow start is never a silent
one; the ready notice and /healthz carry how long each phase took.
"""
from __future__ import annotations

import time
from typing import Callable

STARTING, PROBES, SEEDING, READY = "starting", "probes", "seeding", "ready"
PROGRESS_SECONDS = 0.5   # a seeding line at most this often


class Startup:
    def __init__(self, say: Callable[[str], None] | None = None):
        self._say = say
        self.phase = STARTING
        self.seconds: dict[str, float] = {}       # phase: how long it took; then "total"
        self._started = self._phase_started = self._said = time.monotonic()

    def enter(self, phase: str, line: str) -> None:
        """The phase under way ended (its time is kept) and `phase` begins: `line` says so."""
        now = time.monotonic()
        if self.phase != STARTING:
            self.seconds[self.phase] = round(now - self._phase_started, 3)
        self.phase, self._phase_started = phase, now
        if phase == READY:
            self.seconds["total"] = round(now - self._started, 3)
        self.say(line)

    def seeded(self, done: int, total: int) -> None:
        """Seeding progress: said as it begins, then at most every PROGRESS_SECONDS."""
        if done == 0 or (time.monotonic() - self._said >= PROGRESS_SECONDS and done < total):
            self.say(f"seeding: {done}/{total} processes audited")

    def say(self, line: str) -> None:
        self._said = time.monotonic()
        if self._say is not None:
            self._say(f"{line} [{self._said - self._started:.1f} s]")

    def as_dict(self) -> dict:
        return {"phase": self.phase, "seconds": dict(self.seconds)}
