"""When the process list audits a row again (api/service/state.py row_stale), with a real
live table: an event for its process makes it stale at once, a loss only once the row is
LOSS_REFRESH_SECONDS old (a host losing events every second must not have every row
audited every second), a costly row only once it is EVENT_SPACING times its audit's cost
old, and every row once it is due; without a table, only when due."""
from __future__ import annotations

import os
import time

from api.service.state import (
    DUE_BATCH_SECONDS,
    EVENT_SPACING,
    LIST_REFRESH_SECONDS,
    LOSS_REFRESH_SECONDS,
    row_due,
    row_stale,
)
from probes.events import Event, Kind
from tracker.live.table import LiveTable
from tracker.profiles import profile


def _row(table: LiveTable, pid: int, *, age: float = 0.0, due_in: float = 100.0,
         cost: float = 0.0) -> dict:
    now = time.monotonic()
    return {"pid": pid, "sequence": table.sequence, "at": now - age, "due": now + due_in,
            "cost": cost}


def _event(kind: Kind, pid: int, arg: int = 0) -> Event:
    return Event(kind, time.monotonic_ns(), pid, pid, comm="x", arg=arg)


def test_a_row_is_stale_after_an_event_for_its_process_and_not_for_another():
    table = LiveTable(profile("criu", (4, 2, 1)), own_pid=os.getpid())
    row = _row(table, 4_000_001)
    assert not row_stale(row, table)
    table.apply(_event(Kind.EXITED, 4_000_002, arg=1))
    assert not row_stale(row, table)
    table.apply(_event(Kind.EXITED, 4_000_001, arg=1))
    assert row_stale(row, table)


def test_a_loss_makes_only_rows_older_than_the_loss_interval_stale():
    table = LiveTable(profile("criu", (4, 2, 1)), own_pid=os.getpid())
    young = _row(table, 4_000_001)
    old = _row(table, 4_000_002, age=LOSS_REFRESH_SECONDS + 1)
    table.apply(Event(Kind.LOST, time.monotonic_ns(), 0, 0, arg=3))
    assert not row_stale(young, table)
    assert row_stale(old, table)
    assert not row_stale(_row(table, 4_000_002, age=LOSS_REFRESH_SECONDS + 1), table)


def test_a_due_row_is_stale_with_or_without_a_table():
    table = LiveTable(profile("criu", (4, 2, 1)), own_pid=os.getpid())
    assert row_stale(_row(table, 4_000_001, due_in=-1), table)
    assert row_stale(_row(table, 4_000_001, due_in=-1), None)
    assert not row_stale(_row(table, 4_000_001), None)


def test_a_row_that_cost_much_is_audited_again_for_its_events_only_when_old_enough():
    table = LiveTable(profile("criu", (4, 2, 1)), own_pid=os.getpid())
    costly = _row(table, 4_000_001, age=1.0, cost=0.1)
    older = _row(table, 4_000_001, age=EVENT_SPACING * 0.1 + 1, cost=0.1)
    table.apply(_event(Kind.EXITED, 4_000_001, arg=1))
    assert not row_stale(costly, table)
    assert row_stale(older, table)


def test_rows_fall_due_together_in_batches_spread_over_the_interval():
    now = time.monotonic()
    dues = {row_due(now) for _ in range(200)}
    assert all(due % DUE_BATCH_SECONDS == 0 for due in dues)
    assert all(now + LIST_REFRESH_SECONDS / 2 <= due < now + LIST_REFRESH_SECONDS
               + DUE_BATCH_SECONDS for due in dues)
    assert 1 < len(dues) <= LIST_REFRESH_SECONDS / 2 / DUE_BATCH_SECONDS + 1
