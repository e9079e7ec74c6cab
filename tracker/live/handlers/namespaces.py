"""Pid namespace events: a process in a nested pid namespace, which CRIU dumps only
as the namespace's init with all of it."""
from __future__ import annotations

import time

from probes.events import Event, Kind
from tracker.audit import ProcessIdentity
from tracker.live import reads
from tracker.live.entries import Batch, Entries, Handler
from tracker.procfs import Proc


def new_pid_ns(table: Entries, event: Event, batch: Batch) -> None:
    # clone(CLONE_NEWPID) names the child, which is nested. After
    # unshare(CLONE_NEWPID) (arg 0) the caller's next children are: each
    # FORKED reads the child's namespace.
    resolved = table.resolve(event.arg, event.ts_ns, batch) if event.arg else None
    if resolved is not None:
        refresh_pidns(table, *resolved, batch, event.ts_ns)


def refresh_pidns(table: Entries, proc: Proc, who: ProcessIdentity, batch: Batch,
                  since_ns: int) -> None:
    read_ns = time.monotonic_ns()
    nested = reads.nested_pid_namespace(proc)
    table.set(who, ("pidns",), [nested] if nested else [], batch, who.pid,
              ts_ns=read_ns, since_ns=since_ns)


HANDLERS: dict[Kind, Handler] = {Kind.NEW_PID_NS: new_pid_ns}
