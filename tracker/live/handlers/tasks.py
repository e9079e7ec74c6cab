"""Process life: fork, exec and exit, which carry marks over, clear them, or end them.

A child inherits its parent's fds, nonlinear mappings, locks, host shm and
tracer, each judged again in the child; an exec leaves no mappings or futexes
and closes close-on-exec fds; an exiting thread holds nothing, an exiting
process takes its entry with it, and a tracer's exit detaches its tracees.
"""
from __future__ import annotations

import time

from probes.events import Event, Kind
from tracker.live import reads
from tracker.live.entries import Batch, Entries, Handler
from tracker.live.handlers.fds import rejudge_fd
from tracker.live.handlers.locks import refresh_locks
from tracker.live.handlers.memory import mark_shm
from tracker.live.handlers.namespaces import refresh_pidns
from tracker.live.handlers.tracing import drop_traced_by, refresh_traced


def forked(table: Entries, event: Event, batch: Batch) -> None:
    child = table.resolve(event.arg, event.ts_ns, batch)
    if child is None:
        return
    proc, who = child
    parent = table.current(event.tgid, event.ts_ns)
    refresh_pidns(table, proc, who, batch, event.ts_ns)
    if parent is None:
        return  # a parent never marked passes nothing on
    for key, mark in list(parent.marks.items()):
        if key[0] == "fd":
            # Inherited fds: judged again in the child, and followed there too.
            rejudge_fd(table, proc, who, key[1], mark, event._replace(tid=who.pid), batch)
        elif key[0] == "nonlinear":
            table.set(who, key, [f._replace(pid=who.pid, tid=None) for f in mark.findings],
                      batch, who.pid, ts_ns=event.ts_ns, since_ns=event.ts_ns,
                      span=mark.span)
    kinds = {key[0] for key in parent.marks}
    if "locks" in kinds:
        refresh_locks(table, proc, who, batch, who.pid, event.ts_ns)
    if "shm" in kinds and reads.in_host_ipc(proc):
        read_ns = time.monotonic_ns()
        for mapping in reads.sysv_mappings(proc):
            mark_shm(table, who, mapping, batch, who.pid, read_ns, event.ts_ns)
    if "traced" in kinds:  # PTRACE_O_TRACEFORK attaches the tracer to the child
        refresh_traced(table, who, who.pid, batch, event.ts_ns)


def execed(table: Entries, event: Event, batch: Batch) -> None:
    entry = table.current(event.tgid, event.ts_ns)
    resolved = table.resolve(event.tgid, event.ts_ns, batch) if entry else None
    if resolved is None or table.by_pid.get(event.tgid) is not entry:
        return
    proc, who = resolved
    batch.touch(entry, event.tid)
    entry.comm = who.comm
    # A new address space: no mappings, no futexes; close-on-exec fds are gone.
    for key in [key for key in entry.marks if key[0] in ("nonlinear", "shm", "pi")]:
        table.unset(entry, key, event.ts_ns, batch, event.tid)
    entry.pi.clear()
    for key, mark in [(key, mark) for key, mark in entry.marks.items() if key[0] == "fd"]:
        rejudge_fd(table, proc, who, key[1], mark, event, batch)
    traced = [key[1] for key in entry.marks if key[0] == "traced"]
    # The thread that called exec takes the leader's tid.
    for tid in set(traced) | ({who.pid} if traced else set()):
        refresh_traced(table, who, tid, batch, event.ts_ns)
    if ("locks",) in entry.marks:
        refresh_locks(table, proc, who, batch, event.tid, event.ts_ns)


def exited(table: Entries, event: Event, batch: Batch) -> None:
    whole = bool(event.arg)
    drop_traced_by(table, event.tid, event.tgid if whole else None, batch)
    entry = table.current(event.tgid, event.ts_ns)
    if entry is None:
        return
    if whole:
        table.remove(entry, batch)
        return
    # An exiting thread waits on nothing, holds nothing, and is traced no more.
    for key in list(entry.marks):
        if key[0] in ("pi", "traced") and key[1] == event.tid:
            table.drop(entry, key, batch, event.tid)
    entry.pi.pop(event.tid, None)


HANDLERS: dict[Kind, Handler] = {Kind.FORKED: forked, Kind.EXECED: execed, Kind.EXITED: exited}
