"""fd events: opens, dups, TCP connections, closes and close_range.

An open, a dup or a connect is judged by what /proc shows of the fd now, with
the audit's check modules (tracker.live.reads), except a device open whose record
carries the inode the kernel side read, when its number alone decides; a close
takes the mark away.
An open delivered after its close (the two race between CPUs) is recognised
by the closes remembered, and changes nothing; so does a new fd from before a
whole-table re-audit began (queued behind a loss), which that re-audit read.
"""
from __future__ import annotations

import time

from probes.events import Event, Kind
from tracker.audit import ProcessIdentity
from tracker.live import reads, reconcile
from tracker.live.entries import Batch, Entries, Handler
from tracker.live.model import Mark
from tracker.procfs import Proc
from tracker.rules import Finding

RECENT_CLOSES = 4096  # (pid, fd) closes remembered to recognise an open delivered after its close
# How far ahead (events of the same process) the close of a copy is looked for.
PAIR_LOOKAHEAD = 64
_ENDS_PAIRING = frozenset({Kind.FD_RANGE_CLOSED, Kind.FORKED, Kind.EXECED, Kind.EXITED})


class RecentCloses:
    """The latest close of each (pid, fd) seen, for the last RECENT_CLOSES of them."""

    def __init__(self) -> None:
        self._at: dict[tuple[int, int], int] = {}   # oldest first: a dict keeps its order

    def remember(self, pid: int, fd: int, ts_ns: int) -> None:
        at, key = self._at, (pid, fd)
        before = at.pop(key, 0)  # taken out and put back: it moves to the end
        at[key] = ts_ns if ts_ns > before else before
        if len(at) > RECENT_CLOSES:
            del at[next(iter(at))]

    def closed_since(self, event: Event) -> bool:
        """Was the event's new fd closed after the event (its close delivered first)?"""
        return self._at.get((event.tgid, event.fd), 0) > event.ts_ns


def dup_close_pairs(events: list[Event]) -> dict[int, int]:
    """index of an FD_DUPED: index of the close of that copy, when nothing of the
    process in between touches the copy or its original (no dup of the copy, no close
    or dup2 onto the original, no close_range, fork, exec or exit), so that the copy
    mattered to nothing but itself. None when the batch reports a loss."""
    if any(event.kind is Kind.LOST for event in events):
        return {}
    by_process: dict[int, list[int]] = {}
    for index, event in enumerate(events):
        by_process.setdefault(event.tgid, []).append(index)
    pairs = {}
    for indexes in by_process.values():
        for position, index in enumerate(indexes):
            dup = events[index]
            if dup.kind is not Kind.FD_DUPED:
                continue
            copy, original = dup.fd, dup.arg
            for later in indexes[position + 1:position + 1 + PAIR_LOOKAHEAD]:
                event = events[later]
                if event.kind is Kind.FD_CLOSED and event.fd == copy:
                    pairs[index] = later
                    break
                if (event.kind in _ENDS_PAIRING or event.fd in (copy, original)
                        or (event.kind is Kind.FD_DUPED and event.arg == copy)):
                    break
    return pairs


def skip_dup_and_close(table: Entries, dup: Event, close: Event) -> bool:
    """A copy of a marked fd closed before anything else touched it or its original
    (dup_close_pairs) changes nothing: count both as applied, and say they may be skipped."""
    entry = table.current(dup.tgid, dup.ts_ns)
    if entry is None or ("fd", dup.arg) not in entry.marks:
        return False
    table.counters.events += 2
    table.counters.coalesced += 2
    table.kept(RecentCloses).remember(close.tgid, close.fd, close.ts_ns)
    return True


def judge_fd(table: Entries, proc: Proc, who: ProcessIdentity, fd: int, event: Event,
             batch: Batch, *, fallback: tuple[str, list[Finding]] | None = None,
             same_as: str | None = None) -> None:
    """Mark or unmark ("fd", fd) by what /proc shows now.

    `same_as`: the file the fd must still be (a marked fd seen again after a
    fork, an exec, a dup); another file at that number is not ours.
    `fallback`: the target and findings the event itself vouches for, used
    when the fd is closed before /proc could be read (its close event
    follows and takes the mark away again).
    """
    read_ns = time.monotonic_ns()
    seen = reads.classify_fd(proc, fd)
    special = event.special if event.kind == Kind.FD_OPENED else None
    moved = False
    if seen is not None:
        target, findings = seen
        moved = same_as is not None and target != same_as
        if moved or not reads.probe_visible(target, {f.code for f in findings}, special):
            seen = None  # the number holds another file now: the one reported is closed
    entry = table.by_pid.get(who.pid)
    if seen is None:
        if not fallback or (entry is not None and entry.audited_ns > event.ts_ns):
            table.unset(entry, ("fd", fd), read_ns, batch, event.tid)
            if table.kernel is not None:
                # A file that took the number since the event (a fork applied late, its
                # child's fd reopened) was tracked by the kernel side after the event:
                # it stays tracked, or its close would go unreported.
                table.kernel.untrack_fd(who.pid, fd, event.ts_ns if moved else read_ns)
            return
        # An fd already closed: it was nocr meanwhile, until its close (already
        # untracked in the kernel, which reports it).
        table.counters.fallbacks += 1
        (target, findings), read_ns = fallback, event.ts_ns
        table.set(who, ("fd", fd), findings, batch, event.tid, ts_ns=read_ns,
                  since_ns=event.ts_ns, target=target)
        return
    table.set(who, ("fd", fd), findings, batch, event.tid, ts_ns=read_ns,
              since_ns=event.ts_ns, target=target)
    if table.kernel is not None:
        # A harmless fd (e.g. /dev/null) is not followed any further: its close costs nothing.
        if findings:
            table.kernel.track_fd(who.pid, fd)
        else:
            table.kernel.untrack_fd(who.pid, fd, read_ns)


def rejudge_fd(table: Entries, proc: Proc, who: ProcessIdentity, fd: int, mark: Mark,
               event: Event, batch: Batch) -> None:
    """A marked fd after close_range, exec or fork: still the same file, or gone."""
    judge_fd(table, proc, who, fd, event, batch, same_as=mark.target)


def covered_by_reaudit(table: Entries, event: Event) -> bool:
    """Did a whole-table re-audit begin after the event (a loss before it)? It read the
    process after the event, and its marks are newer than what the event says: the
    queued events it covers change nothing, and cost no /proc read each."""
    if event.ts_ns < table.kept(reconcile.LastReaudit).started_ns:
        table.counters.ignored += 1
        return True
    return False


def opened(table: Entries, event: Event, batch: Batch) -> None:
    if table.kept(RecentCloses).closed_since(event) or covered_by_reaudit(table, event):
        return
    resolved = table.resolve(event.tgid, event.ts_ns, batch)
    if not resolved:
        return
    _, who = resolved
    entry = table.by_pid.get(who.pid)
    judged = reads.device_from_record(event)
    if judged is not None and (entry is None or entry.audited_ns <= event.ts_ns):
        # What the kernel side read at the open holds from then until the fd's close,
        # which it reports (it tracks the fd already): no /proc read.
        target, findings = judged
        table.set(who, ("fd", event.fd), findings, batch, event.tid, ts_ns=event.ts_ns,
                  since_ns=event.ts_ns, target=target)
        return
    judge_fd(table, *resolved, event.fd, event, batch,
             fallback=(event.path, reads.fallback_findings(event)))


def duped(table: Entries, event: Event, batch: Batch) -> None:
    if table.kept(RecentCloses).closed_since(event) or covered_by_reaudit(table, event):
        return
    resolved = table.resolve(event.tgid, event.ts_ns, batch)
    if resolved:
        original = table.by_pid.get(event.tgid)
        mark = original.marks.get(("fd", event.arg)) if original else None
        # A copy of a marked fd is what the original was when it was copied.
        fallback = (mark.target, reads.renumbered(mark.findings, event.arg, event.fd)) \
            if mark is not None else None
        judge_fd(table, *resolved, event.fd, event, batch, fallback=fallback,
                 same_as=mark.target if mark else None)


def tcp_connected(table: Entries, event: Event, batch: Batch) -> None:
    if covered_by_reaudit(table, event):
        return
    resolved = table.resolve(event.tgid, event.ts_ns, batch)
    if resolved:
        judge_fd(table, *resolved, event.fd, event, batch)


def closed(table: Entries, event: Event, batch: Batch) -> None:
    table.kept(RecentCloses).remember(event.tgid, event.fd, event.ts_ns)
    table.unset(table.current(event.tgid, event.ts_ns), ("fd", event.fd), event.ts_ns, batch,
                event.tid)


def range_closed(table: Entries, event: Event, batch: Batch) -> None:
    # Reported at syscall entry, and only when it closes (the kernel side leaves out
    # CLOSE_RANGE_CLOEXEC): /proc may still show the fds, so it is not asked, as for close.
    entry = table.current(event.tgid, event.ts_ns)
    if entry is None:
        return
    low, high = event.arg, event.arg2
    for key in [key for key in entry.marks if key[0] == "fd" and low <= key[1] <= high]:
        table.kept(RecentCloses).remember(event.tgid, key[1], event.ts_ns)
        table.unset(entry, key, event.ts_ns, batch, event.tid)


HANDLERS: dict[Kind, Handler] = {
    Kind.FD_OPENED: opened, Kind.FD_DUPED: duped, Kind.TCP_CONNECTED: tcp_connected,
    Kind.FD_CLOSED: closed, Kind.FD_RANGE_CLOSED: range_closed,
}
