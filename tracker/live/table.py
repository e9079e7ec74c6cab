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

This is the core: the lock, the apply of one event (dispatched by its kind to
the handler that owns it, tracker.live.handlers, as are the sweep and the work
put off), the transitions each apply makes, and what the table answers. The
entries and their marks are changed through tracker.live.entries; seeding,
re-audits and drift against a frozen recheck are tracker.live.reconcile.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from probes.events import Event, Kind
from tracker.audit import Audit, ProcessIdentity
from tracker.clock import iso_from_monotonic_ns
from tracker.live import reconcile
from tracker.live.entries import Batch, Entries, KernelMaps, States
from tracker.live.handlers import BY_KIND, DEFERRING, SWEEPERS, fds
from tracker.live.model import CR, Entry, Transition
from tracker.procfs import DEFAULT_PROC_ROOT
from tracker.profiles import PROFILE_NAMES, Profile
from tracker.rules import Finding

STATES_KEPT = 4096   # sets of reason codes whose states under every profile are kept
# Events that give a pid a new holder, or none: its identity is read again.
_NEW_HOLDERS = frozenset({Kind.FORKED, Kind.EXECED, Kind.EXITED})


class Held(NamedTuple):
    """What the applier does with the table while it holds it for a batch (applying())."""

    apply: Callable[[Event], list[Transition]]
    skip_dup_and_close: Callable[[Event, Event], bool]


class LiveTable:
    """The table's public face; every call holds its lock while it reads or changes entries."""

    def __init__(self, profile: Profile, kernel: KernelMaps | None = None,
                 proc_root: Path = DEFAULT_PROC_ROOT, own_pid: int | None = None):
        self.profile = profile
        # Every profile's state is followed: the service answers for any profile.
        self.profiles = tuple(Profile(name, profile.criu_version) for name in PROFILE_NAMES)
        self.kernel = kernel
        self.proc_root = proc_root
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self._entries = Entries(kernel, proc_root, self.own_pid)
        self.counters = self._entries.counters
        # For those who keep audits: which pids had an event since a given moment.
        self.sequence = 0
        self._touched: dict[int, int] = {}          # pid: sequence of its last event
        self._lost_at = 0                           # sequence of the last loss
        self._lock = threading.Lock()
        self._all_cr: States = (CR,) * (1 + len(self.profiles))
        self._profile_names = tuple(judged_by.name for judged_by in self.profiles)
        self._states_by_codes: dict[frozenset[str] | tuple[str, ...], States] = {}
        self._changes: dict[tuple[States, States], tuple[tuple[str, ...], dict[str, str]]] = {}

    # ------------------------------------------------------------ public

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries.by_pid)

    @contextmanager
    def applying(self) -> Iterator[Held]:
        """Hold the table for a batch of events taken from the queue together: its lock is
        taken once for all (a request that reads the table waits for the batch, well under
        a millisecond, not behind each of its events), and each pid's holder is read from
        /proc once, as if the events had been applied at the moment of the first read
        (forks, execs and exits in the batch read their pid again)."""
        with self._lock, self._entries.memoized():
            yield Held(self._apply, self._skip_dup_and_close)

    def seed(self, progress: Callable[[int, int], None] | None = None) -> list[Transition]:
        """Audit every process and mark what the probes would have marked (`progress`:
        see reconcile.seed)."""
        with self._lock:
            batch = self._batch(time.monotonic_ns())
            reconcile.seed(self._entries, batch, progress)
            return self._finish(batch)

    def skip_dup_and_close(self, dup: Event, close: Event) -> bool:
        """A copy of a marked fd closed before anything else touched it or its original
        (dup_close_pairs) changes nothing: the process stays nocr through the original.
        If so, count both as applied and say they may be skipped, so that a process
        that dup()s and close()s a device fd in a loop costs next to nothing. (One pair on
        its own; in a batch: applying().)"""
        with self._lock:
            return self._skip_dup_and_close(dup, close)

    def _skip_dup_and_close(self, dup: Event, close: Event) -> bool:
        return fds.skip_dup_and_close(self._entries, dup, close)

    # The next three read without the lock, which an applier busy with a burst would
    # make every request wait for: a dict lookup and an int are read whole, and an
    # event being applied meanwhile is answered as if the lock had been taken before it.

    def changed_since(self, pid: int, sequence: int) -> bool:
        """Did an event about `pid` (or a loss) come after `sequence` (a value of .sequence)?"""
        return self.event_since(pid, sequence) or self.lost_since(sequence)

    def event_since(self, pid: int, sequence: int) -> bool:
        """Did an event about `pid` come after `sequence`, losses aside?"""
        return self._touched.get(pid, 0) > sequence

    def lost_since(self, sequence: int) -> bool:
        """Were events lost after `sequence` (so that any process may have changed)?"""
        return self._lost_at > sequence

    def _touch(self, event: Event) -> None:
        self.sequence += 1
        self._touched[event.tgid] = self.sequence
        if event.kind is Kind.FORKED:
            self._touched[event.arg] = self.sequence
        elif event.kind is Kind.LOST:
            self._lost_at = self.sequence

    def apply(self, event: Event) -> list[Transition]:
        """One event on its own (a batch of them: applying())."""
        with self._lock:
            return self._apply(event)

    def _apply(self, event: Event) -> list[Transition]:
        self.counters.events += 1
        self._touch(event)
        if event.kind in _NEW_HOLDERS:
            self._entries.forget_identities(event.tgid, event.arg)  # arg: a fork's child
        batch = self._batch(event.ts_ns)
        handler = BY_KIND.get(event.kind)
        if handler is None:
            self.counters.ignored += 1
        else:
            handler(self._entries, event, batch)
        return self._finish(batch) if batch.before else []

    def next_due_ns(self) -> int | None:
        """When run_due() has work: the earliest deferred lock read."""
        with self._lock:
            due = (family.next_due_ns(self._entries) for family in DEFERRING)
            return min((when for when in due if when is not None), default=None)

    def run_due(self) -> list[Transition]:
        """The deferred lock reads whose time has come."""
        with self._lock:
            now = time.monotonic_ns()
            batch = self._batch(now)
            for family in DEFERRING:
                family.run_due(self._entries, now, batch)
            return self._finish(batch)

    def sweep(self) -> list[Transition]:
        """What no event will ever report: processes gone whose exit the probes did not see,
        PI futexes unlocked in user space (no syscall when uncontended), and waits that began
        before the probes were attached (they see no end of a call they did not see start)."""
        with self._lock:
            batch = self._batch(time.monotonic_ns())
            for entry in list(self._entries.by_pid.values()):
                who = self._entries.identity(entry.pid)
                if who is None or who.start_time != entry.start_time:
                    self.counters.swept += 1
                    self._entries.remove(entry, batch, gone=who is None)
                else:
                    for family in SWEEPERS:
                        family.sweep(self._entries, entry, who, batch)
            return self._finish(batch)

    def reconcile(self, result: Audit, started_ns: int, gate_tracer: int | None = None
                  ) -> tuple[list[dict], list[Transition]]:
        """Compare what the table holds with an audit that read a frozen tree (started at
        `started_ns`), and take the audit's view. Returns the drift (reasons the probes
        missed, marks that were stale) and the transitions the correction makes. The
        gate's own ptrace hold (`gate_tracer`, which the audit looks through) may have been
        marked meanwhile: that is no stale mark."""
        with self._lock:
            said = self._nocr_reasons(who.pid for who in result.processes)
            batch = self._batch(started_ns)
            drift = reconcile.drift(self._entries, result, started_ns, gate_tracer,
                                    self.profile, batch)
            transitions = self._finish(batch)
            return drift, transitions + self._corrected(said, transitions, batch.cause_ns)

    def _nocr_reasons(self, pids: Iterable[int]) -> dict[int, list[dict]]:
        """Under the lock: the reasons of each of these processes that is `nocr`."""
        said = {}
        for pid in pids:
            entry = self._entries.by_pid.get(pid)
            if entry is not None and self._states(entry)[0] != CR:
                said[pid] = entry.reasons(self.profile)
        return said

    def _corrected(self, said: dict[int, list[dict]], transitions: list[Transition],
                   cause_ns: int) -> list[Transition]:
        """Under the lock: a `nocr` transition again for each process a correction left
        `nocr` with other reasons than it had. A transition is made when a state changes,
        and a subscriber would otherwise keep the reasons the recheck found wrong (the
        gate's own tracing still marked, a device no probe saw missing)."""
        told = {transition.pid for transition in transitions}
        corrected = []
        for pid, before in said.items():
            entry = self._entries.by_pid.get(pid)
            if entry is None or pid in told:
                continue
            states = self._states(entry)
            reasons = entry.reasons(self.profile)
            if states[0] == CR or reasons == before:
                continue
            corrected.append(Transition(entry.pid, None, entry.start_time, entry.comm,
                                        states[0], reasons, entry.since, cause_ns,
                                        ppid=entry.ppid,
                                        profiles=dict(zip(self._profile_names, states[1:]))))
        self.counters.transitions += len(corrected)
        return corrected

    def summary(self) -> dict[str, dict[str, int]]:
        """How many processes are in each state, and how many marks carry each reason code."""
        with self._lock:
            by_state: dict[str, int] = {}
            by_code: dict[str, int] = {}
            for entry in self._entries.by_pid.values():
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
                    for pid, entry in self._entries.by_pid.items()}

    def follows(self, pid: int) -> bool:
        """Has the table an entry for pid? (Answers about it then wait for the lock, which
        an applier holds while it applies an event.)"""
        return pid in self._entries.by_pid

    def tracked(self, pid: int, judged_by: Profile | None = None) -> dict | None:
        """The `tracked` part of a verdict document under a profile (by default the table's):
        state, since, reasons (None: never marked)."""
        judged_by = judged_by or self.profile
        if pid not in self._entries.by_pid:  # most processes: no need to wait for the lock
            return None
        with self._lock:
            entry = self._entries.by_pid.get(pid)
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
        identities = [who for who in identities if who.pid in self._entries.by_pid]
        if not identities:  # most processes: no need to wait for the lock
            return found
        with self._lock:
            for who in identities:
                entry = self._entries.by_pid.get(who.pid)
                if entry is None or entry.start_time != who.start_time:
                    continue
                for key, mark in entry.marks.items():
                    if not reconcile.audited(entry, key):
                        found.extend((finding, mark.since) for finding in mark.findings)
        return found

    # ------------------------------------------------------------ transitions

    def _batch(self, cause_ns: int) -> Batch:
        return Batch(cause_ns, self._states)

    def _states(self, entry: Entry) -> States:
        """An entry's states follow from its marks' reason codes alone: each set of codes
        is judged under every profile once, not at every event."""
        if not entry.marks:
            return self._all_cr
        marks = entry.marks.values()
        codes = frozenset(code for mark in marks for code in mark.codes) if len(marks) > 1 \
            else next(iter(marks)).codes  # one mark, the common case: its codes' tuple
        states = self._states_by_codes.get(codes)
        if states is None:
            if len(self._states_by_codes) >= STATES_KEPT:
                self._states_by_codes.clear()
            states = self._states_by_codes[codes] = (
                entry.state, *(entry.state_under(judged_by) for judged_by in self.profiles))
        return states

    def _finish(self, batch: Batch) -> list[Transition]:
        """A transition for each touched entry whose state changed, under any profile (a
        device opened while a PI futex is held changes the state under `criu` only)."""
        transitions = []
        all_cr = self._all_cr
        for entry, before, tid in batch.before.values():
            exited = id(entry) in batch.removed
            after = all_cr if exited else self._states(entry)
            before = before or all_cr
            if after != before:
                entry.since = since = iso_from_monotonic_ns(batch.cause_ns)
                changed, profiles = self._change(before, after)
                for name in changed:
                    entry.since_under[name] = since
                reasons = [] if after[0] == CR else entry.reasons(self.profile)
                transitions.append(Transition(entry.pid, tid, entry.start_time, entry.comm,
                                              after[0], reasons, since, batch.cause_ns,
                                              exited, ppid=entry.ppid, profiles=dict(profiles)))
            self._drop_if_idle(entry, exited)
        self.counters.transitions += len(transitions)
        return transitions

    def _change(self, before: States, after: States) -> tuple[tuple[str, ...], dict[str, str]]:
        """The profiles whose state differs from `before` to `after`, and the states under
        each after it (to be copied): worked out once per pair of states."""
        change = self._changes.get((before, after))
        if change is None:
            if len(self._changes) >= STATES_KEPT:
                self._changes.clear()
            change = self._changes[(before, after)] = (
                tuple(name for name, was, now in zip(self._profile_names, before[1:], after[1:])
                      if was != now),
                dict(zip(self._profile_names, after[1:])))
        return change

    def _drop_if_idle(self, entry: Entry, exited: bool) -> None:
        # Only entries that are nocr, or wait for an event that may make them so,
        # are kept: the table does not grow with the processes on the host.
        if not exited and entry.idle and self._entries.by_pid.get(entry.pid) is entry:
            del self._entries.by_pid[entry.pid]
