"""The live table's entries, and the only code that changes them.

An entry is one process the table follows, by identity (pid, start time); a
mark is one reason it is `nocr` (tracker.live.model). The event handlers
(tracker.live.handlers) and the audit reconciliation (tracker.live.reconcile)
change entries only through Entries: they resolve the process an event is
about, set, unset or drop a mark, remove an entry. Each change is recorded in
the Batch of the apply under way, from which the table (tracker.live.table)
derives the transitions; the table also holds the lock around every change.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

from probes.events import Event
from tracker import procfs
from tracker.audit import ProcessIdentity
from tracker.clock import boot_offset_ns, boot_seconds, iso_from_monotonic_ns
from tracker.live.model import Counters, Entry, Mark, MarkKey
from tracker.procfs import AccessDenied, Proc, ProcessGone
from tracker.rules import Finding


class KernelMaps(Protocol):
    """The probes' in-kernel filters that the table updates (probes.loader.Probes)."""

    def track_fd(self, tgid: int, fd: int) -> None: ...
    def untrack_fd(self, tgid: int, fd: int, judged_ns: int | None = None) -> None: ...
    def mark_lock_holder(self, tgid: int) -> None: ...
    def locks_read(self, tgid: int) -> None: ...
    def mark_memory(self, tgid: int) -> None: ...
    def watch(self, pid: int) -> None: ...
    def forget(self, tgid: int) -> None: ...


States = tuple[str, ...]  # an entry's state, then its state under each profile


class Batch:
    """The entries one apply touched, with their states before, to report what changed."""

    __slots__ = ("cause_ns", "states_of", "before", "removed")

    def __init__(self, cause_ns: int, states_of: Callable[[Entry], States]):
        self.cause_ns = cause_ns
        self.states_of = states_of
        self.before: dict[int, tuple[Entry, States | None, int | None]] = {}
        self.removed: set[int] = set()

    def touch(self, entry: Entry, tid: int | None, new: bool = False) -> None:
        """`new`: an entry made now, `cr` before under every profile."""
        if id(entry) not in self.before:
            self.before[id(entry)] = (entry, None if new else self.states_of(entry), tid)

    def remove(self, entry: Entry) -> None:
        self.touch(entry, None)
        self.removed.add(id(entry))


# How a handler applies one event of the kinds it owns (tracker.live.handlers).
Handler = Callable[["Entries", Event, Batch], None]
Kept = TypeVar("Kept")


class Entries:
    """The processes the table follows, by pid, with what the handlers need to change them:
    the probes' kernel filters, the /proc root, the counters."""

    def __init__(self, kernel: KernelMaps | None, proc_root: Path, own_pid: int):
        self.kernel = kernel
        self.proc_root = proc_root
        self.own_pid = own_pid
        self.counters = Counters()
        self.by_pid: dict[int, Entry] = {}
        self._identities: dict[int, ProcessIdentity | None] | None = None  # see memoized()
        self._boot_offset_ns: int | None = None                            # see memoized()
        self._kept: dict[type, Any] = {}

    def kept(self, kind: type[Kept]) -> Kept:
        """What one family of handlers remembers between events (closes seen, lock reads
        due): one object of its own type per table, made on first use."""
        try:
            return self._kept[kind]
        except KeyError:
            made = self._kept[kind] = kind()
            return made

    def pids(self) -> list[int]:
        """Every process on the host but crwatch itself."""
        return [pid for pid in procfs.pids(self.proc_root) if pid != self.own_pid]

    # ------------------------------------------------------------ identity

    @contextmanager
    def memoized(self) -> Iterator[None]:
        """Within the block, each pid's holder is read from /proc once, and the clocks'
        offset once (see LiveTable.applying)."""
        self._identities = {}
        self._boot_offset_ns = boot_offset_ns()
        try:
            yield
        finally:
            self._identities = None
            self._boot_offset_ns = None

    def forget_identities(self, *pids: int) -> None:
        """Read these pids' holders again: a fork, exec or exit changed them."""
        if self._identities:
            for pid in pids:
                self._identities.pop(pid, None)

    def identity(self, pid: int) -> ProcessIdentity | None:
        """Who holds `pid` now; None for a process gone, unreadable, a kernel thread or crwatch."""
        if self._identities is None:
            return self._read_identity(pid)
        if pid not in self._identities:
            self._identities[pid] = self._read_identity(pid)
        return self._identities[pid]

    def _read_identity(self, pid: int) -> ProcessIdentity | None:
        if pid == self.own_pid or pid <= 0:
            return None
        try:
            stat = Proc(pid, self.proc_root).stat
        except (ProcessGone, AccessDenied):
            return None
        if stat.is_kernel_thread:
            return None
        return ProcessIdentity(pid, stat.start_time, stat.comm, stat.ppid)

    def resolve(self, pid: int, ts_ns: int, batch: Batch) -> tuple[Proc, ProcessIdentity] | None:
        """The process holding `pid` now, if the event at ts_ns can be about it.

        A process that is gone takes its entry with it; one that replaced an
        older holder of the pid drops the old entry (never inherited).
        """
        who = self.identity(pid)
        entry = self.by_pid.get(pid)
        if entry is not None and (who is None or entry.start_time != who.start_time):
            self.remove(entry, batch, gone=who is None)
        if who is None or boot_seconds(ts_ns, self._boot_offset_ns) < who.start_time:
            self.counters.ignored += 1  # gone, or the event is about an older holder of the pid
            return None
        return Proc(pid, self.proc_root), who

    # ------------------------------------------------------------ entries

    def current(self, pid: int, ts_ns: int) -> Entry | None:
        """The entry an undoing event may touch: none is made for a process never marked."""
        entry = self.by_pid.get(pid)
        if entry is None or boot_seconds(ts_ns, self._boot_offset_ns) < entry.start_time:
            return None
        return entry

    def entry(self, who: ProcessIdentity, batch: Batch, tid: int | None) -> Entry:
        """The entry of `who`, made now if there is none."""
        entry = self.by_pid.get(who.pid)
        if entry is None:
            # its state changes with what made it, and the transition says so at that time
            entry = Entry(who.pid, who.start_time, who.comm,
                          since=iso_from_monotonic_ns(batch.cause_ns))
            self.by_pid[who.pid] = entry
            batch.touch(entry, tid, new=True)
        else:
            batch.touch(entry, tid)
        entry.ppid = who.ppid or entry.ppid
        return entry

    def remove(self, entry: Entry, batch: Batch, gone: bool = True) -> None:
        """The process is gone, or its pid has a new owner (whose kernel state stays)."""
        if self.by_pid.get(entry.pid) is entry:
            del self.by_pid[entry.pid]
            batch.remove(entry)
            if gone and self.kernel is not None:
                self.kernel.forget(entry.pid)

    # ------------------------------------------------------------ marks

    def set(self, who: ProcessIdentity, key: MarkKey, findings: Iterable[Finding], batch: Batch,
            tid: int | None, *, ts_ns: int, since_ns: int, source: str = "probe",
            span: tuple[int, int] | None = None, tracer: tuple[int, int] | None = None,
            target: str | None = None) -> None:
        """Mark `key` with these findings, or unmark it when there are none."""
        findings = tuple(findings)
        entry = self.by_pid.get(who.pid)
        if not findings:
            if entry is not None and key in entry.marks:
                self.drop(entry, key, batch, tid)
            return
        entry = self.entry(who, batch, tid)
        old = entry.marks.get(key)
        codes = tuple([finding.code for finding in findings])
        if old is not None and old.codes == codes:
            # The same state, seen again: it began when it was first seen.
            source, since = old.source, old.since
        else:
            since = iso_from_monotonic_ns(since_ns)
        entry.marks[key] = Mark(findings, codes, source, since, ts_ns, span, tracer, target)

    def unset(self, entry: Entry | None, key: MarkKey, ts_ns: int, batch: Batch,
              tid: int | None) -> None:
        """Unmark `key` unless a later event or /proc read set it."""
        if entry is None:
            return
        mark = entry.marks.get(key)
        if mark is not None and mark.ts_ns <= ts_ns:
            self.drop(entry, key, batch, tid)

    @staticmethod
    def drop(entry: Entry, key: MarkKey, batch: Batch, tid: int | None) -> None:
        """Unmark `key`, whatever set it and when."""
        batch.touch(entry, tid)
        del entry.marks[key]
