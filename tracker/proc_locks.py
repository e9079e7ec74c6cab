"""/proc/locks, read once per audit, and read ahead by a command that knows it will audit.

The kernel makes the first reader of /proc/locks in a while wait for an RCU
grace period (locks_start takes file_rwsem for writing: percpu_down_write),
about 10 ms spent asleep: longer than a small process's whole audit. `read_ahead`
begins the read on a thread of its own, so that the wait overlaps other work (the
`check --holders` command begins it before it imports the checks); the next audit
under that /proc root takes the text (`text`), and any later one reads afresh. An
audit reads it only to name who outside the tree locks its files
(tracker.checks.locks).

May import: the standard library only (the command line begins the read before it
imports anything else of crwatch).
"""
from __future__ import annotations

import threading
from pathlib import Path

HOST_PROC_ROOT = Path("/proc")


def read_ahead(proc_root: Path = HOST_PROC_ROOT) -> None:
    """Begin reading proc_root/locks in the background, for the next audit to take."""
    reading = _ReadAhead(proc_root)
    with _ahead_lock:
        if proc_root in _ahead:
            return
        _ahead[proc_root] = reading
    reading.start()


def text(proc_root: Path) -> str:
    """proc_root/locks: the text read ahead, when a read was begun, else read now.
    Raises OSError as open() does."""
    with _ahead_lock:
        ahead = _ahead.pop(proc_root, None)
    found = ahead.text() if ahead is not None else None
    return _read(proc_root) if found is None else found


class _ReadAhead(threading.Thread):
    def __init__(self, proc_root: Path) -> None:
        super().__init__(daemon=True, name="crwatch-locks")
        self.proc_root = proc_root
        self._text: str | None = None

    def run(self) -> None:
        try:
            self._text = _read(self.proc_root)
        except OSError:
            pass  # the audit reads it again, and meets the error itself

    def text(self) -> str | None:
        self.join()
        return self._text


def _read(proc_root: Path) -> str:
    with open(proc_root / "locks", encoding="utf-8", errors="surrogateescape") as file:
        return file.read()


# /proc/locks being read ahead, by /proc root: the next audit under that root takes it.
_ahead: dict[Path, _ReadAhead] = {}
_ahead_lock = threading.Lock()
