"""The audits the service keeps for reuse: a process's last audit is answered again
while no probe event came for it and it is recent, so neither a request nor a row of the
process list reads /proc again for a process nothing happened to.

Only the probes can tell that nothing happened: without a live table fed by them,
nothing is kept and every audit is fresh.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from api.service.errors import NoSuchProcess
from tracker.audit import Audit, identify
from tracker.holders import HostHolders
from tracker.live.table import LiveTable
from tracker.procfs import AccessDenied, ProcessGone

# An audit is reused while no probe event came for its process, for this long at
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
    """`audit`: a fresh audit of one process (its own findings), with a pass's `holders`
    index if any; `live_table`: the table, when probes feed it (None: nothing is kept)."""

    def __init__(self, *, audit: Callable[..., Audit],
                 live_table: Callable[[], LiveTable | None]):
        self._audit = audit
        self._live_table = live_table
        self._kept: dict[int, _Kept] = {}

    def audit(self, pid: int, holders: HostHolders | None = None) -> tuple[Audit, bool]:
        """The last audit of this process if no probe event came for it since (and it is
        recent), else a fresh one; True when it is the last one."""
        table = self._live_table()
        kept = self._kept.get(pid)
        if (table is not None and kept is not None
                and time.monotonic() - kept.at < AUDIT_REUSE_SECONDS
                and not table.changed_since(pid, kept.sequence)):
            try:
                if identify(pid).start_time == kept.start_time:
                    return kept.audit, True
            except (ProcessGone, AccessDenied):
                self._kept.pop(pid, None)
                raise NoSuchProcess(pid) from None
        sequence, began = (table.sequence if table else 0), time.monotonic()
        result = self._audit(pid, holders=holders)
        if table is not None:
            self._kept[pid] = _Kept(result.root.start_time, sequence, began, result)
        return result, False

    def forget(self, pid: int) -> None:
        self._kept.pop(pid, None)

    def forget_old(self) -> None:
        stale = time.monotonic() - 2 * AUDIT_REUSE_SECONDS
        for pid in [pid for pid, kept in self._kept.items() if kept.at < stale]:
            self._kept.pop(pid, None)
