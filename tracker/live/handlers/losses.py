"""LOST: records were lost (kernel, queue or decoding), so any entry may be wrong:
the loss is counted and the whole table re-audited (tracker.live.reconcile)."""
from __future__ import annotations

from probes.events import Event, Kind
from tracker.live import reconcile
from tracker.live.entries import Batch, Entries, Handler


def lost(table: Entries, event: Event, batch: Batch) -> None:
    table.counters.lost += event.arg
    table.counters.lost_reports += 1
    reconcile.reaudit(table, batch, lost_ns=event.ts_ns)


HANDLERS: dict[Kind, Handler] = {Kind.LOST: lost}
