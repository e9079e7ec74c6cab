"""Starting the freezer helper, and one kept ready ahead of the gate that takes it.

The helper's start is a Python's (5 ms alone, 10 ms and more on a loaded host) and
comes first on the gate's critical path: nothing is frozen, rechecked or answered
before it runs. A process that runs gates one after another (the service) keeps one
helper ready: it holds nothing, waits on its stdin for what to freeze
(freeze_helper.py started without arguments), and ends when its owner does (end of
file), as any helper does. The next one is started once a gate has ended, not while
its dump runs. `crwatch gate` runs one gate and starts its helper when it needs it.
"""
from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Sequence

from tracker.gate import standalone

HELPER = Path(__file__).with_name("freeze_helper.py")


def start_helper(arguments: Sequence[str] = ()) -> subprocess.Popen:
    """A freezer helper: given what to freeze, it freezes at once; given nothing, it
    waits for that on its stdin (ReadyHelper.take)."""
    return subprocess.Popen(standalone.command(HELPER, *arguments), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # Ctrl-C on crwatch's terminal must not reach it


class ReadyHelper:
    """At most one helper started ahead. `take(arguments)` hands it what to freeze and
    returns it (None: none is ready, or it died meanwhile); `replenish()` starts the
    next if none is ready; `close()` ends the one waiting. Gates in several threads may
    share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: subprocess.Popen | None = None

    def take(self, arguments: Sequence[str]) -> subprocess.Popen | None:
        with self._lock:
            helper, self._ready = self._ready, None
        if helper is None:
            return None
        # Hex, one word each: a cgroup's path may hold spaces, newlines, any byte.
        line = " ".join(os.fsencode(argument).hex() for argument in arguments)
        try:
            helper.stdin.write(f"{line}\n".encode())
            helper.stdin.flush()
        except (BrokenPipeError, ValueError):
            _end(helper)  # it died while it waited: the gate starts one of its own
            return None
        return helper

    def replenish(self) -> None:
        with self._lock:
            if self._ready is None:
                self._ready = start_helper()

    def close(self) -> None:
        with self._lock:
            helper, self._ready = self._ready, None
        if helper is not None:
            _end(helper)


def _end(helper: subprocess.Popen) -> None:
    """End a helper that holds nothing: end of file on its stdin, and it exits."""
    try:
        helper.stdin.close()
    except BrokenPipeError:
        pass  # it has exited already
    helper.wait()
    helper.stdout.close()
    helper.stderr.close()
