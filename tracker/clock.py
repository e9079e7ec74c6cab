"""Times as crwatch shows and compares them: UTC for people, the probes' CLOCK_MONOTONIC,
and /proc's CLOCK_BOOTTIME start times."""
from __future__ import annotations

import time
from datetime import datetime, timezone


def iso_from_wall_ns(wall_ns: int) -> str:
    moment = datetime.fromtimestamp(wall_ns / 1e9, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_from_monotonic_ns(ts_ns: int) -> str:
    """The UTC time of a CLOCK_MONOTONIC instant (an event's kernel timestamp)."""
    return iso_from_wall_ns(time.time_ns() - (time.monotonic_ns() - ts_ns))


def boot_seconds(ts_ns: int) -> float:
    """A CLOCK_MONOTONIC instant on the clock of /proc/PID/stat start times (CLOCK_BOOTTIME)."""
    offset = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.monotonic_ns()
    return (ts_ns + offset) / 1e9
