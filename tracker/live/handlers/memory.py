"""Memory events: nonlinear mappings (remap_file_pages), System V shared memory
attached and detached, and munmap of either.

A nonlinear mapping is what only the probes see; a segment of the host's IPC
namespace the audit sees too (CRIU dumps a process's own namespace's segments
with it, so only the host's are marked).
"""
from __future__ import annotations

import time

from probes.events import Event, Kind
from tracker.audit import ProcessIdentity
from tracker.live import reads
from tracker.live.entries import Batch, Entries, Handler
from tracker.procfs import Mapping
from tracker.rules import Finding


def nonlinear(table: Entries, event: Event, batch: Batch) -> None:
    resolved = table.resolve(event.tgid, event.ts_ns, batch)
    if resolved is None:
        return
    _, who = resolved
    start, end = event.arg, event.arg + event.arg2
    finding = Finding("memory.nonlinear", f"tid {event.tid}: remap_file_pages() made "
                      f"{start:x}-{end:x} a nonlinear mapping", who.pid, tid=event.tid)
    table.set(who, ("nonlinear", event.arg, event.arg2), [finding], batch, event.tid,
              ts_ns=event.ts_ns, since_ns=event.ts_ns, span=(start, end))


def unmapped(table: Entries, event: Event, batch: Batch) -> None:
    entry = table.current(event.tgid, event.ts_ns)
    if entry is None:
        return
    start, end = event.arg, event.arg + event.arg2
    for key, mark in list(entry.marks.items()):
        if mark.span is not None and mark.span[0] < end and start < mark.span[1]:
            table.unset(entry, key, event.ts_ns, batch, event.tid)


def shm_attached(table: Entries, event: Event, batch: Batch) -> None:
    resolved = table.resolve(event.tgid, event.ts_ns, batch)
    if resolved is None:
        return
    proc, who = resolved
    if not reads.in_host_ipc(proc):
        return  # CRIU dumps the segments with the process's own IPC namespace
    read_ns = time.monotonic_ns()
    for mapping in reads.sysv_mappings(proc):
        if mapping.start == event.arg:
            mark_shm(table, who, mapping, batch, event.tid, read_ns, event.ts_ns)


def mark_shm(table: Entries, who: ProcessIdentity, mapping: Mapping, batch: Batch,
             tid: int | None, read_ns: int, since_ns: int) -> None:
    # read_ns: taken before /proc was read, so that a detach the read may have missed
    # (it ran meanwhile) is still newer than the mark, and undoes it
    table.set(who, ("shm", mapping.start), [reads.shm_finding(who.pid, mapping)], batch, tid,
              ts_ns=read_ns, since_ns=since_ns, span=(mapping.start, mapping.end))


def shm_detached(table: Entries, event: Event, batch: Batch) -> None:
    entry = table.current(event.tgid, event.ts_ns)
    if entry is None:
        return
    for key, mark in list(entry.marks.items()):
        if key[0] == "shm" and mark.span[0] <= event.arg < mark.span[1]:
            table.unset(entry, key, event.ts_ns, batch, event.tid)


HANDLERS: dict[Kind, Handler] = {
    Kind.NONLINEAR: nonlinear, Kind.UNMAPPED: unmapped,
    Kind.SHM_ATTACHED: shm_attached, Kind.SHM_DETACHED: shm_detached,
}
