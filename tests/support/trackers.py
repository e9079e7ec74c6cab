"""A real Tracker for the tests: probes compiled and attached, stopped at the end."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator

import pytest

from tracker.profiles import profile
from tracker.live.applier import Notice, Tracker


@contextmanager
def attached_tracker(*subscribers: Callable[[Notice], None]) -> Iterator[Tracker]:
    """Subscribers see every notice from the ready one on. Needs root (CI is root)."""
    if os.geteuid() != 0:
        pytest.skip("loading eBPF programs needs root")
    running = Tracker(profile("criu", (4, 2, 1)))
    for subscriber in subscribers:
        running.subscribe(subscriber)
    running.start()
    try:
        assert running.degraded is None, running.degraded
        yield running
    finally:
        running.stop()
