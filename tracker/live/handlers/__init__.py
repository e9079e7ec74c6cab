"""The live table's event handlers, one module per resource family, and the kind registry.

Every handler module exposes `HANDLERS`: the event kinds it owns, each with
the function that applies one event of that kind to the table's entries,
f(entries, event, batch). The table dispatches each event by its kind through
BY_KIND, as tracker.checks routes each fd through FD_OWNERS, and knows no
resource itself; a kind nobody owns is counted ignored. A module may also expose
`sweep(entries, entry, who, batch)`, for what no event reports of a process
the table follows (LiveTable.sweep calls it for each), and `next_due_ns(entries)`
with `run_due(entries, now, batch)`, for work it put off (LiveTable.run_due).

- fds.py: opens, dups, TCP connections, closes, close_range.
- futexes.py: PI futex waits, holds and releases.
- memory.py: nonlinear mappings, System V shm attached and detached, munmap.
- tracing.py: ptrace attach and detach.
- locks.py: file lock calls (reads of a process's locks, at most one per interval).
- namespaces.py: nested pid namespaces.
- tasks.py: fork, exec and exit.
- losses.py: lost records (a re-audit of the whole table).

May import: probes.events, tracker.live.entries, model, reads and reconcile,
tracker.audit, checks, procfs and rules. Never tracker.live.table or
tracker.live.applier (which dispatch to these), nor api.
"""
from __future__ import annotations

from probes.events import Kind
from tracker.live.entries import Handler
from tracker.live.handlers import fds, futexes, locks, losses, memory, namespaces, tasks, tracing

FAMILIES = (fds, futexes, memory, tracing, locks, namespaces, tasks, losses)

BY_KIND: dict[Kind, Handler] = {
    kind: handler for family in FAMILIES for kind, handler in family.HANDLERS.items()}
SWEEPERS = tuple(family for family in FAMILIES if hasattr(family, "sweep"))
DEFERRING = tuple(family for family in FAMILIES if hasattr(family, "run_due"))
