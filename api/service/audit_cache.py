"""The audits the service keeps for reuse: a process's last audit, or its tree's, is
answered again while no probe event came for any process it read and it is recent, so
neither a request nor a row of the process list reads /proc again for processes nothing
happened to.

Only the probes can tell that nothing happened: without a live table fed by them,
nothing is kept and every audit is fresh. A tree's membership is not left to them (the
probes report the forks of watched processes only): the kept tree is reused only
while the tree read now from /proc/PID/task/*/children has the same members, each
the same identity (pid, start time).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from api.service.errors import NoSuchProcess
from tracker.audit import Audit, descendants, identify
from tracker.holders import HostHolders
from tracker.live.table import LiveTable
from tracker.procfs import AccessDenied, Proc, ProcessGone

# An audit is reused while no probe event came for its processes, for this long at
# most: what no probe sees (a regular file opened, a unix socket connected) is
# then at most this stale.
AUDIT_REUSE_SECONDS = 5.0


@dataclass(frozen=True)
class _Kept:
    start_time: float
    sequence: int        # the live table's sequence when the audit began
    at: float            # time.monotonic() when it began
    audit: Audit


class AuditCache:
    """`audit(pid, tree=, holders=)`: a fresh audit of one process (tree False: its own
    findings) or of its tree, with a pass's `holders` index if any; `live_table`: the
    table, when probes feed it (None: nothing is kept)."""

    def __init__(self, *, audit: Callable[..., Audit],
                 live_table: Callable[[], LiveTable | None]):
        self._audit = audit
        self._live_table = live_table
        self._kept: dict[tuple[int, bool], _Kept] = {}

    def audit(self, pid: int, holders: HostHolders | None = None, *,
              tree: bool = False) -> tuple[Audit, bool]:
        """The last audit of this process (or tree) if no probe event came for what it read
        since (and it is recent), else a fresh one; True when it is the last one."""
        table = self._live_table()
        kept = self._kept.get((pid, tree))
        if (table is not None and kept is not None
                and time.monotonic() - kept.at < AUDIT_REUSE_SECONDS
                and not any(table.changed_since(member.pid, kept.sequence)
                            for member in kept.audit.processes)):
            try:
                if identify(pid).start_time == kept.start_time and (
                        not tree or _same_members(pid, kept.audit)):
                    return kept.audit, True
            except (ProcessGone, AccessDenied):
                self.forget(pid)
                raise NoSuchProcess(pid) from None
        sequence, began = (table.sequence if table else 0), time.monotonic()
        result = self._audit(pid, tree=tree, holders=holders)
        if table is not None:
            self._kept[(pid, tree)] = _Kept(result.root.start_time, sequence, began, result)
        return result, False

    def forget(self, pid: int) -> None:
        for tree in (False, True):
            self._kept.pop((pid, tree), None)

    def forget_old(self) -> None:
        stale = time.monotonic() - 2 * AUDIT_REUSE_SECONDS
        for key in [key for key, kept in self._kept.items() if kept.at < stale]:
            self._kept.pop(key, None)


def _same_members(pid: int, kept: Audit) -> bool:
    """Is the tree rooted at pid now made of the processes the kept audit read? (A
    descendant that left it while it was read, `departed`, is no member either.)"""
    members = {member.pid: member.start_time for member in kept.processes}
    now = descendants(pid)
    if len(now) != len(members) or set(now) != members.keys():
        return False
    try:
        return all(Proc(member).stat.start_time == members[member] for member in now)
    except (ProcessGone, AccessDenied):
        return False
