"""The service's state: the tracker (probes and live table), the audits it serves and the
process list's rows.

One Service per application, made by the lifespan of create_app(). Every
answer about a process comes from an audit (the authority: read for the
request, or kept while no probe event came for what it read) and, next to it,
what the probes track for that same identity.

The Service owns the parts and hands each one the collaborators it uses, never
itself: the audits kept for reuse (audit_cache.py), the rows kept by ProcessRows
(below) and listed by process_list.py, the gates (gates.py), the metrics read at
each scrape (metrics.py).
"""
from __future__ import annotations

import gc
import logging
import math
import os
import random
import threading
import time
from typing import Callable, Iterable

from api.service.audit_cache import AuditCache
from api.service.connections import ConnectionGuard
from api.service.errors import NoSuchProcess
from api.service.event_hub import MAX_STREAMS, EventHub
from api.service.gates import Gates
from api.service.history import SCHEMA as HISTORY_SCHEMA
from api.service.history import History
from api.service.metrics import ServiceMetrics, StateCollector
from api.service.process_list import process_list
from api.service.settings import Settings
from api.service.tree_rows import NON_NESTABLE
from tracker import procfs, verdict
from tracker.audit import Audit, ThreadId, audit, identify
from tracker.environment import Environment
from tracker.environment import current as current_environment
from tracker.holders import PASS_MAX_AGE_SECONDS, HostHolders
from tracker.live import probe_found
from tracker.live.applier import Tracker
from tracker.live.model import Transition
from tracker.live.table import LiveTable
from tracker.procfs import AccessDenied, Proc, ProcessGone
from tracker.profiles import PROFILE_NAMES, Profile, profile
from tracker.safe_text import json_bytes
from tracker.supervised import DEAD, RETRYING, Callback, Worker

log = logging.getLogger(__name__)
FDS_SCHEMA = "crwatch.fds/1"
PROCESS_SCHEMA = "crwatch.process/1"
# The process list: /proc is listed every REFRESH_SECONDS; a row is audited again when a
# probe event came for its process; when events were lost (any process may have
# changed), once it is LOSS_REFRESH_SECONDS old, so that a host losing events every
# second does not have every row audited every second; else after LIST_REFRESH_SECONDS,
# for what no probe sees (a regular file opened, a unix socket connected).
REFRESH_SECONDS = 1.0
LOSS_REFRESH_SECONDS = 10.0
LIST_REFRESH_SECONDS = 300.0
DUE_BATCH_SECONDS = 10.0
# Once the list is whole, a pass stops auditing after this much CPU (it may overrun by
# one audit): a host whose processes all keep changing has its rows audited again
# oldest first over several passes, never a core spent on them.
PASS_CPU_SECONDS = 0.01
# A row whose process keeps having events is audited again at most once per this many
# times its audit's CPU cost: a process of 10,000 fds changing all the time takes at
# most 1% of a core, one of a few fds is followed every pass.
EVENT_SPACING = 100
# A kept audit of at most this many processes is answered on the event loop: its reads
# of /proc (a stat per member) and its document take a fraction of a millisecond.
LOOP_PROCESSES = 16
# Answers kept per kept audit (one per profile and allowed options asked).
ANSWERS_KEPT = 64


class KeptAnswer:
    """The verdict document of a kept audit, made once for a profile and allowed options
    with what only the probes see (`found`) and the dumper's environment, and its JSON
    encoded once for the viewers that see everything."""

    def __init__(self, document: dict, found: probe_found.ProbeFound,
                 environment: Environment):
        self.document = document
        self.found = found
        self.environment = environment
        self._body: bytes | None = None

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = json_bytes(self.document)
        return self._body


class Service:
    """The documents the routes serve, and the parts behind them, started and stopped
    with the application."""

    def __init__(self, settings: Settings, connections: ConnectionGuard | None = None,
                 progress: Callable[[str], None] | None = None):
        """`progress` is told a line at each step of the tracker's start."""
        self.settings = settings
        self.connections = connections or ConnectionGuard()
        self.profile = profile(settings.profile, settings.criu_version)
        self.tracker = Tracker(self.profile, progress=progress)
        self.events = EventHub()
        # the tracker's subscribers, supervised: a failure is counted and shown, once
        self._publisher = Callback("event-hub", self.events.publish)
        self._recorder = Callback("history-recorder", self._record)
        self.tracker.subscribe(self._publisher)
        self.metrics = ServiceMetrics()
        self.history: History | None = None
        self._audits = AuditCache(audit=self._audit, live_table=self._live_table,
                                  caught_up=self.tracker.caught_up,
                                  caught_up_on_loop=self.tracker.caught_up_on_loop)
        self.rows = ProcessRows(row=self.row, stale=self.stale, after_pass=self._after_pass)
        self._frozen = False    # the start-up's objects are out of the collector's passes
        self.metrics.registry.register(StateCollector(
            tracker=self.tracker, rows=self.rows.snapshot, profile_name=self.profile.name,
            health=self.health, events=self.events))
        # Where CRIU would run (here): namespaces it has seen already are not nested.
        self.dumper_namespaces = _namespaces(os.getpid())
        self.gates = Gates(criu=settings.criu, dump_root=settings.dump_root,
                           profile_for=self.profile_for, reconcile=self.tracker.reconcile,
                           probe_finder=self.probe_finder, judged=self._gate_judged,
                           metrics=self.metrics)
        self.started = time.monotonic()

    def start(self) -> None:
        self.history = History(self.settings.db, self.settings.retention_days)
        self.tracker.subscribe(self._recorder)
        if self.settings.probes:
            self.tracker.start()
        else:
            self.tracker.degraded = "probes disabled by the settings: audits only"
        if self.tracker.degraded:
            log.warning("crwatch runs degraded: %s", self.tracker.degraded)
        self.rows.start()

    def stop(self) -> None:
        self.rows.stop()
        self.events.close()
        self.tracker.stop()
        self.gates.close()
        if self.history is not None:
            self.history.close()  # writes what is still queued

    def _after_pass(self) -> None:
        self._audits.forget_old()
        if not self._frozen:
            # The live table, the first rows, the catalogue and the modules stay for the
            # service's life: frozen, they are never walked again by the collector's full
            # passes, each of which would otherwise pause every request for tens of ms.
            gc.freeze()
            self._frozen = True

    def _record(self, notice) -> None:
        if isinstance(notice, Transition):
            self.history.record_transition(notice)

    def _record_verdict(self, document: dict) -> None:
        if self.history is not None:
            self.history.record_verdict(document)

    def _gate_judged(self, pid: int, document: dict) -> None:
        self._audits.forget(pid)  # the gate's recheck is newer than any kept audit
        self._record_verdict(document)

    # ------------------------------------------------------------ documents

    def workers(self) -> list:
        """The supervised background work: threads (Worker) and subscribers (Callback)."""
        found = [*self.tracker.workers(), self.rows.worker, self._publisher, self._recorder]
        return found + ([self.history.worker] if self.history is not None else [])

    def health(self) -> dict:
        """`degraded` with a reason for each part that cannot work: probes not attached,
        a background worker retrying or dead."""
        workers = [worker.status() for worker in self.workers()]
        reasons = {"probes": self.tracker.degraded} if self.tracker.degraded else {}
        reasons.update({worker["name"]: worker["reason"] for worker in workers
                        if worker["state"] == RETRYING})
        reasons.update({worker["name"]: f"stopped working: {worker['reason']}"
                        for worker in workers if worker["state"] == DEAD})
        return {"status": "degraded" if reasons else "ok",
                "degraded": "; ".join(f"{name}: {why}" for name, why in reasons.items()) or None,
                "reasons": reasons,
                "workers": workers,
                "history": self.history.status() if self.history is not None else None,
                "probes": self.tracker.probe_statuses(),
                "device_filter": self.tracker.device_filter(),
                "startup": self.tracker.startup.as_dict(),
                "counters": self.tracker.counters(),
                "connections": self.connection_status()}

    def connection_status(self) -> dict:
        return {**self.connections.status(), "event_streams": self.events.clients(),
                "event_streams_limit": MAX_STREAMS,
                "event_clients_cut_off": self.events.cut_off}

    def checkpointable(self, pid: int, *, tree: bool = True, allow: Iterable[str] = (),
                       profile_name: str | None = None) -> dict:
        """The verdict of pid with all its descendants (what a checkpoint takes), or with
        `tree=False` of its own findings; what only the probes see counts too."""
        result, reused = self._audits.audit(pid, tree=tree)
        return self._verdict(result, reused, self.profile_for(profile_name), allow)

    def check(self, pid: int, *, tree: bool, allow: Iterable[str], name_holders: bool,
              environment: Environment) -> dict:
        """checkpointable()'s document as `crwatch check` would judge it: from an audit
        read now, never a kept one (which may miss what no probe sees, an external unix
        socket connected meanwhile), naming who holds its pipes and sockets outside the
        tree only when asked, for the dumper `environment`, under the service's profile."""
        result = self._audit(pid, tree=tree, name_holders=name_holders)
        document = self._verdict(result, False, self.profile, allow, environment)
        del document["audit_reused"]  # never: the command's document has no such field
        return document

    async def kept_checkpointable(self, pid: int, *, tree: bool = True,
                                  allow: Iterable[str] = (),
                                  profile_name: str | None = None) -> KeptAnswer | None:
        """checkpointable()'s answer from a kept audit of at most LOOP_PROCESSES processes,
        for the event loop: the probes' catch-up is awaited there, and what is left is a
        few reads of /proc per process. Its document is made once per kept audit, profile
        and allowed options, and encoded once, while what only the probes see of it stays
        the same (its `checked_at` is then when that first answer was made). None when
        the answer needs an audit, or the live table's lock (the table follows one of
        its processes)."""
        result = await self._audits.kept_on_loop(pid, tree=tree, most=LOOP_PROCESSES)
        table = self.tracker.table
        if result is None or (table is not None and any(table.follows(member.pid)
                                                        for member in result.processes)):
            return None
        answers = self._audits.answers(pid, tree, result)
        if answers is None:
            return None
        judged_by = self.profile_for(profile_name)
        found = self._probe_found(result, judged_by)
        key = (judged_by.name, tuple(allow))
        environment = current_environment()
        kept = answers.get(key)
        if kept is None or kept.found != found or kept.environment is not environment:
            document = probe_found.document(result, found, judged_by, allow, environment)
            document["tracked"] = None  # the table follows none of its processes
            document["audit_reused"] = True
            if len(answers) >= ANSWERS_KEPT:  # a caller naming ever other options
                answers.clear()
            kept = answers[key] = KeptAnswer(document, found, environment)
        self._answered(kept.document)
        return kept

    def _verdict(self, result: Audit, reused: bool, judged_by: Profile,
                 allow: Iterable[str], environment: Environment | None = None) -> dict:
        found = self._probe_found(result, judged_by)
        document = probe_found.document(result, found, judged_by, allow, environment)
        document["tracked"] = self._tracked(result, judged_by)
        document["audit_reused"] = reused
        self._answered(document)
        return document

    def _answered(self, document: dict) -> None:
        """Every answer, kept or made now, is counted and goes to the history."""
        self.metrics.verdicts.labels(document["verdict"]).inc()
        self._record_verdict(document)

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

    def probe_finder(self, judged_by: Profile):
        """What only the probes see of some processes, for a verdict under `judged_by`:
        their marks, and what a probe not attached leaves unseen (the tracker's
        `unseen`, said of the first process, the root), since the tracker started.
        None: no probes feed the table."""
        table = self._live_table()
        if table is None:
            return None

        def found(identities) -> probe_found.ProbeFound:
            identities = list(identities)
            unseen = self.tracker.unseen(judged_by, identities[0].pid) if identities else []
            return [*table.probe_found(identities),
                    *((finding, self.tracker.ready_at) for finding in unseen)]
        return found

    def _probe_found(self, result: Audit, judged_by: Profile) -> probe_found.ProbeFound:
        finder = self.probe_finder(judged_by)
        return finder(result.processes) if finder is not None else []

    def profile_for(self, name: str | None) -> Profile:
        """The service's profile, or another one for the same CRIU version."""
        if name is None or name == self.profile.name:
            return self.profile
        return profile(name, self.profile.criu_version)

    def _audit(self, pid: int, tree: bool, holders: HostHolders | None = None,
               name_holders: bool = True) -> Audit:
        try:
            identify(pid)
            with self.metrics.audit_seconds.time():
                result = audit(pid, tree=tree, holders=holders, name_holders=name_holders)
        except ProcessGone:
            raise NoSuchProcess(pid) from None
        except AccessDenied as error:  # not even /proc/PID/stat: say so, as a 404 would lie
            raise PermissionError(str(error)) from None
        if result.exited(pid):
            raise NoSuchProcess(pid)  # it exited, or its pid was reused, while being read
        return result

    def process(self, pid: int, *, tree: bool = True, profile_name: str | None = None) -> dict:
        document = self.checkpointable(pid, tree=tree, profile_name=profile_name)
        try:
            cmdline = Proc(pid).read("cmdline").rstrip("\0").split("\0")
        except (ProcessGone, AccessDenied):
            raise NoSuchProcess(pid) from None
        return {**document, "schema": PROCESS_SCHEMA, "cmdline": cmdline if cmdline != [""]
                else [], "cgroup": _cgroup(pid)}

    def processes(self, *, verdict_is: str | None = None, tree_verdict_is: str | None = None,
                  comm: str | None = None, cgroup: str | None = None, offset: int = 0,
                  limit: int = 100, profile_name: str | None = None) -> dict:
        """Every process (but kernel threads), judged, filtered, one page of them
        (process_list.py), from the rows the refresher keeps (ProcessRows)."""
        judged_by = self.profile_for(profile_name)
        rows = self.rows.snapshot()
        tracked = self.tracker.table.states(judged_by) if self.tracker.table is not None else {}
        return process_list(rows, judged_by, tracked=tracked,
                            dumper_namespaces=self.dumper_namespaces,
                            checked_at=self.rows.refreshed_at or verdict.utc_now(),
                            verdict_is=verdict_is, tree_verdict_is=tree_verdict_is, comm=comm,
                            cgroup=cgroup, offset=offset, limit=limit)

    def row(self, pid: int, holders: HostHolders | None = None) -> dict | None:
        """One row of the process list, audited now (None: gone, unreadable, a kernel thread);
        `holders`: the index of who holds which pipe and socket that the pass shares."""
        # read before the audit: an event that comes while it reads makes the row stale
        sequence = self.tracker.table.sequence if self.tracker.table else 0
        began = time.thread_time()
        try:
            result, _ = self._audits.audit(pid, holders)
        except (NoSuchProcess, PermissionError, ThreadId):
            return None
        cost = time.thread_time() - began
        if result.kernel_thread():
            return None
        judged, codes = {}, set()
        for name in PROFILE_NAMES:
            judged_by = self.profile_for(name)
            findings = result.findings + probe_found.findings(self._probe_found(result, judged_by))
            judged[name] = _judge(findings, judged_by)
            if judged_by is self.profile:
                codes = {finding.code for finding in findings}
        now = time.monotonic()
        return {"pid": pid, "ppid": result.root.ppid, "start_time": result.root.start_time,
                "comm": result.root.comm, "cgroup": _cgroup(pid),
                "namespaces": _namespaces(pid),
                "codes": sorted(codes),
                "judged": judged,
                "sequence": sequence, "at": now, "cost": cost,
                "due": row_due(now)}

    def stale(self, row: dict) -> bool:
        return row_stale(row, self._live_table())

    def _live_table(self):
        """The live table, when probes feed it (only then can an event invalidate an audit)."""
        return self.tracker.table if not self.tracker.degraded else None

    def _tracked(self, result: Audit, judged_by: Profile) -> dict | None:
        table = self.tracker.table
        tracked = table.tracked(result.root.pid, judged_by) if table is not None else None
        if tracked is None or tracked["start_time"] != result.root.start_time:
            return None  # never marked, or about an older holder of the pid
        return tracked


def row_due(now: float) -> float:
    """When a row audited now is audited again for what no probe sees: a random part
    of the interval early, so that rows made together (the first pass) are spread over
    it, and at a multiple of DUE_BATCH_SECONDS, so that the rows due meanwhile share
    one pass (and its one walk of the host's fds) instead of one each second."""
    due = now + LIST_REFRESH_SECONDS - random.uniform(0, LIST_REFRESH_SECONDS / 2)
    return math.ceil(due / DUE_BATCH_SECONDS) * DUE_BATCH_SECONDS


def row_stale(row: dict, table: LiveTable | None) -> bool:
    """Must this row be audited again: a probe event came for its process (and it is
    older than EVENT_SPACING times what its audit cost), events were lost since it was
    audited (and it is LOSS_REFRESH_SECONDS old), or it is due?"""
    now = time.monotonic()
    if now > row["due"]:
        return True
    if table is None:
        return False
    age = now - row["at"]
    return ((age > EVENT_SPACING * row["cost"] and table.event_since(row["pid"], row["sequence"]))
            or (age > LOSS_REFRESH_SECONDS and table.lost_since(row["sequence"])))


def _parent(row: dict) -> int:
    """The row's parent now (its own, if the process is still the row's)."""
    try:
        stat = Proc(row["pid"]).stat
    except (ProcessGone, AccessDenied):
        return row["ppid"]
    return stat.ppid if stat.start_time == row["start_time"] else row["ppid"]


def _namespaces(pid: int) -> dict[str, str]:
    """The process's namespaces of the kinds CRIU cannot nest (kind: link)."""
    links = {}
    for kind in NON_NESTABLE:
        try:
            links[kind] = Proc(pid).namespace(kind)
        except (ProcessGone, AccessDenied):
            continue
    return links


def _judge(findings, judged_by: Profile) -> tuple[str, list[str], bool]:
    judged, options = verdict.judge(findings, judged_by)
    return judged, options, verdict.checkpointable(findings, judged_by, {})


class ProcessRows:
    """The process list, kept current by a thread: every REFRESH_SECONDS it lists /proc,
    drops the rows of processes gone, and audits again the new ones and those `stale`
    says changed (Service.stale: a probe event came for them, events were lost, or they
    are due), new ones first, then oldest first, for PASS_CPU_SECONDS at most once the
    list is whole: a quiet host's pass lists /proc and audits nothing.

    `row`: a process's row audited now, with the pass's index of holders (None: not
    listed); `stale`: must a kept row be audited again; `after_pass`: called at the end
    of each whole pass."""

    def __init__(self, *, row: Callable[[int, HostHolders], dict | None],
                 stale: Callable[[dict], bool], after_pass: Callable[[], None]):
        self._row = row
        self._stale = stale
        self._after_pass = after_pass
        self._rows: dict[int, dict] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.refreshed_at: str | None = None
        self._filled = False    # a whole pass is done: later passes keep to their budget
        self.worker = Worker("process-list", self._step, interval=REFRESH_SECONDS)
        self._stopping = self.worker.stopping

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    def snapshot(self) -> list[dict]:
        self._ready.wait(120)  # the first pass audits every process
        with self._lock:
            return [self._rows[pid] for pid in sorted(self._rows)]

    def _step(self) -> None:
        try:
            self.refresh()
        finally:  # a first pass that failed must not hold the requests waiting
            self._ready.set()

    def refresh(self) -> None:
        alive = set(procfs.pids())
        with self._lock:
            for pid in [pid for pid in self._rows if pid not in alive]:
                del self._rows[pid]
            # An orphan has a new parent now (its reaper), which no event reports.
            for pid, row in list(self._rows.items()):
                if row["ppid"] not in alive and row["ppid"] != 0:
                    self._rows[pid] = {**row, "ppid": _parent(row)}
            current = dict(self._rows)
        # New processes first, then the rows audited longest ago.
        due = sorted((pid for pid in alive if pid not in current or self._stale(current[pid])),
                     key=lambda pid: current[pid]["at"] if pid in current else -1.0)
        # One index of pipe and socket holders for the pass, not a walk of /proc per row.
        holders = HostHolders(max_age=PASS_MAX_AGE_SECONDS)
        began = time.thread_time()
        for pid in due:
            if self._stopping.is_set():
                return
            if self._filled and time.thread_time() - began > PASS_CPU_SECONDS:
                break  # the rest in the next passes: a busy host cannot take a core
            fresh = self._row(pid, holders)
            with self._lock:
                if fresh is None:
                    self._rows.pop(pid, None)
                else:
                    self._rows[pid] = fresh
        self._after_pass()
        self._filled = True
        self.refreshed_at = verdict.utc_now()


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
