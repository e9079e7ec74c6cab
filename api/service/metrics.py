"""GET /metrics: Prometheus text, read from the service's parts at each scrape.

Counters that live in the tracker (events, losses, re-audits...), the
history and the supervised workers are exposed as they are counted there;
the audit latency and the verdicts served are recorded here, in a registry
of the application's own (several apps, e.g. in tests, never share one).
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from api.service.event_hub import EventHub
from tracker.live.applier import Tracker

AUDIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
FROZEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TABLE_COUNTERS = {  # LiveTable counter -> (metric, help)
    "events": ("crwatch_events_applied", "probe events applied to the live table"),
    "transitions": ("crwatch_transitions", "nocr/cr transitions published"),
    "reaudits": ("crwatch_reaudits", "whole-table audits after a loss"),
    "coalesced": ("crwatch_events_coalesced", "events skipped: copies of marked fds closed "
                                              "untouched"),
    "lock_reads": ("crwatch_lock_reads", "reads of a process's locks after a lock change"),
    "ignored": ("crwatch_events_ignored", "events about processes gone or older than the "
                                          "pid's holder"),
}


class ServiceMetrics:
    """What the service records as it answers; the state it holds is read at each scrape
    by a StateCollector registered into `registry`."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.audit_seconds = Histogram("crwatch_audit_seconds", "time to audit a process (tree)",
                                       buckets=AUDIT_BUCKETS, registry=self.registry)
        self.verdicts = Counter("crwatch_verdicts_served", "verdicts served, by verdict",
                                ["verdict"], registry=self.registry)
        self.gates = Counter("crwatch_gates", "gates run, by outcome (passed, refused, dumped, "
                             "dump_failed)", ["outcome"], registry=self.registry)
        self.gate_drift = Counter(
            "crwatch_gate_drift", "differences a gate's frozen recheck found with the tracked "
            "state: reasons the probes missed, stale marks, CRIU failures the audit did not "
            "predict", ["kind"], registry=self.registry)
        self.gate_frozen_seconds = Histogram(
            "crwatch_gate_frozen_seconds", "how long a gate held the tree frozen, by method",
            ["method"], buckets=FROZEN_BUCKETS, registry=self.registry)


class StateCollector:
    """The service's state as metrics, read at each scrape: the tracker's counters and
    marks, the process list's rows (judged by the service's profile), the health
    document (probes, workers, history, connections) and the event streams refused."""

    def __init__(self, *, tracker: Tracker, rows: Callable[[], list[dict]], profile_name: str,
                 health: Callable[[], dict], events: EventHub):
        self._tracker = tracker
        self._rows = rows
        self._profile_name = profile_name
        self._health = health
        self._events = events

    def collect(self):
        tracker = self._tracker
        counters = tracker.counters()
        table = counters.get("table", {})
        for name, (metric, text) in TABLE_COUNTERS.items():
            family = CounterMetricFamily(metric, text)
            family.add_metric([], table.get(name, 0))
            yield family
        lost = CounterMetricFamily("crwatch_events_lost", "records lost, by where",
                                   labels=["where"])
        for where, count in counters.get("lost", {}).items():
            lost.add_metric([where], count)
        yield lost
        errors = CounterMetricFamily("crwatch_apply_errors", "events whose application failed")
        errors.add_metric([], counters.get("apply_errors", 0))
        yield errors

        by_verdict = GaugeMetricFamily("crwatch_processes", "processes by verdict (the process "
                                       "list's rows, service profile)", labels=["verdict"])
        counts = dict.fromkeys(("ok", "needs_options", "blocked", "unknown"), 0)
        codes: dict[str, int] = {}
        for row in self._rows():
            counts[row["judged"][self._profile_name][0]] += 1
            for code in row["codes"]:
                codes[code] = codes.get(code, 0) + 1
        for name, count in counts.items():
            by_verdict.add_metric([name], count)
        yield by_verdict
        by_code = GaugeMetricFamily("crwatch_process_reasons", "processes whose audit has "
                                    "this reason code (the process list's rows)", labels=["code"])
        for code, count in sorted(codes.items()):
            by_code.add_metric([code], count)
        yield by_code

        summary = tracker.table.summary() if tracker.table is not None else {"by_state": {},
                                                                             "by_code": {}}
        states = GaugeMetricFamily("crwatch_tracked_processes",
                                   "processes the probes mark, by state", labels=["state"])
        for state in ("nocr", "cr"):
            states.add_metric([state], summary["by_state"].get(state, 0))
        yield states
        reasons = GaugeMetricFamily("crwatch_tracked_reasons",
                                    "marks the probes hold now, by reason code", labels=["code"])
        for code, count in sorted(summary["by_code"].items()):
            reasons.add_metric([code], count)
        yield reasons

        health = self._health()
        probes = GaugeMetricFamily("crwatch_probe_attached", "1 when the probe is attached",
                                   labels=["probe", "state"])
        for probe in health["probes"]:
            probes.add_metric([probe["name"], probe["state"]],
                              1 if probe["state"] == "attached" else 0)
        yield probes
        degraded = GaugeMetricFamily("crwatch_degraded", "1 when the service is degraded: the "
                                     "probes could not attach, or a worker cannot work")
        degraded.add_metric([], 1 if health["status"] == "degraded" else 0)
        yield degraded
        yield from _worker_families(health["workers"])
        if health["history"] is not None:
            yield from _history_families(health["history"])
        connections = health["connections"]
        clients = GaugeMetricFamily("crwatch_event_clients", "open GET /events streams")
        clients.add_metric([], connections["event_streams"])
        yield clients
        yield from _connection_families(connections, self._events.refused)


HISTORY_COUNTERS = {  # History.status() key -> (metric, help)
    "offered": ("crwatch_history_offered", "history entries handed to the writer"),
    "written": ("crwatch_history_written", "history entries written to the database"),
    "dropped": ("crwatch_history_dropped", "history entries lost: the waiting ones overflowed "
                                           "their bound"),
    "rejected": ("crwatch_history_rejected", "history entries left out: a value the database "
                                             "cannot store"),
    "errors": ("crwatch_history_errors", "writes (or reopenings) the database refused"),
}


def _history_families(history: dict):
    for key, (metric, text) in HISTORY_COUNTERS.items():
        family = CounterMetricFamily(metric, text)
        family.add_metric([], history[key])
        yield family
    waiting = GaugeMetricFamily("crwatch_history_waiting", "history entries offered and not "
                                "written yet (kept while the database refuses them)")
    waiting.add_metric([], history["waiting"])
    yield waiting


def _worker_families(workers: list[dict]):
    up = GaugeMetricFamily("crwatch_worker_up", "1 while the background worker works, 0 while "
                           "it is retrying or dead", labels=["worker"])
    errors = CounterMetricFamily("crwatch_worker_errors", "errors a background worker survived",
                                 labels=["worker"])
    restarts = CounterMetricFamily("crwatch_worker_restarts", "times a background worker's "
                                   "loop was taken up again after an error", labels=["worker"])
    for worker in workers:
        up.add_metric([worker["name"]], 1 if worker["state"] == "running" else 0)
        errors.add_metric([worker["name"]], worker["errors"])
        restarts.add_metric([worker["name"]], worker["restarts"])
    yield from (up, errors, restarts)


def _connection_families(status: dict, streams_refused: int):
    """The connections' gauges and what was closed or refused (api/service/connections.py)."""
    for name, key, text in (
            ("crwatch_connections_open", "open", "open connections, /events streams included"),
            ("crwatch_connections_limit", "limit", "the most connections open at once"),
            ("crwatch_fd_limit", "fd_limit", "the service's RLIMIT_NOFILE"),
            ("crwatch_fds_open", "fds_open", "the service's open fds")):
        gauge = GaugeMetricFamily(name, text)
        gauge.add_metric([], status[key])
        yield gauge
    closed = CounterMetricFamily("crwatch_connections_closed", "connections the service "
                                 "closed, by why (refused: every one was busy; evicted: "
                                 "between requests, to make room; timed_out: no whole request "
                                 "in time; stalled: read nothing of a response)",
                                 labels=["why"])
    for why in ("refused", "evicted", "timed_out", "stalled"):
        closed.add_metric([why], status[why])
    yield closed
    for name, value, text in (
            ("crwatch_accept_errors", status["accept_errors"], "accept() failures (out of fds)"),
            ("crwatch_event_clients_cut_off", status["event_clients_cut_off"],
             "/events clients cut off for falling too far behind"),
            ("crwatch_event_streams_refused", streams_refused,
             "/events streams refused beyond the allowance")):
        counter = CounterMetricFamily(name, text)
        counter.add_metric([], value)
        yield counter
