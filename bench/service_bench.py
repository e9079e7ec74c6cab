"""The service under load: fresh answers of `checkpointable` at 500 requests/s, an idle
service that is idle, and its memory.

A real `crwatch serve` (probes attached, history in a temporary file) with
EXTRA_PROCESSES extra processes alive. The load comes from a separate process
(its own interpreter): CLIENTS threads, each opening a new connection for every
request (as ApacheBench does without -k), for SECONDS per case. Printed for each
case: requests/s, p50, p99 and the ratios to the targets (p99 20 ms, 500
requests/s):

- a quiet subject (a sleeping process), `checkpointable` as a user asks (its tree);
- `tree=true` on a 10-process tree;
- a subject that keeps opening TCP connections: each connection is a probe event
  the answer must reflect, so an answer reuses an audit only when no event for
  the subject was applied since it began (answers with `audit_reused` false are
  counted);
- the process list (from the rows the service keeps), for comparison;
- the floor, measured in the same run: uvicorn with the service's protocol and
  settings answering a constant JSON route (FastAPI, no work).

Then the service's CPU over IDLE_SECONDS without a request (utime+stime from
/proc/PID/stat) against the 2% target, with the probe events the host made
meanwhile (applying them is work too), and its RSS next to the floor's (uvicorn
with the constant route, after its load). Figures, never assertions: these
machines are noisy. Each figure of the issue is recorded for `make bench`'s table
(bench.figures): requests/s (ratio: the floor's requests/s over ours), p99
(ours over the floor's) and the server's CPU per answer (all its threads, over the
floor's) of the three cases, the idle share of a core and the RSS.
`python -m bench.service_bench requests` (or `idle`) runs one part.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.figures import Figure, record

CRWATCH = Path(sys.executable).with_name("crwatch")
EXTRA_PROCESSES = 500
TREE_PROCESSES = 10
CLIENTS = 8
SECONDS = 5.0
IDLE_SECONDS = 60.0
TARGET_P99_MS = 20.0
TARGET_RPS = 500
TARGET_IDLE_CPU = 0.02
PARTS = ("requests", "idle")

# Run by the load process: CLIENTS threads, each opening a new connection per request
# (HTTP/1.1, Connection: close) to GET the path for SECONDS; prints the latencies (ms),
# the statuses that were not 200 and how many answers said `audit_reused: false`.
LOAD = r"""
import json, re, socket, sys, threading, time
port, path, clients, seconds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").encode()
latencies, errors, fresh = [], [], [0]
def worker():
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(request)
            chunks = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        latencies.append((time.perf_counter() - began) * 1000)
        reply = b"".join(chunks)
        if not reply.startswith(b"HTTP/1.1 200"):
            errors.append(reply[:12].decode(errors="replace"))
        elif re.search(rb'"audit_reused": ?false', reply):
            fresh[0] += 1
threads = [threading.Thread(target=worker) for _ in range(clients)]
began = time.monotonic()
for thread in threads: thread.start()
for thread in threads: thread.join()
print(json.dumps({"latencies": latencies, "errors": errors, "fresh": fresh[0],
                  "seconds": time.monotonic() - began}))
"""

# The floor: uvicorn as `crwatch serve` runs it, answering one constant JSON route.
FLOOR = r"""
import sys, uvicorn
from fastapi import FastAPI
from api.service.connections import IDLE_SECONDS, ConnectionGuard, guarded_protocol
app = FastAPI()
@app.get("/constant")
def constant() -> dict:
    return {"verdict": "ok"}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http=guarded_protocol(ConnectionGuard()),
            loop="asyncio", timeout_keep_alive=IDLE_SECONDS, log_level="warning", access_log=False,
            proxy_headers=False)
"""

# A subject that keeps opening TCP connections to a listener of its own.
CONNECTING = r"""
import socket, time
listener = socket.create_server(("127.0.0.1", 0))
while True:
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    client.close(); server.close()
    time.sleep(0.001)
"""

# A tree of TREE_PROCESSES: this process and its sleeping children.
TREE = r"""
import subprocess, sys, time
children = [subprocess.Popen(["sleep", "600"]) for _ in range(int(sys.argv[1]) - 1)]
time.sleep(600)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def events_and_losses(port: int) -> tuple[int, int]:
    """The probe events the service's table applied, and those lost, so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as reply:
        table = json.loads(reply.read())["counters"]["table"]
    return table["events"], table["lost"]


def await_up(port: int, service: subprocess.Popen, path: str = "/healthz") -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5):
                return
        except OSError:
            if service.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {service.communicate()[1]}") from None
            time.sleep(0.1)


@dataclass(frozen=True)
class Load:
    """What one case's load measured."""

    label: str
    rps: float
    p50: float
    p99: float
    fresh: int
    answers: int
    errors: int
    cpu_ms: float       # the server's CPU (all its threads) per answer

    def line(self) -> str:
        errors = f", {self.errors} errors" if self.errors else ""
        return (f"{self.label:34} {self.rps:5.0f} req/s (x{self.rps / TARGET_RPS:.2f} of "
                f"{TARGET_RPS})  p50 {self.p50:5.1f} ms  p99 {self.p99:6.1f} ms "
                f"(x{self.p99 / TARGET_P99_MS:.2f} of {TARGET_P99_MS:.0f})  server CPU "
                f"{self.cpu_ms:.2f} ms/answer  fresh audits {self.fresh}/{self.answers}{errors}")


def load(port: int, path: str, label: str, server: int) -> Load:
    """The load on one path, with the CPU the server (pid `server`) spent meanwhile."""
    before = cpu_seconds(server)
    result = subprocess.run([sys.executable, "-c", LOAD, str(port), path, str(CLIENTS),
                             str(SECONDS)], capture_output=True, text=True, check=True)
    cpu = cpu_seconds(server) - before
    measured = json.loads(result.stdout)
    latencies = sorted(measured["latencies"])
    return Load(label, rps=len(latencies) / measured["seconds"],
                p50=statistics.median(latencies),
                p99=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
                fresh=measured["fresh"], answers=len(latencies),
                errors=len(measured["errors"]),
                cpu_ms=cpu * 1000 / max(1, len(latencies)))


def floor() -> tuple[Load, float]:
    """The floor's load, and its RSS (MiB) after it."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", FLOOR, str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        await_up(port, server, "/constant")
        measured = load(port, "/constant", "floor: uvicorn, a constant route", server.pid)
        return measured, rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)


def record_case(case: str, ours: Load, floor_load: Load) -> None:
    """The case's requests/s and p99 next to the floor's, against the targets."""
    record(Figure("service", f"checkpointable, {case}: requests/s (8 clients, a new "
                  f"connection each; ratio: floor / ours)", f"{ours.rps:.0f} rps",
                  f"uvicorn constant route {floor_load.rps:.0f} rps",
                  floor_load.rps / ours.rps, f">= {TARGET_RPS} rps", ours.rps >= TARGET_RPS))
    record(Figure("service", f"checkpointable, {case}: p99 ({ours.fresh} of {ours.answers} "
                  f"answers from a fresh audit)", f"{ours.p99:.1f} ms",
                  f"uvicorn constant route {floor_load.p99:.1f} ms", ours.p99 / floor_load.p99,
                  f"<= {TARGET_P99_MS:.0f} ms", ours.p99 <= TARGET_P99_MS))
    # what an answer costs the server (all its threads: the applier's share of the
    # host's events included), next to what one costs uvicorn's constant route
    record(Figure("service", f"checkpointable, {case}: server CPU per answer",
                  f"{ours.cpu_ms:.2f} ms", f"uvicorn constant route {floor_load.cpu_ms:.2f} ms",
                  ours.cpu_ms / floor_load.cpu_ms))


def spawn(*command: str) -> subprocess.Popen:
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def main(parts: list[str] | None = None) -> None:
    parts = parts or list(PARTS)
    if os.geteuid() != 0:
        print("service bench skipped: the service's probes need root", flush=True)
        return
    extra = [spawn("sleep", "600") for _ in range(EXTRA_PROCESSES)]
    subjects = [spawn(sys.executable, "-c", TREE, str(TREE_PROCESSES)),
                spawn(sys.executable, "-c", CONNECTING)]
    tree, connecting = subjects
    with tempfile.TemporaryDirectory(prefix="crwatch-bench-") as scratch:
        port = free_port()
        service = subprocess.Popen([str(CRWATCH), "serve", "--port", str(port), "--db",
                                    str(Path(scratch) / "history.sqlite3")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            await_up(port, service)
            started = time.perf_counter()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/processes?limit=1000",
                                        timeout=120) as reply:
                total = json.loads(reply.read())["total"]
            print(f"first GET /processes ({total} processes, every one audited): "
                  f"{(time.perf_counter() - started) * 1000:.0f} ms", flush=True)
            floor_load, floor_rss = floor()
            if "requests" in parts:
                requests(port, service.pid, floor_load, tree.pid, connecting.pid, extra[0].pid)
            if "idle" in parts:
                connecting.kill()  # idle means no event either
                idle(port, service.pid, total, floor_rss)
        finally:
            service.terminate()
            service.wait(timeout=30)
            for process in extra + subjects:
                process.kill()
            for process in extra + subjects:
                process.wait()


def requests(port: int, server: int, floor_load: Load, tree: int, connecting: int,
             quiet: int) -> None:
    print(f"GET /processes/PID/checkpointable, {CLIENTS} clients, a new connection "
          f"per request, {SECONDS:.0f} s each:", flush=True)
    print(floor_load.line(), flush=True)
    for path, label, case in (
            (f"/processes/{quiet}/checkpointable", "quiet subject", "a quiet subject"),
            (f"/processes/{tree}/checkpointable?tree=true",
             f"tree=true, {TREE_PROCESSES}-process tree",
             f"tree=true on a {TREE_PROCESSES}-process tree"),
            (f"/processes/{connecting}/checkpointable", "subject opening TCP conns",
             "a subject opening TCP connections"),
            ("/processes?limit=100", "the process list, 100 rows", None),
            ("/processes?verdict=blocked&limit=100", "the list, blocked only", None)):
        measured = load(port, path, label, server)
        print(measured.line(), flush=True)
        if case is not None:
            record_case(case, measured, floor_load)


def idle(port: int, pid: int, total: int, floor_rss: float) -> None:
    time.sleep(2.0)
    events, lost = events_and_losses(port)
    before, began = cpu_seconds(pid), time.monotonic()
    time.sleep(IDLE_SECONDS)
    share = (cpu_seconds(pid) - before) / (time.monotonic() - began)
    events_after, lost_after = events_and_losses(port)
    rss = rss_mib(pid)
    # the host's own activity is the service's work too: say how much there was
    print(f"idle service, {total} processes, {IDLE_SECONDS:.0f} s: {share:.1%} of a "
          f"core (x{share / TARGET_IDLE_CPU:.2f} of {TARGET_IDLE_CPU:.0%}) while the "
          f"host made {events_after - events} probe events ({lost_after - lost} lost); "
          f"RSS {rss:.1f} MiB", flush=True)
    record(Figure("service", f"idle service, {total} processes, {IDLE_SECONDS:.0f} s, "
                  f"{events_after - events} host probe events applied meanwhile",
                  f"{share:.1%} of a core", "no floor (the target)", share / TARGET_IDLE_CPU,
                  f"<= {TARGET_IDLE_CPU:.0%} of a core", share <= TARGET_IDLE_CPU))
    record(Figure("service", "RSS after the load and the idle minute", f"{rss:.0f} MiB",
                  f"uvicorn constant route {floor_rss:.0f} MiB", rss / floor_rss,
                  "report", None))


if __name__ == "__main__":
    unknown = set(sys.argv[1:]) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    main(sys.argv[1:])
