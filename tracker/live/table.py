"""The live state table: which processes are `nocr` now, why, and since when.

Seeded from a /proc audit of every process, then kept current by probe
events. Probes only say what happened to which task; for anything /proc can
show, the table reads /proc and judges with the audit's check modules, so a
mark carries exactly the audit's reason. What /proc cannot show (a PI futex
held, remap_file_pages) comes from the events alone.

Applying an event is total: out-of-order, duplicated and missing events never
raise. An event about an older process than the one holding its pid now is
ignored (identity is (pid, start time)); a mark set by a /proc read is newer
than every event before that read, so a stale close cannot undo it; a lost
event makes the whole table stale and re-audited.
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

from probes.events import Event, Kind
from tracker.live import reads
from tracker.checks import task
from tracker.audit import Audit, ProcessIdentity, ThreadId, audit
from tracker.holders import PASS_MAX_AGE_SECONDS, HostHolders
from tracker.live.model import (CR, Counters, Entry, Mark, MarkKey, PiThread, Transition,
                                boot_seconds, iso_from_monotonic_ns, iso_from_wall_ns)
from tracker.procfs import DEFAULT_PROC_ROOT, AccessDenied, Mapping, Proc, ProcessGone
from tracker.profiles import PROFILE_NAMES, Profile
from tracker.rules import Finding
from tracker.verdict import reason

# Marks a /proc audit can confirm or refute; the others (nonlinear mappings,
# PI futexes held) only the probes see, and a re-audit keeps them.
AUDITED_KINDS = frozenset({"fd", "locks", "traced", "pidns", "shm"})
# A process's locks are read at most once per interval: a lock call reported
# sooner is read at the end of the interval (the kernel side reports one call
# until the read, so nothing in between is lost, and the read shows the last state).
LOCK_READ_INTERVAL_NS = 50_000_000
RECENT_CLOSES = 4096  # (pid, fd) closes remembered to recognise an open delivered after its close


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


class _Batch:
    """The entries one apply touched, with their states before, to report what changed."""

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


# How far ahead (events of the same process) the close of a copy is looked for.
PAIR_LOOKAHEAD = 64
_ENDS_PAIRING = frozenset({Kind.FD_RANGE_CLOSED, Kind.FORKED, Kind.EXECED, Kind.EXITED})


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


class LiveTable:
    def __init__(self, profile: Profile, kernel: KernelMaps | None = None,
                 proc_root: Path = DEFAULT_PROC_ROOT, own_pid: int | None = None):
        self.profile = profile
        # Every profile's state is followed: the service answers for any profile.
        self.profiles = tuple(Profile(name, profile.criu_version) for name in PROFILE_NAMES)
        self.kernel = kernel
        self.proc_root = proc_root
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self.counters = Counters()
        self._entries: dict[int, Entry] = {}
        self._recent_closes: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._last_reaudit_ns = 0
        self._lock_reads: dict[int, int] = {}                      # pid: when last read
        self._identities: dict[int, ProcessIdentity | None] | None = None  # see memoized()
        # For those who keep audits: which pids had an event since a given moment.
        self.sequence = 0
        self._touched: dict[int, int] = {}          # pid: sequence of its last event
        self._lost_at = 0                           # sequence of the last loss
        self._lock_reads_due: dict[int, tuple[int, Event]] = {}    # pid: (when, the event)
        self._lock = threading.Lock()
        self._handlers: dict[Kind, Callable[[Event, _Batch], None]] = {
            Kind.FD_OPENED: self._fd_opened, Kind.FD_CLOSED: self._fd_closed,
            Kind.FD_RANGE_CLOSED: self._fd_range_closed, Kind.FD_DUPED: self._fd_duped,
            Kind.TCP_CONNECTED: self._tcp_connected,
            Kind.PI_WAITING: self._pi_event, Kind.PI_ACQUIRED: self._pi_event,
            Kind.PI_NOT_ACQUIRED: self._pi_event, Kind.PI_RELEASED: self._pi_event,
            Kind.NONLINEAR: self._nonlinear, Kind.UNMAPPED: self._unmapped,
            Kind.TRACED: self._traced, Kind.UNTRACED: self._untraced,
            Kind.LOCKS_CHANGED: self._locks_changed, Kind.NEW_PID_NS: self._new_pid_ns,
            Kind.SHM_ATTACHED: self._shm_attached, Kind.SHM_DETACHED: self._shm_detached,
            Kind.FORKED: self._forked, Kind.EXECED: self._execed, Kind.EXITED: self._exited,
            Kind.LOST: self._lost,
        }

    # ------------------------------------------------------------ public

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @contextmanager
    def memoized(self) -> Iterator[None]:
        """Within the block, each pid's holder is read from /proc once, not once per
        event: for a batch of events taken from the queue together, as if they had
        been applied at the moment of the first read. Forks, execs and exits in the
        batch read their pid again."""
        self._identities = {}
        try:
            yield
        finally:
            self._identities = None

    def seed(self) -> list[Transition]:
        """Audit every process and mark what the probes would have marked."""
        with self._lock:
            batch = self._batch(time.monotonic_ns())
            holders = self._pass_holders()
            for pid in self._pids():
                self._audit_into(pid, batch, holders)
            return self._finish(batch)

    def skip_dup_and_close(self, dup: Event, close: Event) -> bool:
        """A copy of a marked fd closed before anything else touched it or its original
        (dup_close_pairs) changes nothing: the process stays nocr through the original.
        If so, count both as applied and say they may be skipped, so that a process
        that dup()s and close()s a device fd in a loop costs next to nothing."""
        with self._lock:
            entry = self._current(dup.tgid, dup.ts_ns)
            if entry is None or ("fd", dup.arg) not in entry.marks:
                return False
            self.counters.events += 2
            self.counters.coalesced += 2
            self._remember_close(close.tgid, close.fd, close.ts_ns)
            return True

    def changed_since(self, pid: int, sequence: int) -> bool:
        """Did an event about `pid` (or a loss) come after `sequence` (a value of .sequence)?"""
        with self._lock:
            return self._touched.get(pid, 0) > sequence or self._lost_at > sequence

    def _touch(self, event: Event) -> None:
        self.sequence += 1
        self._touched[event.tgid] = self.sequence
        if event.kind is Kind.FORKED:
            self._touched[event.arg] = self.sequence
        elif event.kind is Kind.LOST:
            self._lost_at = self.sequence

    def apply(self, event: Event) -> list[Transition]:
        with self._lock:
            self.counters.events += 1
            self._touch(event)
            if self._identities and event.kind in (Kind.FORKED, Kind.EXECED, Kind.EXITED):
                self._identities.pop(event.tgid, None)
                self._identities.pop(event.arg, None)  # the child of a fork
            batch = self._batch(event.ts_ns)
            handler = self._handlers.get(event.kind)
            if handler is None:
                self.counters.ignored += 1
            else:
                handler(event, batch)
            return self._finish(batch)

    def next_due_ns(self) -> int | None:
        """When run_due() has work: the earliest deferred lock read."""
        with self._lock:
            return min((due for due, _ in self._lock_reads_due.values()), default=None)

    def run_due(self) -> list[Transition]:
        """The deferred lock reads whose time has come."""
        with self._lock:
            now = time.monotonic_ns()
            batch = self._batch(now)
            for pid, (due, event) in list(self._lock_reads_due.items()):
                if due <= now:
                    del self._lock_reads_due[pid]
                    self._read_locks(event, batch)
            self._lock_reads = {pid: read for pid, read in self._lock_reads.items()
                                if now - read < LOCK_READ_INTERVAL_NS}
            return self._finish(batch)

    def sweep(self) -> list[Transition]:
        """What no event will ever report: processes gone whose exit the probes did not see,
        PI futexes unlocked in user space (no syscall when uncontended), and waits that began
        before the probes were attached (they see no end of a call they did not see start)."""
        with self._lock:
            batch = self._batch(time.monotonic_ns())
            for entry in list(self._entries.values()):
                who = self._identity(entry.pid)
                if who is None or who.start_time != entry.start_time:
                    self.counters.swept += 1
                    self._remove(entry, batch, gone=who is None)
                else:
                    self._recheck_futexes(entry, who, batch)
            return self._finish(batch)

    def summary(self) -> dict[str, dict[str, int]]:
        """How many processes are in each state, and how many marks carry each reason code."""
        with self._lock:
            by_state: dict[str, int] = {}
            by_code: dict[str, int] = {}
            for entry in self._entries.values():
                by_state[entry.state] = by_state.get(entry.state, 0) + 1
                for mark in entry.marks.values():
                    for finding in mark.findings:
                        by_code[finding.code] = by_code.get(finding.code, 0) + 1
            return {"by_state": by_state, "by_code": by_code}

    def states(self, judged_by: Profile | None = None) -> dict[int, tuple[float, str]]:
        """pid: (start time, state under the profile) of every process the table follows."""
        judged_by = judged_by or self.profile
        with self._lock:
            return {pid: (entry.start_time, entry.state_under(judged_by))
                    for pid, entry in self._entries.items()}

    def tracked(self, pid: int, judged_by: Profile | None = None) -> dict | None:
        """The `tracked` part of a verdict document under a profile (by default the table's):
        state, since, reasons (None: never marked)."""
        judged_by = judged_by or self.profile
        with self._lock:
            entry = self._entries.get(pid)
            if entry is None:
                return None
            return {"state": entry.state_under(judged_by),
                    "since": entry.since_under.get(judged_by.name, entry.since),
                    "stale": entry.stale, "start_time": entry.start_time,
                    "reasons": entry.reasons(judged_by)}

    def probe_found(self, identities: Iterable[ProcessIdentity]) -> list[tuple[Finding, str]]:
        """What only the probes see of these processes (a PI futex held, a nonlinear
        mapping), which no /proc audit can, with since when: (finding, since) pairs."""
        found = []
        with self._lock:
            for who in identities:
                entry = self._entries.get(who.pid)
                if entry is None or entry.start_time != who.start_time:
                    continue
                for key, mark in entry.marks.items():
                    if not _audited(entry, key):
                        found.extend((finding, mark.since) for finding in mark.findings)
        return found

    # ------------------------------------------------------------ identity and entries

    def _pids(self) -> list[int]:
        return sorted(int(name) for name in os.listdir(self.proc_root)
                      if name.isdigit() and int(name) != self.own_pid)

    def _identity(self, pid: int) -> ProcessIdentity | None:
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

    def _resolve(self, pid: int, ts_ns: int, batch: _Batch) -> tuple[Proc, ProcessIdentity] | None:
        """The process holding `pid` now, if the event at ts_ns can be about it.

        A process that is gone takes its entry with it; one that replaced an
        older holder of the pid drops the old entry (never inherited).
        """
        who = self._identity(pid)
        entry = self._entries.get(pid)
        if entry is not None and (who is None or entry.start_time != who.start_time):
            self._remove(entry, batch, gone=who is None)
        if who is None or boot_seconds(ts_ns) < who.start_time:
            self.counters.ignored += 1  # gone, or the event is about an older holder of the pid
            return None
        return Proc(pid, self.proc_root), who

    def _current(self, pid: int, ts_ns: int) -> Entry | None:
        """The entry an undoing event may touch: none is made for a process never marked."""
        entry = self._entries.get(pid)
        if entry is None or boot_seconds(ts_ns) < entry.start_time:
            return None
        return entry

    def _entry(self, who: ProcessIdentity, batch: _Batch, tid: int | None) -> Entry:
        entry = self._entries.get(who.pid)
        if entry is None:
            entry = Entry(who.pid, who.start_time, who.comm, since=iso_from_wall_ns(time.time_ns()))
            self._entries[who.pid] = entry
            batch.touch(entry, tid, new=True)
        else:
            batch.touch(entry, tid)
        entry.ppid = who.ppid or entry.ppid
        return entry

    def _remove(self, entry: Entry, batch: _Batch, gone: bool = True) -> None:
        """The process is gone, or its pid has a new owner (whose kernel state stays)."""
        if self._entries.get(entry.pid) is entry:
            del self._entries[entry.pid]
            batch.remove(entry)
            if gone and self.kernel is not None:
                self.kernel.forget(entry.pid)

    # ------------------------------------------------------------ marks

    def _set(self, who: ProcessIdentity, key: MarkKey, findings: Iterable[Finding], batch: _Batch,
             tid: int | None, *, ts_ns: int, since_ns: int, source: str = "probe",
             span: tuple[int, int] | None = None, tracer: tuple[int, int] | None = None,
             target: str | None = None) -> None:
        """Mark `key` with these findings, or unmark it when there are none."""
        findings = tuple(findings)
        entry = self._entries.get(who.pid)
        if not findings:
            if entry is not None and key in entry.marks:
                self._drop(entry, key, batch, tid)
            return
        entry = self._entry(who, batch, tid)
        old = entry.marks.get(key)
        codes = tuple(finding.code for finding in findings)
        if old is not None and old.codes == codes:
            # The same state, seen again: it began when it was first seen.
            source, since = old.source, old.since
        else:
            since = iso_from_monotonic_ns(since_ns)
        entry.marks[key] = Mark(findings, source, since, ts_ns, span, tracer, target)

    def _unset(self, entry: Entry | None, key: MarkKey, ts_ns: int, batch: _Batch,
               tid: int | None) -> None:
        """Unmark `key` unless a later event or /proc read set it."""
        if entry is None:
            return
        mark = entry.marks.get(key)
        if mark is not None and mark.ts_ns <= ts_ns:
            self._drop(entry, key, batch, tid)

    @staticmethod
    def _drop(entry: Entry, key: MarkKey, batch: _Batch, tid: int | None) -> None:
        batch.touch(entry, tid)
        del entry.marks[key]

    def _batch(self, cause_ns: int) -> _Batch:
        return _Batch(cause_ns, self._states)

    def _states(self, entry: Entry) -> States:
        return (entry.state, *(entry.state_under(judged_by) for judged_by in self.profiles))

    def _finish(self, batch: _Batch) -> list[Transition]:
        """A transition for each touched entry whose state changed, under any profile (a
        device opened while a PI futex is held changes the state under `criu` only)."""
        transitions = []
        all_cr = (CR,) * (1 + len(self.profiles))
        for entry, before, tid in batch.before.values():
            exited = id(entry) in batch.removed
            after = all_cr if exited else self._states(entry)
            before = before or all_cr
            if after != before:
                entry.since = iso_from_monotonic_ns(batch.cause_ns)
                for judged_by, was, now in zip(self.profiles, before[1:], after[1:]):
                    if was != now:
                        entry.since_under[judged_by.name] = entry.since
                reasons = [] if after[0] == CR else entry.reasons(self.profile)
                profiles = {judged_by.name: state
                            for judged_by, state in zip(self.profiles, after[1:])}
                transitions.append(Transition(entry.pid, tid, entry.start_time, entry.comm,
                                              after[0], reasons, entry.since, batch.cause_ns,
                                              exited, ppid=entry.ppid, profiles=profiles))
            self._drop_if_idle(entry, exited)
        self.counters.transitions += len(transitions)
        return transitions

    def _drop_if_idle(self, entry: Entry, exited: bool) -> None:
        # Only entries that are nocr, or wait for an event that may make them so,
        # are kept: the table does not grow with the processes on the host.
        if not exited and entry.idle and self._entries.get(entry.pid) is entry:
            del self._entries[entry.pid]

    # ------------------------------------------------------------ fds

    def _judge_fd(self, proc: Proc, who: ProcessIdentity, fd: int, event: Event, batch: _Batch,
                  *, fallback: tuple[str, list[Finding]] | None = None,
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
        if seen is not None:
            target, findings = seen
            moved = same_as is not None and target != same_as
            if moved or not reads.probe_visible(target, {f.code for f in findings}, special):
                seen = None  # the number holds another file now: the one reported is closed
        entry = self._entries.get(who.pid)
        if seen is None:
            if not fallback or (entry is not None and entry.audited_ns > event.ts_ns):
                self._unset(entry, ("fd", fd), read_ns, batch, event.tid)
                if self.kernel is not None:
                    self.kernel.untrack_fd(who.pid, fd, read_ns)
                return
            # An fd already closed: it was nocr meanwhile, until its close (already
            # untracked in the kernel, which reports it).
            self.counters.fallbacks += 1
            (target, findings), read_ns = fallback, event.ts_ns
            self._set(who, ("fd", fd), findings, batch, event.tid, ts_ns=read_ns,
                      since_ns=event.ts_ns, target=target)
            return
        self._set(who, ("fd", fd), findings, batch, event.tid, ts_ns=read_ns,
                  since_ns=event.ts_ns, target=target)
        if self.kernel is not None:
            # A harmless fd (e.g. /dev/null) is not followed any further: its close costs nothing.
            if findings:
                self.kernel.track_fd(who.pid, fd)
            else:
                self.kernel.untrack_fd(who.pid, fd, read_ns)

    def _closed_since(self, event: Event) -> bool:
        """Was the event's new fd closed after the event (its close delivered first)?"""
        return self._recent_closes.get((event.tgid, event.fd), 0) > event.ts_ns

    def _fd_opened(self, event: Event, batch: _Batch) -> None:
        if self._closed_since(event):
            return
        resolved = self._resolve(event.tgid, event.ts_ns, batch)
        if resolved:
            self._judge_fd(*resolved, event.fd, event, batch,
                           fallback=(event.path, reads.fallback_findings(event)))

    def _fd_duped(self, event: Event, batch: _Batch) -> None:
        if self._closed_since(event):
            return
        resolved = self._resolve(event.tgid, event.ts_ns, batch)
        if resolved:
            original = self._entries.get(event.tgid)
            mark = original.marks.get(("fd", event.arg)) if original else None
            # A copy of a marked fd is what the original was when it was copied.
            fallback = (mark.target, reads.renumbered(mark.findings, event.arg, event.fd)) \
                if mark is not None else None
            self._judge_fd(*resolved, event.fd, event, batch, fallback=fallback,
                           same_as=mark.target if mark else None)

    def _tcp_connected(self, event: Event, batch: _Batch) -> None:
        resolved = self._resolve(event.tgid, event.ts_ns, batch)
        if resolved:
            self._judge_fd(*resolved, event.fd, event, batch)

    def _rejudge_fd(self, proc: Proc, who: ProcessIdentity, fd: int, mark: Mark, event: Event,
                    batch: _Batch) -> None:
        """A marked fd after close_range, exec or fork: still the same file, or gone."""
        self._judge_fd(proc, who, fd, event, batch, same_as=mark.target)

    def _remember_close(self, pid: int, fd: int, ts_ns: int) -> None:
        self._recent_closes[(pid, fd)] = max(ts_ns, self._recent_closes.get((pid, fd), 0))
        self._recent_closes.move_to_end((pid, fd))
        while len(self._recent_closes) > RECENT_CLOSES:
            self._recent_closes.popitem(last=False)

    def _fd_closed(self, event: Event, batch: _Batch) -> None:
        self._remember_close(event.tgid, event.fd, event.ts_ns)
        self._unset(self._current(event.tgid, event.ts_ns), ("fd", event.fd), event.ts_ns, batch,
                    event.tid)

    def _fd_range_closed(self, event: Event, batch: _Batch) -> None:
        # Reported at syscall entry, and only when it closes (the kernel side leaves out
        # CLOSE_RANGE_CLOEXEC): /proc may still show the fds, so it is not asked, as for close.
        entry = self._current(event.tgid, event.ts_ns)
        if entry is None:
            return
        low, high = event.arg, event.arg2
        for key in [key for key in entry.marks if key[0] == "fd" and low <= key[1] <= high]:
            self._remember_close(event.tgid, key[1], event.ts_ns)
            self._unset(entry, key, event.ts_ns, batch, event.tid)

    # ------------------------------------------------------------ PI futexes

    def _pi_event(self, event: Event, batch: _Batch) -> None:
        resolved = self._resolve(event.tgid, event.ts_ns, batch)
        if resolved is None:
            return
        proc, who = resolved
        entry = self._entries.get(who.pid)
        thread = entry.pi.get(event.tid) if entry else None
        if thread is not None and event.ts_ns < thread.last_ns:
            return  # a thread's futex calls are sequential: this one is already superseded
        if thread is None:
            if event.kind in (Kind.PI_NOT_ACQUIRED, Kind.PI_RELEASED):
                return  # nothing known to undo
            thread = self._entry(who, batch, event.tid).pi.setdefault(event.tid, PiThread())
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
        self._sync_pi(who, event.tid, thread, event.ts_ns, batch)

    def _sync_pi(self, who: ProcessIdentity, tid: int, thread: PiThread, ts_ns: int,
                 batch: _Batch) -> None:
        """Make the thread's ("pi", tid, address) marks match what it waits on and holds."""
        entry = self._entry(who, batch, tid)
        wanted = {address: f"holds the PI futex at {address:#x}" for address in thread.held}
        if thread.waiting is not None and thread.waiting not in wanted:
            wanted[thread.waiting] = f"waits on the PI futex at {thread.waiting:#x}"
        for key in [key for key in entry.marks if key[0] == "pi" and key[1] == tid]:
            if key[2] not in wanted:
                self._drop(entry, key, batch, tid)
        for address, what in wanted.items():
            finding = Finding("task.pi_futex", f"tid {tid} {what}", who.pid, tid=tid)
            mark = entry.marks.get(("pi", tid, address))
            if mark is None or mark.findings != (finding,):  # new, or a wait that became a hold
                self._set(who, ("pi", tid, address), [finding], batch, tid, ts_ns=ts_ns,
                          since_ns=ts_ns)
        if thread.idle:
            entry.pi.pop(tid, None)

    def _recheck_futexes(self, entry: Entry, who: ProcessIdentity, batch: _Batch) -> None:
        proc = Proc(entry.pid, self.proc_root)
        for tid, thread in list(entry.pi.items()):
            released = {address for address in thread.held
                        if task.futex_owner(proc, address) not in (None, tid)}
            audited_wait_over = (thread.last_ns == 0 and thread.waiting is not None
                                 and reads.pi_wait_address(proc, tid) != thread.waiting)
            if released or audited_wait_over:
                thread.held -= released
                if audited_wait_over:
                    thread.waiting = None
                self._sync_pi(who, tid, thread, time.monotonic_ns(), batch)

    # ------------------------------------------------------------ memory

    def _nonlinear(self, event: Event, batch: _Batch) -> None:
        resolved = self._resolve(event.tgid, event.ts_ns, batch)
        if resolved is None:
            return
        _, who = resolved
        start, end = event.arg, event.arg + event.arg2
        finding = Finding("memory.nonlinear", f"tid {event.tid}: remap_file_pages() made "
                          f"{start:x}-{end:x} a nonlinear mapping", who.pid, tid=event.tid)
        self._set(who, ("nonlinear", event.arg, event.arg2), [finding], batch, event.tid,
                  ts_ns=event.ts_ns, since_ns=event.ts_ns, span=(start, end))

    def _unmapped(self, event: Event, batch: _Batch) -> None:
        entry = self._current(event.tgid, event.ts_ns)
        if entry is None:
            return
        start, end = event.arg, event.arg + event.arg2
        for key, mark in list(entry.marks.items()):
            if mark.span is not None and mark.span[0] < end and start < mark.span[1]:
                self._unset(entry, key, event.ts_ns, batch, event.tid)

    def _shm_attached(self, event: Event, batch: _Batch) -> None:
        resolved = self._resolve(event.tgid, event.ts_ns, batch)
        if resolved is None:
            return
        proc, who = resolved
        if not reads.in_host_ipc(proc):
            return  # CRIU dumps the segments with the process's own IPC namespace
        read_ns = time.monotonic_ns()
        for mapping in reads.sysv_mappings(proc):
            if mapping.start == event.arg:
                self._mark_shm(who, mapping, batch, event.tid, read_ns, event.ts_ns)

    def _mark_shm(self, who: ProcessIdentity, mapping: Mapping, batch: _Batch, tid: int | None,
                  read_ns: int, since_ns: int) -> None:
        # read_ns: taken before /proc was read, so that a detach the read may have missed
        # (it ran meanwhile) is still newer than the mark, and undoes it
        self._set(who, ("shm", mapping.start), [reads.shm_finding(who.pid, mapping)], batch, tid,
                  ts_ns=read_ns, since_ns=since_ns, span=(mapping.start, mapping.end))

    def _shm_detached(self, event: Event, batch: _Batch) -> None:
        entry = self._current(event.tgid, event.ts_ns)
        if entry is None:
            return
        for key, mark in list(entry.marks.items()):
            if key[0] == "shm" and mark.span[0] <= event.arg < mark.span[1]:
                self._unset(entry, key, event.ts_ns, batch, event.tid)

    # ------------------------------------------------------------ tracing

    def _traced(self, event: Event, batch: _Batch) -> None:
        # PTRACE_TRACEME is reported by the tracee itself: /proc names the tracer.
        status = reads.thread_status(self.proc_root, event.arg)
        if status is None:
            return
        resolved = self._resolve(int(status.get("Tgid", "0")), event.ts_ns, batch)
        if resolved is not None:
            self._refresh_traced(resolved[1], event.arg, batch, event.ts_ns)

    def _refresh_traced(self, who: ProcessIdentity, tid: int, batch: _Batch, since_ns: int) -> None:
        read_ns = time.monotonic_ns()
        tracer = reads.tracer_of(self.proc_root, tid)
        findings = [] if tracer is None else [Finding(
            "task.traced", f"tid {tid} is traced by pid {tracer[1]} (tid {tracer[0]})",
            who.pid, tid=tid)]
        self._set(who, ("traced", tid), findings, batch, tid, ts_ns=read_ns, since_ns=since_ns,
                  tracer=tracer)

    def _untraced(self, event: Event, batch: _Batch) -> None:
        for entry in list(self._entries.values()):
            if ("traced", event.arg) in entry.marks:
                self._unset(entry, ("traced", event.arg), event.ts_ns, batch, event.arg)

    def _drop_traced_by(self, tracer_tid: int, tracer_pid: int | None, batch: _Batch) -> None:
        """A tracer that exits detaches from every task it traced. Whatever was read
        since: /proc shows a tracer until it has finished exiting."""
        for entry in list(self._entries.values()):
            for key, mark in list(entry.marks.items()):
                if key[0] == "traced" and mark.tracer and (
                        mark.tracer[0] == tracer_tid or mark.tracer[1] == tracer_pid):
                    self._drop(entry, key, batch, key[1])

    # ------------------------------------------------------------ locks and namespaces

    def _locks_changed(self, event: Event, batch: _Batch) -> None:
        pid = event.tgid
        last = self._lock_reads.get(pid)
        if pid in self._lock_reads_due:
            return  # a read is already due, and shows this change too
        if last is not None and time.monotonic_ns() - last < LOCK_READ_INTERVAL_NS:
            self.counters.lock_reads_deferred += 1
            self._lock_reads_due[pid] = (last + LOCK_READ_INTERVAL_NS, event)
            return
        self._read_locks(event, batch)

    def _read_locks(self, event: Event, batch: _Batch) -> None:
        if self.kernel is not None:
            self.kernel.locks_read(event.tgid)  # before the read: a later change is reported
        self._lock_reads[event.tgid] = time.monotonic_ns()
        self.counters.lock_reads += 1
        resolved = self._resolve(event.tgid, event.ts_ns, batch)
        if resolved is not None:
            self._refresh_locks(*resolved, batch, event.tid, event.ts_ns)

    def _refresh_locks(self, proc: Proc, who: ProcessIdentity, batch: _Batch, tid: int | None,
                       since_ns: int) -> None:
        read_ns = time.monotonic_ns()
        held = reads.held_locks(proc)
        self._set(who, ("locks",), held, batch, tid, ts_ns=read_ns, since_ns=since_ns)
        if held and self.kernel is not None:
            self.kernel.mark_lock_holder(who.pid)

    def _new_pid_ns(self, event: Event, batch: _Batch) -> None:
        # clone(CLONE_NEWPID) names the child, which is nested. After
        # unshare(CLONE_NEWPID) (arg 0) the caller's next children are: each
        # FORKED reads the child's namespace.
        resolved = self._resolve(event.arg, event.ts_ns, batch) if event.arg else None
        if resolved is not None:
            self._refresh_pidns(*resolved, batch, event.ts_ns)

    def _refresh_pidns(self, proc: Proc, who: ProcessIdentity, batch: _Batch,
                       since_ns: int) -> None:
        read_ns = time.monotonic_ns()
        nested = reads.nested_pid_namespace(proc)
        self._set(who, ("pidns",), [nested] if nested else [], batch, who.pid,
                  ts_ns=read_ns, since_ns=since_ns)

    # ------------------------------------------------------------ process life

    def _forked(self, event: Event, batch: _Batch) -> None:
        child = self._resolve(event.arg, event.ts_ns, batch)
        if child is None:
            return
        proc, who = child
        parent = self._current(event.tgid, event.ts_ns)
        self._refresh_pidns(proc, who, batch, event.ts_ns)
        if parent is None:
            return  # a parent never marked passes nothing on
        for key, mark in list(parent.marks.items()):
            if key[0] == "fd":
                # Inherited fds: judged again in the child, and followed there too.
                self._rejudge_fd(proc, who, key[1], mark, replace(event, tid=who.pid), batch)
            elif key[0] == "nonlinear":
                self._set(who, key, [replace(f, pid=who.pid, tid=None) for f in mark.findings],
                          batch, who.pid, ts_ns=event.ts_ns, since_ns=event.ts_ns,
                          span=mark.span)
        kinds = {key[0] for key in parent.marks}
        if "locks" in kinds:
            self._refresh_locks(proc, who, batch, who.pid, event.ts_ns)
        if "shm" in kinds and reads.in_host_ipc(proc):
            read_ns = time.monotonic_ns()
            for mapping in reads.sysv_mappings(proc):
                self._mark_shm(who, mapping, batch, who.pid, read_ns, event.ts_ns)
        if "traced" in kinds:  # PTRACE_O_TRACEFORK attaches the tracer to the child
            self._refresh_traced(who, who.pid, batch, event.ts_ns)

    def _execed(self, event: Event, batch: _Batch) -> None:
        entry = self._current(event.tgid, event.ts_ns)
        resolved = self._resolve(event.tgid, event.ts_ns, batch) if entry else None
        if resolved is None or self._entries.get(event.tgid) is not entry:
            return
        proc, who = resolved
        batch.touch(entry, event.tid)
        entry.comm = who.comm
        # A new address space: no mappings, no futexes; close-on-exec fds are gone.
        for key in [key for key in entry.marks if key[0] in ("nonlinear", "shm", "pi")]:
            self._unset(entry, key, event.ts_ns, batch, event.tid)
        entry.pi.clear()
        for key, mark in [(key, mark) for key, mark in entry.marks.items() if key[0] == "fd"]:
            self._rejudge_fd(proc, who, key[1], mark, event, batch)
        traced = [key[1] for key in entry.marks if key[0] == "traced"]
        # The thread that called exec takes the leader's tid.
        for tid in set(traced) | ({who.pid} if traced else set()):
            self._refresh_traced(who, tid, batch, event.ts_ns)
        if ("locks",) in entry.marks:
            self._refresh_locks(proc, who, batch, event.tid, event.ts_ns)

    def _exited(self, event: Event, batch: _Batch) -> None:
        whole = bool(event.arg)
        self._drop_traced_by(event.tid, event.tgid if whole else None, batch)
        entry = self._current(event.tgid, event.ts_ns)
        if entry is None:
            return
        if whole:
            self._remove(entry, batch)
            return
        # An exiting thread waits on nothing, holds nothing, and is traced no more.
        for key in list(entry.marks):
            if key[0] in ("pi", "traced") and key[1] == event.tid:
                self._drop(entry, key, batch, event.tid)
        entry.pi.pop(event.tid, None)

    # ------------------------------------------------------------ audits

    def _lost(self, event: Event, batch: _Batch) -> None:
        self.counters.lost += event.arg
        self.counters.lost_reports += 1
        if event.ts_ns and event.ts_ns <= self._last_reaudit_ns:
            return  # a re-audit that started after this loss already covers it
        self._last_reaudit_ns = time.monotonic_ns()
        self.counters.reaudits += 1
        for entry in self._entries.values():
            entry.stale = True
        holders = self._pass_holders()
        for pid in self._pids():
            self._audit_into(pid, batch, holders)
        for entry in [entry for entry in self._entries.values() if entry.stale]:
            self._remove(entry, batch)  # not audited: gone

    def _pass_holders(self) -> HostHolders:
        """One index of pipe and socket holders for a pass that audits every process."""
        return HostHolders(self.proc_root, max_age=PASS_MAX_AGE_SECONDS)

    def _audit_into(self, pid: int, batch: _Batch, holders: HostHolders | None = None) -> None:
        """Replace the marks a /proc audit can see by what it sees now."""
        started = time.monotonic_ns()
        try:
            result = audit(pid, proc_root=self.proc_root, holders=holders)
        except (ProcessGone, AccessDenied, ThreadId):  # ThreadId: a thread took the pid (exec)
            return
        if {finding.code for finding in result.findings} & {"audit.exited", "task.kernel_thread"}:
            return
        self._replace_audited(result.root, result.findings, started, batch)

    def _replace_audited(self, who: ProcessIdentity, findings: list[Finding], started: int,
                         batch: _Batch) -> dict[MarkKey, tuple[list, dict]]:
        """The marks of `who` that an audit can see become what this audit saw."""
        entry = self._entries.get(who.pid)
        if entry is not None and entry.start_time != who.start_time:
            self._remove(entry, batch, gone=False)
            entry = None
        found = self._audited_marks(Proc(who.pid, self.proc_root), findings)
        if entry is None and not found:
            return found
        entry = self._entry(who, batch, None)
        entry.comm, entry.stale, entry.audited_ns = who.comm, False, started
        for key in [key for key in entry.marks if _audited(entry, key) and key not in found]:
            del entry.marks[key]
        for key, (key_findings, extra) in found.items():
            self._set(who, key, key_findings, batch, None, ts_ns=started, since_ns=started,
                      source="audit", **extra)
        self._sync_audited_pi(entry, found)
        if self.kernel is not None:
            self._follow_in_kernel(entry)
        return found

    def reconcile(self, result: Audit, started_ns: int, gate_tracer: int | None = None
                  ) -> tuple[list[dict], list[Transition]]:
        """Compare what the table holds with an audit that read a frozen tree (started at
        `started_ns`), and take the audit's view. Returns the drift (reasons the probes
        missed, marks that were stale) and the transitions the correction makes. The
        gate's own ptrace hold (`gate_tracer`, which the audit looks through) may have been
        marked meanwhile: that is no stale mark."""
        drift: list[dict] = []
        with self._lock:
            batch = self._batch(started_ns)
            for who in result.processes:
                findings = [f for f in result.findings if f.pid == who.pid]
                if {f.code for f in findings} & {"audit.exited", "task.kernel_thread"}:
                    continue
                entry = self._entries.get(who.pid)
                held = {} if entry is None or entry.start_time != who.start_time else {
                    key: mark for key, mark in entry.marks.items() if _audited(entry, key)}
                found = self._replace_audited(who, findings, started_ns, batch)
                for key in found.keys() - held.keys():
                    drift += [_drift("missed", who, reason(f, self.profile), "audit")
                              for f in found[key][0]]
                for key in held.keys() - found.keys():
                    if _traced_by(held[key], gate_tracer):
                        continue
                    drift += [_drift("stale", who, reason(f, self.profile), held[key].source,
                                     held[key].since) for f in held[key].findings]
            return drift, self._finish(batch)

    def _follow_in_kernel(self, entry: Entry) -> None:
        """Have the probes report what may undo the audited marks: fd closes, lock calls,
        munmap and shmdt, forks, execs and exits (of the tracee and tracer too)."""
        kernel = self.kernel
        kernel.watch(entry.pid)
        for key, mark in entry.marks.items():
            if key[0] == "fd":
                kernel.track_fd(entry.pid, key[1])
            elif key[0] == "locks":
                kernel.mark_lock_holder(entry.pid)
            elif key[0] == "shm":
                kernel.mark_memory(entry.pid)
            elif key[0] == "traced" and mark.tracer is not None:
                kernel.watch(mark.tracer[1])

    def _audited_marks(self, proc: Proc,
                       findings: list[Finding]) -> dict[MarkKey, tuple[list, dict]]:
        """The audit's findings of the kinds the probes follow, by mark key."""
        found: dict[MarkKey, tuple[list, dict]] = {}
        by_fd: dict[int, list[Finding]] = {}
        for finding in findings:
            code = finding.code
            if code in reads.HELD_LOCK_CODES:
                found.setdefault(("locks",), ([], {}))[0].append(finding)
            elif code == "task.traced" and finding.tid is not None:
                tracer = reads.tracer_of(self.proc_root, finding.tid)
                if tracer is not None:
                    found[("traced", finding.tid)] = ([finding], {"tracer": tracer})
            elif code == "task.pi_futex" and finding.tid is not None:
                address = reads.pi_wait_address(proc, finding.tid)
                if address is not None:
                    found[("pi", finding.tid, address)] = ([finding], {})
            elif code == "memory.sysv_shm.host_ipc":
                for mapping in reads.sysv_mappings(proc):
                    found[("shm", mapping.start)] = ([reads.shm_finding(proc.pid, mapping)],
                                                     {"span": (mapping.start, mapping.end)})
            elif finding.fd is not None and not code.startswith(("lock.", "terminal.")):
                by_fd.setdefault(finding.fd, []).append(finding)
        for fd, fd_findings in by_fd.items():
            target = reads.fd_target(proc, fd)
            if target is not None and reads.probe_visible(target, {f.code for f in fd_findings}):
                found[("fd", fd)] = (fd_findings, {"target": target})
        nested = reads.nested_pid_namespace(proc)
        if nested is not None:
            found[("pidns",)] = ([nested], {})
        return found

    def _sync_audited_pi(self, entry: Entry, found: dict) -> None:
        """The audit sees PI waiters (not holders): its view replaces the waits we knew."""
        waits = {key[1]: key[2] for key in found if key[0] == "pi"}
        for tid, address in waits.items():
            entry.pi.setdefault(tid, PiThread()).waiting = address
        for tid, thread in list(entry.pi.items()):
            if tid not in waits:
                thread.waiting = None
            if thread.idle:
                del entry.pi[tid]


def _audited(entry: Entry, key: MarkKey) -> bool:
    if key[0] == "pi":  # a wait the audit sees; a held futex it cannot
        thread = entry.pi.get(key[1])
        return thread is None or key[2] not in thread.held
    return key[0] in AUDITED_KINDS


def _traced_by(mark: Mark, tracer_pid: int | None) -> bool:
    return tracer_pid is not None and mark.tracer is not None and mark.tracer[1] == tracer_pid


def _drift(kind: str, who: ProcessIdentity, reason: dict, source: str,
           since: str | None = None) -> dict:
    """One difference between the tracked state and a frozen recheck."""
    return {"kind": kind, "pid": who.pid, "start_time": who.start_time, "comm": who.comm,
            "tracked_source": source if kind == "stale" else None, "tracked_since": since,
            "reason": reason}
