"""What a followed process tree went through: for `crwatch run` and the pytest plugin.

`Members` decides which processes belong to the tree: descendants of a root
(this process, made their child subreaper, so that a process whose parent
exits stays a descendant). `Recorder` turns the feed's transitions of those
processes into episodes (each stretch of `nocr`, with its reasons, start and
duration) and keeps the audits taken at the end or at markers.
"""
from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from datetime import datetime

from tracker import verdict
from tracker.audit import Audit, audit
from tracker.checks.namespaces import without_orphaned_lock
from tracker.criu import options
from tracker.procfs import AccessDenied, Proc, ProcessGone
from tracker.profiles import Profile

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphans of our descendants become our children, not init's: they stay in the tree."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@dataclass
class Episode:
    """One stretch of `nocr`: from a transition to nocr until the one back to cr."""

    since: str
    reasons: list[dict]
    until: str | None = None
    exited: bool = False

    @property
    def duration_ms(self) -> float | None:
        if self.until is None:
            return None
        return (_instant(self.until) - _instant(self.since)).total_seconds() * 1e3

    def as_dict(self, allowed: dict) -> dict:
        return {"since": self.since, "until": self.until, "duration_ms": self.duration_ms,
                "ended_by_exit": self.exited, "reasons": self.reasons,
                "allowed": not verdict.blocking_reasons(self.reasons, allowed)}


@dataclass
class Member:
    pid: int
    start_time: float
    comm: str
    cmdline: list[str]
    parent: int
    episodes: list[Episode] = field(default_factory=list)
    audits: list[dict] = field(default_factory=list)   # {"at", "cause", "verdict": document}

    @property
    def open_episode(self) -> Episode | None:
        last = self.episodes[-1] if self.episodes else None
        return last if last is not None and last.until is None else None


class Members:
    """The processes descending from `root` (but `excluded` ones), by identity."""

    def __init__(self, root: int, excluded: set[int]):
        self.root = root
        self.excluded = excluded
        self.known: dict[tuple[int, float], Member] = {}
        self._strangers: set[tuple[int, float]] = set()

    def lookup(self, pid: int, start_time: float, comm: str = "",
               ppid: int = 0) -> Member | None:
        """The member with this identity: found by its chain of parents (up to the root),
        remembered after. A process already gone is found through `ppid`, its parent
        as the feed last saw it."""
        key = (pid, start_time)
        if key in self.known:
            return self._refreshed(self.known[key])
        if key in self._strangers or pid in self.excluded:
            return None
        chain, current = [], pid
        while current not in self.excluded and current > 1:
            try:
                stat = Proc(current).stat
            except (ProcessGone, AccessDenied):
                if current != pid or not ppid:
                    break
                stat = _Gone(pid, start_time, comm, ppid)
            if current == pid and stat.start_time != start_time:
                if not ppid:
                    break  # the pid is another process's by now
                stat = _Gone(pid, start_time, comm, ppid)
            chain.append((current, stat))
            if stat.ppid == self.root:
                for member_pid, member_stat in chain:
                    self._remember(member_pid, member_stat)
                return self.known[key]
            current = stat.ppid
        self._strangers.add(key)
        return None

    @staticmethod
    def _refreshed(member: Member) -> Member:
        """Its name and command line now: first seen before an exec or a PR_SET_NAME,
        they may have changed since."""
        proc = Proc(member.pid)
        try:
            stat = proc.stat
            if stat.start_time == member.start_time:
                member.comm = stat.comm
                member.cmdline = proc.read("cmdline").split("\0")[:-1] or member.cmdline
        except (ProcessGone, AccessDenied):
            pass
        return member

    def alive(self) -> list[Member]:
        """Every descendant of the root that runs now (found anew, not only the known)."""
        found, queue = [], [self.root]
        while queue:
            try:
                children = Proc(queue.pop(0)).children()
            except (ProcessGone, AccessDenied):
                continue
            for kid in children:
                if kid in self.excluded:
                    continue
                try:
                    stat = Proc(kid).stat
                except (ProcessGone, AccessDenied):
                    continue
                found.append(self._refreshed(self._remember(kid, stat)))
                queue.append(kid)
        return found

    def _remember(self, pid: int, stat) -> Member:
        key = (pid, stat.start_time)
        if key not in self.known:
            try:
                cmdline = [] if isinstance(stat, _Gone) else \
                    Proc(pid).read("cmdline").split("\0")[:-1]
            except (ProcessGone, AccessDenied):
                cmdline = []
            self.known[key] = Member(pid, stat.start_time, stat.comm, cmdline, stat.ppid)
        return self.known[key]


@dataclass(frozen=True)
class _Gone:
    """What a transition line says of a process that has exited since."""

    pid: int
    start_time: float
    comm: str
    ppid: int


class Recorder:
    """Episodes of the members, from the feed's lines (called on the feed's thread)."""

    def __init__(self, members: Members, judged_by: Profile, allow: list[str]):
        self.members = members
        self.own_addresses: set[str] = set()  # the feed's TCP ends (Feed.own_addresses)
        self.judged_by = judged_by
        self.allowed = options.parse_allow(allow)
        self.lost = 0
        self._lock = threading.Lock()

    def follow(self, feed) -> None:
        """Take lines from this feed: its own processes and connections are never ours."""
        self.members.excluded |= feed.own_pids
        self.own_addresses = feed.own_addresses

    def on_line(self, line: dict) -> None:
        if line.get("kind") == "lost":
            with self._lock:
                self.lost += line.get("count", 0)
            return
        if line.get("kind") != "transition":
            return
        reasons = without_orphaned_lock(
            [r for r in line["reasons"] if not self._inherited_from_us(r)])
        if line["state"] == "nocr" and not reasons:
            return  # only our own connection, in a child not yet exec'd: nothing of its own
        with self._lock:
            member = self.members.lookup(line["pid"], line["start_time"], line.get("comm", ""),
                                         line.get("ppid", 0))
            if member is None:
                return
            line = {**line, "reasons": reasons}
            episode = member.open_episode
            if line["state"] == "nocr" and episode is None:
                member.episodes.append(Episode(line["ts"], line["reasons"]))
            elif line["state"] == "nocr":
                episode.reasons = line["reasons"]  # what holds it now
            elif episode is not None:
                episode.until, episode.exited = line["ts"], bool(line.get("exited"))

    def _inherited_from_us(self, reason: dict) -> bool:
        """A connection of the feed's own, in a child between its fork and its exec."""
        return reason["code"] == "socket.tcp.established" and any(
            f"connection {address} ->" in reason["message"] for address in self.own_addresses)

    def audit_alive(self, at: str, cause: str) -> list[Member]:
        """Audit what runs now, as the trees a checkpoint would take: each process at the
        top (a child of the root: the command, or an orphan it left) with all below it.
        Each member keeps the verdict of its own part."""
        audited = []
        for top in self._tops():
            try:
                result = audit(top, tree=True)
            except ProcessGone:
                continue
            for identity in result.processes:
                member = self.members.known.get((identity.pid, identity.start_time))
                findings = [f for f in result.findings if f.pid == identity.pid]
                if member is None or result.exited(identity.pid):
                    continue  # gone while it was read: nothing runs to judge
                part = Audit(root=identity, tree=False, processes=[identity], findings=findings)
                document = verdict.document(part, self.judged_by, list(self._allow_texts()))
                with self._lock:
                    member.audits.append({"at": at, "cause": cause, "verdict": document})
                audited.append(member)
        return audited

    def _tops(self) -> list[int]:
        alive = {member.pid for member in self.members.alive()}
        tops = []
        for pid in sorted(alive):
            try:
                if Proc(pid).stat.ppid not in alive:
                    tops.append(pid)
            except (ProcessGone, AccessDenied):
                continue
        return tops

    def observe_by_audit(self, at: str) -> None:
        """Degraded mode (no probes): an audit of every member stands in for transitions."""
        for member in self.audit_alive(at, "periodic audit"):
            document = member.audits.pop()["verdict"]
            if document["verdict"] == "unknown":
                continue  # unreadable this time (an exec under way): no news
            reasons = [r for r in document["reasons"] if r["severity"] != "info"]
            episode = member.open_episode
            if reasons and episode is None:
                member.episodes.append(Episode(at, reasons))
            elif reasons:
                episode.reasons = reasons
            elif episode is not None:
                episode.until = at

    def _allow_texts(self):
        for option, values in self.allowed.items():
            for value in values:
                yield f"{option}={value}" if value else option


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
