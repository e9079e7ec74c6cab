"""The service under load: latency and throughput of its main endpoints, and its memory.

A real `crwatch serve` (probes attached, history in a temporary file) with
500 extra processes alive; the load comes from a separate process (a
different interpreter, so it does not share the service's CPU time slices
unfairly) that keeps CONNECTIONS keep-alive connections busy for SECONDS per
endpoint and reports every request's latency. Prints p50, p99 and requests/s
against the targets (p99 20 ms, 500 requests/s), and the service's RSS.
Figures, never assertions: these machines are noisy.
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
from pathlib import Path

CRWATCH = Path(sys.executable).with_name("crwatch")
EXTRA_PROCESSES = 500
CONNECTIONS = 4
SECONDS = 5.0
TARGET_P99_MS = 20.0
TARGET_RPS = 500

# Run by the load process: CONNECTIONS threads, each with its own keep-alive
# connection, GET the path in a loop for SECONDS; prints the latencies (ms).
LOAD = """
import http.client, json, sys, threading, time
port, path, connections, seconds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
latencies, errors = [], []
def worker():
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        connection.request("GET", path)
        reply = connection.getresponse(); reply.read()
        latencies.append((time.perf_counter() - began) * 1000)
        if reply.status != 200:
            errors.append(reply.status)
threads = [threading.Thread(target=worker) for _ in range(connections)]
began = time.monotonic()
for thread in threads: thread.start()
for thread in threads: thread.join()
print(json.dumps({"latencies": latencies, "errors": errors, "seconds": time.monotonic() - began}))
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


def await_up(port: int, service: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                return
        except OSError:
            if service.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"crwatch serve did not start: {service.communicate()[1]}") from None
            time.sleep(0.1)


def load(port: int, path: str) -> str:
    result = subprocess.run([sys.executable, "-c", LOAD, str(port), path, str(CONNECTIONS),
                             str(SECONDS)], capture_output=True, text=True, check=True)
    measured = json.loads(result.stdout)
    latencies = sorted(measured["latencies"])
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    rps = len(latencies) / measured["seconds"]
    errors = f", {len(measured['errors'])} errors" if measured["errors"] else ""
    return (f"GET {path:38} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms (target {TARGET_P99_MS:.0f}, "
            f"ratio {p99 / TARGET_P99_MS:.2f})  {rps:7.0f} req/s (target {TARGET_RPS}, ratio "
            f"{rps / TARGET_RPS:.2f}){errors}")


def main() -> None:
    if os.geteuid() != 0:
        print("service bench skipped: the service's probes need root", flush=True)
        return
    extra = [subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(EXTRA_PROCESSES)]
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
            target = extra[0].pid
            # tree=false: the process's own audit, kept while no probe event comes (a
            # tree, the default, is audited afresh for every request)
            for path in (f"/processes/{target}/checkpointable?tree=false", "/processes?limit=100",
                         "/processes?verdict=blocked&limit=100"):
                print(load(port, path), flush=True)
            print(f"service RSS with {total} processes: {rss_mib(service.pid):.1f} MiB",
                  flush=True)
        finally:
            service.terminate()
            service.wait(timeout=30)
            for process in extra:
                process.kill()
            for process in extra:
                process.wait()


if __name__ == "__main__":
    main()
