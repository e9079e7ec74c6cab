"""PI futex events: a thread waits on, acquires, fails to acquire or releases one.

A PI futex held is what only the probes see (CRIU's dump of the lock state
is refused under `strict`); a wait the audit sees too. A futex unlocked in
user space makes no syscall: the sweep asks /proc who owns it now.
"""
from __future__ import annotations

import time

from probes.events import Event, Kind
from tracker.audit import ProcessIdentity
from tracker.checks import task
from tracker.live import reads
from tracker.live.entries import Batch, Entries, Handler
from tracker.live.model import Entry, PiThread
from tracker.procfs import Proc
from tracker.rules import Finding


def pi_event(table: Entries, event: Event, batch: Batch) -> None:
    resolved = table.resolve(event.tgid, event.ts_ns, batch)
    if resolved is None:
        return
    proc, who = resolved
    entry = table.by_pid.get(who.pid)
    thread = entry.pi.get(event.tid) if entry else None
    if thread is not None and event.ts_ns < thread.last_ns:
        return  # a thread's futex calls are sequential: this one is already superseded
    if thread is None:
        if event.kind in (Kind.PI_NOT_ACQUIRED, Kind.PI_RELEASED):
            return  # nothing known to undo
        thread = table.entry(who, batch, event.tid).pi.setdefault(event.tid, PiThread())
    thread.last_ns = event.ts_ns
    address = event.arg
    if event.kind == Kind.PI_WAITING:
        thread.waiting = address
    elif event.kind == Kind.PI_ACQUIRED:
        thread.waiting = None
        owner = task.futex_owner(proc, address)
        if owner is None or owner == event.tid:  # else: already unlocked in user space
            thread.held.add(address)
    elif event.kind == Kind.PI_NOT_ACQUIRED:
        thread.waiting = None
    else:
        thread.held.discard(address)
    sync_pi(table, who, event.tid, thread, event.ts_ns, batch)


def sync_pi(table: Entries, who: ProcessIdentity, tid: int, thread: PiThread, ts_ns: int,
            batch: Batch) -> None:
    """Make the thread's ("pi", tid, address) marks match what it waits on and holds."""
    entry = table.entry(who, batch, tid)
    wanted = {address: f"holds the PI futex at {address:#x}" for address in thread.held}
    if thread.waiting is not None and thread.waiting not in wanted:
        wanted[thread.waiting] = f"waits on the PI futex at {thread.waiting:#x}"
    for key in [key for key in entry.marks if key[0] == "pi" and key[1] == tid]:
        if key[2] not in wanted:
            table.drop(entry, key, batch, tid)
    for address, what in wanted.items():
        finding = Finding("task.pi_futex", f"tid {tid} {what}", who.pid, tid=tid)
        mark = entry.marks.get(("pi", tid, address))
        if mark is None or mark.findings != (finding,):  # new, or a wait that became a hold
            table.set(who, ("pi", tid, address), [finding], batch, tid, ts_ns=ts_ns,
                      since_ns=ts_ns)
    if thread.idle:
        entry.pi.pop(tid, None)


def sweep(table: Entries, entry: Entry, who: ProcessIdentity, batch: Batch) -> None:
    """What no event reports: futexes unlocked in user space, and waits that began
    before the probes were attached (they see no end of a call they did not see start)."""
    proc = Proc(entry.pid, table.proc_root)
    for tid, thread in list(entry.pi.items()):
        released = {address for address in thread.held
                    if task.futex_owner(proc, address) not in (None, tid)}
        audited_wait_over = (thread.last_ns == 0 and thread.waiting is not None
                             and reads.pi_wait_address(proc, tid) != thread.waiting)
        if released or audited_wait_over:
            thread.held -= released
            if audited_wait_over:
                thread.waiting = None
            sync_pi(table, who, tid, thread, time.monotonic_ns(), batch)


HANDLERS: dict[Kind, Handler] = {
    Kind.PI_WAITING: pi_event, Kind.PI_ACQUIRED: pi_event,
    Kind.PI_NOT_ACQUIRED: pi_event, Kind.PI_RELEASED: pi_event,
}
