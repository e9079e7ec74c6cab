"""The service's state: the tracker (probes and live table) and the audits it serves.

One Service per application, made by the lifespan of create_app(). Every
answer about a process comes from an audit read for the request (the
authority) and, next to it, what the probes track for that same identity.
"""
from __future__ import annotations

import logging
import time
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
        result = self._audit(pid, tree)
        document = verdict.document(result, judged_by, allow)
        document["tracked"] = self._tracked(result)
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

    def _tracked(self, result: Audit) -> dict | None:
        table = self.tracker.table
        tracked = table.tracked(result.root.pid) if table is not None else None
        if tracked is None or tracked["start_time"] != result.root.start_time:
            return None  # never marked, or about an older holder of the pid
        return tracked


def _kind(open_fd) -> str:
    try:
        return open_fd.kind
    except (ProcessGone, AccessDenied):
        return "gone"
