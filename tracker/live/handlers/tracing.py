"""ptrace events: a task traced (attach, seize, traceme) or detached.

/proc names the tracer; a tracer that exits detaches from every task it
traced (the process-life handlers call drop_traced_by for it).
"""
from __future__ import annotations

import time

from probes.events import Event, Kind
from tracker.audit import ProcessIdentity
from tracker.live import reads
from tracker.live.entries import Batch, Entries, Handler
from tracker.rules import Finding


def traced(table: Entries, event: Event, batch: Batch) -> None:
    # PTRACE_TRACEME is reported by the tracee itself: /proc names the tracer.
    status = reads.thread_status(table.proc_root, event.arg)
    if status is None:
        return
    resolved = table.resolve(int(status.get("Tgid", "0")), event.ts_ns, batch)
    if resolved is not None:
        refresh_traced(table, resolved[1], event.arg, batch, event.ts_ns)


def refresh_traced(table: Entries, who: ProcessIdentity, tid: int, batch: Batch,
                   since_ns: int) -> None:
    read_ns = time.monotonic_ns()
    tracer = reads.tracer_of(table.proc_root, tid)
    findings = [] if tracer is None else [Finding(
        "task.traced", f"tid {tid} is traced by pid {tracer[1]} (tid {tracer[0]})",
        who.pid, tid=tid)]
    table.set(who, ("traced", tid), findings, batch, tid, ts_ns=read_ns, since_ns=since_ns,
              tracer=tracer)


def untraced(table: Entries, event: Event, batch: Batch) -> None:
    for entry in list(table.by_pid.values()):
        if ("traced", event.arg) in entry.marks:
            table.unset(entry, ("traced", event.arg), event.ts_ns, batch, event.arg)


def drop_traced_by(table: Entries, tracer_tid: int, tracer_pid: int | None,
                   batch: Batch) -> None:
    """A tracer that exits detaches from every task it traced. Whatever was read
    since: /proc shows a tracer until it has finished exiting."""
    for entry in list(table.by_pid.values()):
        for key, mark in list(entry.marks.items()):
            if key[0] == "traced" and mark.tracer and (
                    mark.tracer[0] == tracer_tid or mark.tracer[1] == tracer_pid):
                table.drop(entry, key, batch, key[1])


HANDLERS: dict[Kind, Handler] = {Kind.TRACED: traced, Kind.UNTRACED: untraced}
