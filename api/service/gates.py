"""The service's gates (POST /processes/{pid}/gate): one at a time per process tree, images
only inside the dump root (`crwatch serve --dump-root`).

A gate run by the service compares its frozen recheck with the live table (the
drift report), corrects the table, and counts both in /metrics.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterable, Iterator

from tracker.criu.runner import criu_at
from tracker.gate.recheck import GateRequest, gate, images_directory
from tracker.procfs import ProcessGone


class GateBusy(Exception):
    """A gate of this process is already running."""


class Gates:
    def __init__(self, service):
        self._service = service
        self._running: set[int] = set()
        self._lock = threading.Lock()

    def run(self, pid: int, *, tree: bool = True, allow: Iterable[str] = (),
            profile_name: str | None = None, watchdog_s: float,
            dump_dir: str | None = None, leave_running: bool = True) -> dict:
        from api.service.state import NoSuchProcess

        service = self._service
        request = GateRequest(pid=pid, tree=tree, allow=tuple(allow), watchdog_s=watchdog_s,
                              dump_dir=images_directory(dump_dir, service.settings.dump_root)
                              if dump_dir else None,
                              leave_running=leave_running)
        with self._one_at_a_time(pid):
            try:
                document = gate(request, service.profile_for(profile_name),
                                criu=criu_at(service.settings.criu),
                                reconcile=service.tracker.reconcile,
                                probe_finder=service.probe_finder())
            except ProcessGone:
                raise NoSuchProcess(pid) from None
        self._count(document)
        service.forget_audit(pid)  # the gate's recheck is newer than any kept audit
        if service.history is not None:
            service.history.record_verdict(document["verdict"])
        return document

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
        metrics = self._service.metrics
        metrics.gates.labels(document["outcome"]).inc()
        drift = document["drift"]
        for kind in ("missed", "stale", "criu"):
            if drift[kind]:
                metrics.gate_drift.labels(kind).inc(len(drift[kind]))
        freeze = document["freeze"]
        if freeze["method"] is not None and freeze["frozen_ms"] is not None:
            metrics.gate_frozen_seconds.labels(freeze["method"]).observe(freeze["frozen_ms"] / 1e3)
