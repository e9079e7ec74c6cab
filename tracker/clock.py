"""Times as crwatch shows and compares them: UTC for people, the probes' CLOCK_MONOTONIC,
and /proc's CLOCK_BOOTTIME start times."""
from __future__ import annotations

import time
from datetime import datetime, timezone

_SECONDS: dict[int, str] = {}  # whole seconds formatted lately (events lag behind the clock)
SECONDS_KEPT = 8
# The last millisecond iso_from_monotonic_ns formatted, and its text: the events of a
# burst (a hundred a millisecond) and the transitions they make share it.
_last_millisecond: tuple[int, str] = (-1, "")


def iso_from_wall_ns(wall_ns: int) -> str:
    """UTC to the millisecond; the whole second's text is made once per second (the live
    table stamps every transition with it)."""
    # the microsecond rounded, then cut to the millisecond: (wall_ns + 500) // 1000 // 1000
    return _iso_from_millisecond((wall_ns + 500) // 1_000_000)


def _iso_from_millisecond(millisecond: int) -> str:
    second, millis = divmod(millisecond, 1000)
    text = _SECONDS.get(second)
    if text is None:
        if len(_SECONDS) >= SECONDS_KEPT:
            _SECONDS.clear()
        text = _SECONDS[second] = datetime.fromtimestamp(second, timezone.utc).isoformat(
            timespec="seconds").removesuffix("+00:00")
    return f"{text}.{millis:03d}Z"


def iso_from_monotonic_ns(ts_ns: int) -> str:
    """The UTC time of a CLOCK_MONOTONIC instant (an event's kernel timestamp)."""
    global _last_millisecond
    millisecond = (time.time_ns() - time.monotonic_ns() + ts_ns + 500) // 1_000_000
    last, text = _last_millisecond  # one tuple, read whole: safe from any thread
    if last != millisecond:
        text = _iso_from_millisecond(millisecond)
        _last_millisecond = (millisecond, text)
    return text


def boot_offset_ns() -> int:
    """CLOCK_BOOTTIME - CLOCK_MONOTONIC now: the time the host spent suspended."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.monotonic_ns()


def boot_seconds(ts_ns: int, offset_ns: int | None = None) -> float:
    """A CLOCK_MONOTONIC instant on the clock of /proc/PID/stat start times (CLOCK_BOOTTIME);
    `offset_ns`: boot_offset_ns() read once for many instants."""
    return (ts_ns + (boot_offset_ns() if offset_ns is None else offset_ns)) / 1e9
