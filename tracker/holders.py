"""Who holds which pipe or socket, host-wide: one walk of /proc, indexed by inode.

Only a walk over every fd of every process names the holders of a pipe or socket
outside the dumped tree (the kernel keeps no list of them). One audit walks at
most once; a pass that audits many processes (the process list, the live
table's seed and re-audits) shares one index, walked again only when it is
older than its `max_age` or than an fd an audit met, so that 2,000 processes
sharing a pipe cost one walk per pass, not one per process. Answers to requests
(and the gate) walk afresh: they are read for the request. `crwatch check` does not
walk at all unless asked (`--holders`): the holders only name whom an info
reason's pipe or socket reaches, and no verdict depends on them.
"""
from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from pathlib import Path

from tracker.procfs import DEFAULT_PROC_ROOT

# A pass shares its index this long: what it names is at most this stale.
PASS_MAX_AGE_SECONDS = 1.0


class HostHolders:
    """Link text (pipe:[N], socket:[N]) -> the pids on the host holding it."""

    def __init__(self, proc_root: Path = DEFAULT_PROC_ROOT, max_age: float | None = None):
        self.proc_root = proc_root
        self.max_age = max_age      # None: walked once, for one audit
        self.walks = 0
        self._index: dict[str, frozenset[int]] | None = None
        self._walked_at = 0.0
        self._lock = threading.Lock()   # audits of one pass may run in several threads

    def of(self, target: str, witness: tuple[int, str] | None = None) -> frozenset[int]:
        """The pids holding this pipe or socket. `witness`, a (pid, link) the caller saw
        held: an index that does not show it is older than that fd, and is walked again
        (the holders of a pipe made during a pass are never missed for that reason)."""
        with self._lock:
            if self._index is None or (self.max_age is not None
                                       and time.monotonic() - self._walked_at > self.max_age):
                self._walk()
            elif witness is not None and witness[0] not in self._index.get(witness[1], ()):
                self._walk()
            return self._index.get(target, frozenset())

    def _walk(self) -> None:
        self._walked_at = time.monotonic()
        self._index = walk(self.proc_root)
        self.walks += 1


def walk(proc_root: Path = DEFAULT_PROC_ROOT) -> dict[str, frozenset[int]]:
    """One readlink of every fd of every process; a process or fd gone meanwhile is skipped."""
    holders: dict[str, set[int]] = defaultdict(set)
    root = f"{proc_root}/"
    for name in os.listdir(proc_root):
        if not name.isdigit():
            continue
        fd_dir = f"{root}{name}/fd/"   # string joins: a Path per fd would double the walk
        try:
            fd_names = os.listdir(fd_dir)
        except OSError:
            continue
        pid = int(name)
        for fd_name in fd_names:
            try:
                target = os.readlink(fd_dir + fd_name)
            except OSError:
                continue
            if target.endswith("]"):
                holders[target].add(pid)
    return {target: frozenset(pids) for target, pids in holders.items()}
