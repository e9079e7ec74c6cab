"""A real Tracker for the tests: probes compiled and attached, stopped at the end."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from tracker.profiles import profile
from tracker.live.applier import Notice, Tracker


@contextmanager
def attached_tracker(*subscribers: Callable[[Notice], None]) -> Iterator[Tracker]:
    """Subscribers see every notice from the ready one on (for tests marked `bpf`)."""
    running = Tracker(profile("criu", (4, 2, 1)))
    for subscriber in subscribers:
        running.subscribe(subscriber)
    running.start()
    try:
        assert running.degraded is None, running.degraded
        yield running
    finally:
        running.stop()
