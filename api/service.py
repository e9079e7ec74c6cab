"""The service's state: the tracker (probes and live table) and the audits it serves.

One Service per application, made by the lifespan of create_app(). Every
answer about a process comes from an audit read for the request (the
authority) and, next to it, what the probes track for that same identity.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Iterable

from tracker import verdict
from tracker.audit import Audit, audit, identify
from tracker.history import SCHEMA as HISTORY_SCHEMA
from tracker.history import History
from tracker.live_model import Transition
from tracker.procfs import AccessDenied, Proc, ProcessGone
from tracker.profiles import Profile, profile
from tracker.tracker import Tracker

from api.event_hub import EventHub
from api.metrics import ServiceMetrics
from api.settings import Settings

log = logging.getLogger(__name__)
FDS_SCHEMA = "crwatch.fds/1"
LIST_SCHEMA = "crwatch.processes/1"
PROCESS_SCHEMA = "crwatch.process/1"
# An audit is reused while no probe event came for its process, for this long at
# most: what no probe sees (a regular file opened, a unix socket connected) is
# then at most this stale.
AUDIT_REUSE_SECONDS = 5.0


@dataclass(frozen=True)
class _Kept:
    start_time: float
    sequence: int        # the live table's sequence when the audit began
    at: float            # time.monotonic() when it began
    audit: Audit


class NoSuchProcess(LookupError):
    """No process has this pid now (or it exited while it was being read)."""

    def __init__(self, pid: int):
        super().__init__(f"no process with pid {pid}")
        self.pid = pid


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.profile = profile(settings.profile, settings.criu_version)
        self.tracker = Tracker(self.profile)
        self.events = EventHub()
        self.tracker.subscribe(self.events.publish)
        self.metrics = ServiceMetrics(self)
        self.history: History | None = None
        self._kept: dict[int, _Kept] = {}
        self.started = time.monotonic()

    def start(self) -> None:
        self.history = History(self.settings.db, self.settings.retention_days)
        self.tracker.subscribe(self._record)
        if self.settings.probes:
            self.tracker.start()
        else:
            self.tracker.degraded = "probes disabled by the settings: audits only"
        if self.tracker.degraded:
            log.warning("crwatch runs degraded: %s", self.tracker.degraded)

    def stop(self) -> None:
        self.events.close()
        self.tracker.stop()
        if self.history is not None:
            self.history.close()  # writes what is still queued

    def _record(self, notice) -> None:
        if isinstance(notice, Transition):
            self.history.record_transition(notice)

    # ------------------------------------------------------------ documents

    def health(self) -> dict:
        probes = self.tracker.probes.status()["probes"] if self.tracker.probes else {}
        return {"status": "degraded" if self.tracker.degraded else "ok",
                "degraded": self.tracker.degraded,
                "probes": [{"name": name, **status} for name, status in probes.items()],
                "counters": self.tracker.counters()}

    def checkpointable(self, pid: int, *, tree: bool = False, allow: Iterable[str] = (),
                       profile_name: str | None = None) -> dict:
        judged_by = self.profile_for(profile_name)
        # Trees are audited afresh: the probes do not report every fork.
        result, reused = (self._audit(pid, tree=True), False) if tree else self._reusable_audit(pid)
        document = verdict.document(result, judged_by, allow)
        document["tracked"] = self._tracked(result)
        document["audit_reused"] = reused
        self.metrics.verdicts.labels(document["verdict"]).inc()
        if self.history is not None:
            self.history.record_verdict(document)
        return document

    def history_of(self, pid: int, start_time: float | None = None) -> dict:
        """What was recorded of an identity: the pid's current one, else its newest."""
        known = self.history.identities(pid)
        try:
            alive = identify(pid)
        except (ProcessGone, AccessDenied):
            alive = None
        if start_time is None:
            start_time = alive.start_time if alive else (known[0] if known else None)
        is_alive = alive is not None and alive.start_time == start_time
        if start_time is None or (start_time not in known and not is_alive):
            raise NoSuchProcess(pid)
        entries = self.history.entries(pid, start_time)
        comm = alive.comm if is_alive else (entries[-1]["comm"] if entries else "")
        return {"schema": HISTORY_SCHEMA, "pid": pid, "start_time": start_time, "comm": comm,
                "alive": is_alive, "identities": known, "entries": entries}

    def fds(self, pid: int, profile_name: str | None = None) -> dict:
        judged_by = self.profile_for(profile_name)
        result = self._audit(pid, tree=False)
        try:
            open_fds = Proc(pid).fds()
        except ProcessGone:
            raise NoSuchProcess(pid) from None
        except AccessDenied as error:
            raise PermissionError(str(error)) from None
        by_fd: dict[int, list[dict]] = {}
        for finding in result.findings:
            if finding.fd is not None and finding.pid == pid:
                by_fd.setdefault(finding.fd, []).append(verdict.reason(finding, judged_by))
        return {"schema": FDS_SCHEMA, "pid": pid, "start_time": result.root.start_time,
                "comm": result.root.comm,
                "fds": [{"fd": open_fd.fd, "target": open_fd.target, "kind": _kind(open_fd),
                         "reasons": by_fd.get(open_fd.fd, [])}
                        for open_fd in sorted(open_fds, key=lambda o: o.fd)],
                "checked_at": verdict.utc_now()}

    # ------------------------------------------------------------ helpers

    def profile_for(self, name: str | None) -> Profile:
        """The service's profile, or another one for the same CRIU version."""
        if name is None or name == self.profile.name:
            return self.profile
        return profile(name, self.profile.criu_version)

    def _audit(self, pid: int, tree: bool) -> Audit:
        try:
            identify(pid)
            with self.metrics.audit_seconds.time():
                result = audit(pid, tree=tree)
        except ProcessGone:
            raise NoSuchProcess(pid) from None
        except AccessDenied as error:  # not even /proc/PID/stat: say so, as a 404 would lie
            raise PermissionError(str(error)) from None
        if any(finding.code == "audit.exited" for finding in result.findings):
            raise NoSuchProcess(pid)  # it exited, or its pid was reused, while being read
        return result

    def _reusable_audit(self, pid: int) -> tuple[Audit, bool]:
        """The last audit of this process if no probe event came for it since (and it is
        recent), else a fresh one. Without probes nothing is reused."""
        table = self.tracker.table if not self.tracker.degraded else None
        kept = self._kept.get(pid)
        if (table is not None and kept is not None
                and time.monotonic() - kept.at < AUDIT_REUSE_SECONDS
                and not table.changed_since(pid, kept.sequence)):
            try:
                if identify(pid).start_time == kept.start_time:
                    return kept.audit, True
            except (ProcessGone, AccessDenied):
                self._kept.pop(pid, None)
                raise NoSuchProcess(pid) from None
        sequence, began = (table.sequence if table else 0), time.monotonic()
        result = self._audit(pid, tree=False)
        if table is not None:
            self._kept[pid] = _Kept(result.root.start_time, sequence, began, result)
        return result, False

    def process(self, pid: int, profile_name: str | None = None) -> dict:
        document = self.checkpointable(pid, profile_name=profile_name)
        try:
            cmdline = Proc(pid).read("cmdline").rstrip("\0").split("\0")
        except (ProcessGone, AccessDenied):
            raise NoSuchProcess(pid) from None
        return {**document, "schema": PROCESS_SCHEMA, "cmdline": cmdline if cmdline != [""]
                else [], "cgroup": _cgroup(pid)}

    def processes(self, *, verdict_is: str | None = None, comm: str | None = None,
                  cgroup: str | None = None, offset: int = 0, limit: int = 100,
                  profile_name: str | None = None) -> dict:
        """Every process (but kernel threads), judged, filtered, one page of them."""
        judged_by = self.profile_for(profile_name)
        rows = []
        for pid in _pids():
            try:
                result, _ = self._reusable_audit(pid)
            except (NoSuchProcess, PermissionError):
                continue  # gone meanwhile, or unreadable
            if any(f.code == "task.kernel_thread" for f in result.findings):
                continue
            root = result.root
            if comm is not None and comm not in root.comm:
                continue
            group = _cgroup(pid)
            if cgroup is not None and cgroup not in group:
                continue
            judged, options = verdict.judge(result.findings, judged_by)
            if verdict_is is not None and judged != verdict_is:
                continue
            rows.append({"pid": pid, "start_time": root.start_time, "comm": root.comm,
                         "cgroup": group, "verdict": judged,
                         "checkpointable": verdict.checkpointable(result.findings, judged_by, {}),
                         "required_options": options,
                         "codes": sorted({f.code for f in result.findings}),
                         "tracked": (self._tracked(result) or {}).get("state")})
        self._forget_gone()
        return {"schema": LIST_SCHEMA, "profile": judged_by.name, "total": len(rows),
                "offset": offset, "limit": limit, "processes": rows[offset:offset + limit],
                "checked_at": verdict.utc_now()}

    def _forget_gone(self) -> None:
        stale = time.monotonic() - 2 * AUDIT_REUSE_SECONDS
        for pid in [pid for pid, kept in self._kept.items() if kept.at < stale]:
            self._kept.pop(pid, None)

    def _tracked(self, result: Audit) -> dict | None:
        table = self.tracker.table
        tracked = table.tracked(result.root.pid) if table is not None else None
        if tracked is None or tracked["start_time"] != result.root.start_time:
            return None  # never marked, or about an older holder of the pid
        return tracked


def _pids() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


def _cgroup(pid: int) -> str:
    """The process's cgroup v2 path ("" when unreadable)."""
    try:
        text = Proc(pid).read("cgroup")
    except (ProcessGone, AccessDenied):
        return ""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return text.splitlines()[0].split(":", 2)[-1] if text else ""


def _kind(open_fd) -> str:
    try:
        return open_fd.kind
    except (ProcessGone, AccessDenied):
        return "gone"
