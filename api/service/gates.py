"""The service's gates (POST /processes/{pid}/gate): one at a time per process tree, images
only inside the dump root (`crwatch serve --dump-root`).

A gate run by the service compares its frozen recheck with the live table (the
drift report), corrects the table, and counts both in /metrics. What it needs of the
service is handed to it (the profiles, the tracker's reconciliation, what only the
probes see, where its verdict goes); it never sees the Service itself.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from api.service.errors import GateBusy, NoSuchProcess
from api.service.metrics import ServiceMetrics
from tracker.criu.runner import criu_at
from tracker.gate.ready_helper import ReadyHelper
from tracker.gate.recheck import GateRequest, ProbeFinder, Reconcile, gate, images_directory
from tracker.procfs import ProcessGone
from tracker.profiles import Profile


class Gates:
    """`profile_for`: the profile a gate is judged by, from its name (None: the service's);
    `probe_finder`: asked at each gate with its profile, what only the probes see and what
    they cannot (None without probes);
    `judged`: told each gate's pid and verdict document, which is newer than any audit kept."""

    def __init__(self, *, criu: str | None, dump_root: Path,
                 profile_for: Callable[[str | None], Profile], reconcile: Reconcile,
                 probe_finder: Callable[[Profile], ProbeFinder | None],
                 judged: Callable[[int, dict], None], metrics: ServiceMetrics):
        self._criu = criu
        self._dump_root = dump_root
        self._profile_for = profile_for
        self._reconcile = reconcile
        self._probe_finder = probe_finder
        self._judged = judged
        self._metrics = metrics
        self._running: set[int] = set()
        self._lock = threading.Lock()
        self._ready_helper = ReadyHelper()  # from the first gate on, the next one's helper

    def run(self, pid: int, *, tree: bool = True, allow: Iterable[str] = (),
            profile_name: str | None = None, watchdog_s: float,
            dump_dir: str | None = None, leave_running: bool = True) -> dict:
        request = GateRequest(pid=pid, tree=tree, allow=tuple(allow), watchdog_s=watchdog_s,
                              dump_dir=images_directory(dump_dir, self._dump_root)
                              if dump_dir else None,
                              leave_running=leave_running)
        with self._one_at_a_time(pid):
            try:
                judged_by = self._profile_for(profile_name)
                document = gate(request, judged_by, criu=criu_at(self._criu),
                                reconcile=self._reconcile,
                                probe_finder=self._probe_finder(judged_by),
                                ready_helper=self._ready_helper)
            except ProcessGone:
                raise NoSuchProcess(pid) from None
        self._count(document)
        self._judged(pid, document["verdict"])
        return document

    def close(self) -> None:
        """End the freezer helper kept ready for the next gate."""
        self._ready_helper.close()

    @contextmanager
    def _one_at_a_time(self, pid: int) -> Iterator[None]:
        with self._lock:
            if pid in self._running:
                raise GateBusy(f"a gate of pid {pid} is running already")
            self._running.add(pid)
        try:
            yield
        finally:
            with self._lock:
                self._running.discard(pid)

    def _count(self, document: dict) -> None:
        metrics = self._metrics
        metrics.gates.labels(document["outcome"]).inc()
        drift = document["drift"]
        for kind in ("missed", "stale", "criu"):
            if drift[kind]:
                metrics.gate_drift.labels(kind).inc(len(drift[kind]))
        freeze = document["freeze"]
        if freeze["method"] is not None and freeze["frozen_ms"] is not None:
            metrics.gate_frozen_seconds.labels(freeze["method"]).observe(freeze["frozen_ms"] / 1e3)
