"""File lock events: a lock call, or a close by a lock holder, makes its locks be
read again from /proc.

A process's locks are read at most once per interval: a lock call reported
sooner is read at the end of the interval (the kernel side reports one call
until the read, so nothing in between is lost, and the read shows the last
state). The table runs the reads that are due (run_due) when next_due_ns says.
"""
from __future__ import annotations

import time

from probes.events import Event, Kind
from tracker.audit import ProcessIdentity
from tracker.live import reads
from tracker.live.entries import Batch, Entries, Handler
from tracker.procfs import Proc

LOCK_READ_INTERVAL_NS = 50_000_000


class LockReads:
    """When each process's locks were last read, and the reads put off until later."""

    def __init__(self) -> None:
        self.last: dict[int, int] = {}                      # pid: when last read
        self.due: dict[int, tuple[int, Event]] = {}         # pid: (when, the event)


def locks_changed(table: Entries, event: Event, batch: Batch) -> None:
    lock_reads = table.kept(LockReads)
    pid = event.tgid
    last = lock_reads.last.get(pid)
    if pid in lock_reads.due:
        return  # a read is already due, and shows this change too
    if last is not None and time.monotonic_ns() - last < LOCK_READ_INTERVAL_NS:
        table.counters.lock_reads_deferred += 1
        lock_reads.due[pid] = (last + LOCK_READ_INTERVAL_NS, event)
        return
    read_locks(table, event, batch)


def next_due_ns(table: Entries) -> int | None:
    """The earliest deferred lock read."""
    return min((due for due, _ in table.kept(LockReads).due.values()), default=None)


def run_due(table: Entries, now: int, batch: Batch) -> None:
    """The deferred lock reads whose time has come."""
    lock_reads = table.kept(LockReads)
    for pid, (due, event) in list(lock_reads.due.items()):
        if due <= now:
            del lock_reads.due[pid]
            read_locks(table, event, batch)
    lock_reads.last = {pid: read for pid, read in lock_reads.last.items()
                       if now - read < LOCK_READ_INTERVAL_NS}


def read_locks(table: Entries, event: Event, batch: Batch) -> None:
    if table.kernel is not None:
        table.kernel.locks_read(event.tgid)  # before the read: a later change is reported
    table.kept(LockReads).last[event.tgid] = time.monotonic_ns()
    table.counters.lock_reads += 1
    resolved = table.resolve(event.tgid, event.ts_ns, batch)
    if resolved is not None:
        refresh_locks(table, *resolved, batch, event.tid, event.ts_ns)


def refresh_locks(table: Entries, proc: Proc, who: ProcessIdentity, batch: Batch,
                  tid: int | None, since_ns: int) -> None:
    read_ns = time.monotonic_ns()
    held = reads.held_locks(proc)
    table.set(who, ("locks",), held, batch, tid, ts_ns=read_ns, since_ns=since_ns)
    if held and table.kernel is not None:
        table.kernel.mark_lock_holder(who.pid)


HANDLERS: dict[Kind, Handler] = {Kind.LOCKS_CHANGED: locks_changed}
