"""The records of the live state table: marks, entries, transitions, counters.

A mark is one reason why a task is `nocr` now, with where it came from
(`probe` or `audit`) and since when. Times are kept twice: `ts_ns` on
CLOCK_MONOTONIC, the clock of the probes' events, to order a mark against
events; `since` in UTC for people.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from tracker.checks.catalogue import catalogue
from tracker.checks.namespaces import lock_subjects, marked_connections_lock
from tracker.environment import current
from tracker.profiles import Profile
from tracker.rules import INFO, Finding
from tracker.verdict import VERDICT_ORDER, reason

SCHEMA = "crwatch.event/1"
NOCR, CR = "nocr", "cr"
# Reasons as a profile words them, by (finding, profile): a process that opens and
# closes a device in a loop makes one transition per call, each with the same reasons.
REASONS_KEPT = 4096

MarkKey = tuple  # ("fd", fd), ("pi", tid, uaddr), ("nonlinear", start, size), ("traced", tid),
#                  ("locks",), ("pidns",), ("shm", addr)


class Mark(NamedTuple):
    """A named tuple: one is made at every event that marks (the cheapest immutable record)."""

    findings: tuple[Finding, ...]
    codes: tuple[str, ...]           # the findings' codes, which judge the mark under each profile
    source: str                      # "probe" or "audit"
    since: str                       # UTC, when the state began (as far as crwatch knows)
    ts_ns: int                       # CLOCK_MONOTONIC: events older than this cannot undo it
    span: tuple[int, int] | None = None     # address range, for nonlinear and shm marks
    tracer: tuple[int, int] | None = None   # (tid, pid) of the tracer, for traced marks
    target: str | None = None               # the fd's link text, for fd marks


@dataclass(slots=True)
class PiThread:
    """What one thread does with PI futexes: the one it waits on, the ones it holds."""

    last_ns: int = 0                 # its PI events are sequential: older ones are stale
    waiting: int | None = None
    held: set[int] = field(default_factory=set)

    @property
    def idle(self) -> bool:
        return self.waiting is None and not self.held


@dataclass(slots=True)
class Entry:
    """One process, by identity (pid, start time)."""

    pid: int
    start_time: float
    comm: str
    since: str                       # when its state (any profile's) last changed
    marks: dict[MarkKey, Mark] = field(default_factory=dict)
    since_under: dict[str, str] = field(default_factory=dict)  # profile: when its state began
    pi: dict[int, PiThread] = field(default_factory=dict)
    audited_ns: int = 0              # CLOCK_MONOTONIC start of its last /proc audit
    stale: bool = False              # events were lost; a re-audit is under way
    ppid: int = 0                    # its parent when last read (0: unknown)

    @property
    def state(self) -> str:
        """`nocr` while anything is marked: a state some profile's dumper refuses."""
        return NOCR if self.marks else CR

    def state_under(self, profile: Profile) -> str:
        """`nocr` only when this profile refuses a marked reason (without options): under
        `criu` a PI futex held is no reason to, under `strict` it is."""
        rules = catalogue()
        refused = any(profile.severity(rules[finding.code]) != INFO
                      for mark in self.marks.values() for finding in mark.findings)
        return NOCR if refused else CR

    @property
    def idle(self) -> bool:
        """Nothing marked and nothing pending: the entry need not be kept."""
        return not self.marks and not self.pi

    def reasons(self, profile: Profile) -> list[dict]:
        found, findings, locked = [], [], False
        for mark in self.marks.values():
            for finding in mark.findings:
                worded, lock_subject = _worded(finding, profile)
                found.append(dict(worded, source=mark.source, since=mark.since))
                findings.append(finding)
                locked = locked or lock_subject
        if locked:
            found += self._environment_reasons(profile, findings)
        if len(found) > 1:
            found.sort(key=lambda r: (VERDICT_ORDER[r["severity"]], r["fd"] is None,
                                      r["fd"] or 0, r["code"], r["message"]))
        return found

    def _environment_reasons(self, profile: Profile, findings: list[Finding]) -> list[dict]:
        """What the dumper's environment adds to the marks (whose `findings` these are, one
        a connection to lock at least): the network lock its marked TCP connections need
        where iptables is missing (as the audit's namespace.net_lock)."""
        lock = marked_connections_lock(self.pid, findings, current())
        if not lock:
            return []
        # It holds since the first connection it locks was marked.
        marked = [mark for mark in self.marks.values()
                  if set(mark.findings) & set(lock_subjects(findings))]
        first = min(marked, key=lambda mark: mark.since)
        return [dict(reason(finding, profile), source=first.source, since=first.since)
                for finding in lock]


_WORDED: dict[tuple[Finding, Profile], tuple[dict, bool]] = {}


def _worded(finding: Finding, profile: Profile) -> tuple[dict, bool]:
    """The reason a finding makes under a profile, shared (copy it before completing it),
    and whether it is a connection the dump must lock (lock_subjects)."""
    key = (finding, profile)
    worded = _WORDED.get(key)
    if worded is None:
        if len(_WORDED) >= REASONS_KEPT:
            _WORDED.clear()
        worded = _WORDED[key] = (reason(finding, profile), bool(lock_subjects([finding])))
    return worded


@dataclass(slots=True)
class Transition:
    """A task's checkpointability changing: the `transition` line of crwatch.event/1."""

    pid: int
    tid: int | None
    start_time: float
    comm: str
    state: str
    reasons: list[dict]
    ts: str
    cause_ns: int                    # CLOCK_MONOTONIC of the event (or audit) that caused it
    exited: bool = False             # `cr` because the process is gone
    emitted_ns: int = 0              # CLOCK_MONOTONIC when subscribers were told
    ppid: int = 0                    # its parent when last read: who started it (0: unknown)
    profiles: dict[str, str] | None = None  # the state under each profile, after it

    def to_json(self) -> dict:
        line = {"schema": SCHEMA, "kind": "transition", "pid": self.pid, "tid": self.tid,
                "start_time": self.start_time, "comm": self.comm, "state": self.state,
                "reasons": self.reasons, "ts": self.ts}
        if self.ppid:
            line["ppid"] = self.ppid
        if self.profiles is not None:
            line["profiles"] = self.profiles
        if self.exited:
            line["exited"] = True
        return line


@dataclass
class Counters:
    events: int = 0                  # events applied
    transitions: int = 0
    reaudits: int = 0                # whole-table /proc audits after a loss
    lost: int = 0                    # records reported lost (kernel, queue, decoding)
    lost_reports: int = 0            # LOST events received
    fallbacks: int = 0               # fds gone before they could be read: judged from the event
    ignored: int = 0                 # events about processes gone or older than the pid's owner,
    #                                  or new fds older than the re-audit that read them
    swept: int = 0                   # entries dropped by the sweep (an exit never reported)
    coalesced: int = 0               # events skipped: a copy of a marked fd closed right away
    lock_reads: int = 0              # reads of a process's locks after it changed them
    lock_reads_deferred: int = 0     # of those, put off to keep one process to one per interval

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)
