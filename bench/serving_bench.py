"""Fair to every client: the cost of fanning notices out, and the service under an fd attack.

- fan-out: the tracker's notices published to an EventHub with 1 and 200 `/events`
  clients on an event loop of their own; prints the applier's cost per notice (what
  the tracker waits) and the CPU cost per notice until every client has every line,
  and the ratio 200 clients / 1 client.
- a burst of probe events (open+close of /dev/kvm, tests/service/test_serving.py) seen by a
  real `crwatch serve` with no other client, then with 200 idle `/events` clients;
  prints the burst's transitions each time and the service's CPU seconds.
- half-open connections: a real `crwatch serve` (probes attached) while a separate
  process holds N TCP connections that never send a byte; prints the median and
  worst latency of GET /healthz, its failures, the service's open fds and RSS during
  the attack and after it ends.
Figures, never assertions: these machines are noisy.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.service.event_hub import EventHub
from bench.service_bench import await_up, free_port, rss_mib

CRWATCH = Path(sys.executable).with_name("crwatch")
NOTICES = 2_000
CLIENT_COUNTS = (1, 200)
HALF_OPEN_COUNTS = (1_000, 10_000, 19_900)  # 19,900: the service's fds run out
HEALTH_REQUESTS = 21
IDLE_CLIENTS = 200

# Run by the attacking process: holds N connections that never send a byte, says
# "held" with how many it could open, and closes them all when its stdin ends.
ATTACK = """
import resource, socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for _ in range(count):
    try:
        held.append(socket.create_connection(("127.0.0.1", port)))
    except OSError:
        break
print(len(held), flush=True)
sys.stdin.read()
"""


class Notice:
    def __init__(self, number: int):
        self.number = number

    def to_json(self) -> dict:
        return {"schema": "crwatch.event/1", "kind": "transition", "pid": self.number,
                "state": "nocr", "reasons": [{"code": "device.chr.unsupported",
                                               "message": f"/dev/kvm is open as fd {self.number}"}]}


def fan_out(clients: int) -> tuple[float, float]:
    """(applier µs per notice, CPU µs per notice until every client has every line)."""
    hub = EventHub()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    done = threading.Event()
    received = [0] * clients

    async def client(index: int) -> None:
        async with contextlib.aclosing(hub.open()) as lines:
            async for text in lines:
                received[index] += text.count("data: ")
                if received[index] >= NOTICES:
                    return

    async def main() -> None:
        tasks = [asyncio.ensure_future(client(index)) for index in range(clients)]
        while hub.clients() < clients:
            await asyncio.sleep(0.01)
        started.set()
        await asyncio.gather(*tasks)
        done.set()

    runner = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    runner.start()
    started.wait(30)
    cpu = time.process_time()
    applier = 0.0
    for number in range(NOTICES):
        began = time.perf_counter()
        hub.publish(Notice(number))
        applier += time.perf_counter() - began
    done.wait(120)
    cpu = time.process_time() - cpu
    runner.join(10)
    loop.close()
    return applier / NOTICES * 1e6, cpu / NOTICES * 1e6


def bench_fan_out() -> list[str]:
    measured = {count: fan_out(count) for count in CLIENT_COUNTS}
    lines = [f"fan-out to {count:>3} clients: applier {applier:8.1f} µs per notice, CPU "
             f"{cpu:8.1f} µs per notice" for count, (applier, cpu) in measured.items()]
    few, many = measured[CLIENT_COUNTS[0]], measured[CLIENT_COUNTS[-1]]
    lines.append(f"fan-out ratio {CLIENT_COUNTS[-1]} clients / {CLIENT_COUNTS[0]}: applier "
                 f"{many[0] / few[0]:.2f}x, CPU {many[1] / few[1]:.1f}x")
    return lines


def burst_with_clients(port: int, service: subprocess.Popen) -> list[str]:
    from tests.service.test_serving import EVENT_CLIENTS, Counter, barrier, burst  # the tests' parts

    lines = []
    counter = Counter(port)
    try:
        for clients in (0, IDLE_CLIENTS):
            idle = None
            if clients:
                idle = subprocess.Popen([sys.executable, "-c", EVENT_CLIENTS, str(port),
                                         str(clients)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
                idle.stdout.readline()
                barrier(counter)  # their connects applied: the clients are idle from here
            began = cpu_seconds(service.pid)
            made, seen = burst(counter)
            used = cpu_seconds(service.pid) - began
            lines.append(f"burst of {made:,} events with {clients:>3} idle /events clients: "
                         f"{seen:,} transitions; service CPU {used:.1f} s")
            if idle is not None:
                idle.kill()
                idle.wait()
    finally:
        counter.close()
    return lines


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def health_latencies(port: int) -> tuple[list[float], list[str]]:
    latencies, failures = [], []
    for _ in range(HEALTH_REQUESTS):
        began = time.perf_counter()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as reply:
                reply.read()
        except (urllib.error.URLError, OSError) as error:
            failures.append(str(getattr(error, "code", error)))
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies, failures


def half_open(port: int, service: subprocess.Popen, count: int) -> str:
    baseline = open_fds(service.pid)
    attacker = subprocess.Popen([sys.executable, "-c", ATTACK, str(port), str(count)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    held = int(attacker.stdout.readline() or 0)
    latencies, failures = health_latencies(port)
    during, rss = open_fds(service.pid), rss_mib(service.pid)
    attacker.stdin.close()
    attacker.wait(timeout=60)
    time.sleep(1.0)  # the service sees the closes
    after = open_fds(service.pid)
    failed = f", {len(failures)} failed ({', '.join(sorted(set(failures)))})" if failures else ""
    return (f"{count:>6,} half-open asked ({held:,} connected): GET /healthz median "
            f"{statistics.median(latencies):7.1f} ms, worst {max(latencies):7.1f} ms{failed}; "
            f"service fds {baseline} -> {during} -> {after} after; RSS {rss:.0f} MiB")


def bench_service() -> list[str]:
    if os.geteuid() != 0:
        return ["service benches skipped: the service's probes need root"]
    lines = []
    with tempfile.TemporaryDirectory(prefix="crwatch-bench-") as scratch:
        port = free_port()
        service = subprocess.Popen([str(CRWATCH), "serve", "--port", str(port), "--db",
                                    str(Path(scratch) / "history.sqlite3")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            await_up(port, service)
            lines += burst_with_clients(port, service)
            lines += [half_open(port, service, count) for count in HALF_OPEN_COUNTS]
            lines.append(f"service RSS after the attacks: {rss_mib(service.pid):.0f} MiB")
        finally:
            service.terminate()
            stderr = service.communicate(timeout=30)[1]
        lines.append(f"service stderr: {len(stderr):,} bytes, {stderr.count(b'Traceback')} "
                     f"tracebacks, {stderr.count(b'accept')} lines about accept")
    return lines


def main() -> None:
    for line in bench_fan_out():
        print(line, flush=True)
    for line in bench_service():
        print(line, flush=True)


if __name__ == "__main__":
    main()
