"""Fair to every client: event streams never slow the tracker, and no local user can take
the service's fds (api/service/event_hub.py, api/service/connections.py, tracker/live/applier.py)."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from api.service.connections import ConnectionGuard
from tests.support.servers import EVENT_CLIENTS, Server, metrics
from tests.support.trackers import Recorder, attached_tracker

pytestmark = [pytest.mark.bpf]

BENCH = Path(__file__).resolve().parents[2] / "bench"
ARRIVAL_TIMEOUT = 30.0
HALF_OPEN = 10_000
HEALTHZ_LIMIT_MS = 100.0
BURST_RATE, BURST_SECONDS = 4_000, 2.5     # open+close of /dev/kvm: two transitions each
IDLE_CLIENTS = 200

# Holds COUNT connections to PORT that never send a byte; prints how many it opened,
# then how many the service has closed when its stdin says "count"; ends at EOF.
HALF_OPEN_ATTACK = """
import resource, select, socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for _ in range(count):
    held.append(socket.create_connection(("127.0.0.1", port)))
print(len(held), flush=True)
for line in sys.stdin:
    poller = select.poll()
    for connection in held:
        poller.register(connection, select.POLLIN | select.POLLHUP)
    print(len(poller.poll(0)), flush=True)
"""


# Opens and closes /dev/kvm (a transition to nocr and back each time) RATE times a
# second, in slices, for SECONDS; prints the events made (an open and a close each),
# then lives until its stdin ends.
BURST = """
import os, sys, time
rate, seconds = int(sys.argv[1]), float(sys.argv[2])
pairs, began = 0, time.monotonic()
while time.monotonic() - began < seconds:
    for _ in range(64):
        os.close(os.open("/dev/kvm", os.O_RDONLY))
    pairs += 64
    time.sleep(max(0.0, began + pairs * 2 / rate - time.monotonic()))
print(pairs * 2, flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def loops(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("loops") / "syscall_loops"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(BENCH / "syscall_loops.c")],
                   check=True)
    return binary


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    running = Server("--db", str(tmp_path_factory.mktemp("serving") / "history.sqlite3"))
    try:
        yield running
    finally:
        stderr = running.stop()
        assert "Traceback" not in stderr, stderr
        assert sum("accept" in line for line in stderr.splitlines()) <= 3, stderr


class Counter:
    """A GET /events client on a thread of its own: counts the transitions of each pid and
    the lost lines, until closed."""

    def __init__(self, port: int):
        self._reply = urllib.request.urlopen(f"http://127.0.0.1:{port}/events",
                                             timeout=ARRIVAL_TIMEOUT)
        self._changed = threading.Condition()
        self.ready = False
        self.transitions: dict[int, list[str]] = {}
        self.lost: list[dict] = []
        self.ended = False
        threading.Thread(target=self._read, daemon=True).start()
        self.await_line(lambda: self.ready)

    def _read(self) -> None:
        try:
            for raw in self._reply:
                if not raw.startswith(b"data: "):
                    continue
                line = json.loads(raw[len(b"data: "):])
                with self._changed:
                    if line["kind"] == "ready":
                        self.ready = True
                    elif line["kind"] == "transition":
                        self.transitions.setdefault(line["pid"], []).append(line["state"])
                    elif line["kind"] == "lost":
                        self.lost.append(line)
                    self._changed.notify_all()
        except (OSError, ValueError, AttributeError):  # AttributeError: closed while reading
            pass
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def await_line(self, condition) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: condition() or self.ended, ARRIVAL_TIMEOUT)
            assert condition(), "the stream ended"

    def of(self, pid: int) -> list[str]:
        with self._changed:
            return list(self.transitions.get(pid, []))

    def close(self) -> None:
        self._reply.close()


def barrier(counter: Counter) -> None:
    """Returns once a process that opens /dev/kvm after the call, and closes it once its
    nocr transition came, has its cr transition in the counter's stream: every event
    before it has been applied by then."""
    marker = subprocess.Popen([sys.executable, "-c", "import os, sys; fd = os.open('/dev/kvm', "
                               "os.O_RDONLY); sys.stdin.readline(); os.close(fd); "
                               "sys.stdin.readline()"], stdin=subprocess.PIPE, text=True)
    try:
        counter.await_line(lambda: counter.of(marker.pid)[-1:] == ["nocr"])
        marker.stdin.write("close\n")
        marker.stdin.flush()
        counter.await_line(lambda: counter.of(marker.pid)[-1:] == ["cr"])
    finally:
        marker.kill()
        marker.wait()


def burst(counter: Counter) -> tuple[int, int]:
    """(events made, transitions of the burst's process the counter saw). The process
    lives until every event before the barrier is applied: what it made is counted,
    whenever it is applied."""
    loop = subprocess.Popen([sys.executable, "-c", BURST, str(BURST_RATE), str(BURST_SECONDS)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        made = int(loop.stdout.readline())
        barrier(counter)
        return made, len(counter.of(loop.pid))
    finally:
        loop.stdin.close()
        loop.wait(timeout=60)


# ---------------------------------------------------------------- the tracker short of fds


def test_an_apply_short_of_fds_is_counted_lost_then_the_table_is_re_audited():
    recorder = Recorder()
    holder = subprocess.Popen([sys.executable, "-c", "import os, sys; sys.stdin.readline(); "
                               "os.open('/dev/kvm', os.O_RDONLY); sys.stdin.readline()"],
                              stdin=subprocess.PIPE, text=True)
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    taken: list[int] = []
    try:
        with attached_tracker(recorder) as tracker:
            highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 16, limits[1]))
            while True:  # every fd below the limit taken: nothing more can be opened
                try:
                    taken.append(os.open("/dev/null", os.O_RDONLY))
                except OSError:
                    break
            holder.stdin.write("open\n")
            holder.stdin.flush()
            deadline = time.monotonic() + ARRIVAL_TIMEOUT
            while tracker.fd_losses == 0:  # the open's event could not be applied
                assert time.monotonic() < deadline, "no apply failed for lack of fds"
                time.sleep(0.05)
            assert recorder.losses == [] and tracker.table.tracked(holder.pid) is None
            for fd in taken:
                os.close(fd)
            taken.clear()
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            lost = recorder.await_loss()  # then the re-audit finds /dev/kvm open
            assert lost.count >= 1
            assert recorder.await_state(holder.pid, "nocr")
            counters = tracker.counters()
            assert counters["lost"]["out_of_fds"] >= 1 and counters["apply_errors"] == 0
            assert counters["table"]["reaudits"] >= 1
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- accept() out of fds


def test_accept_out_of_fds_is_said_once_then_counted(caplog):
    guard = ConnectionGuard()
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(guard.loop_exception_handler)
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        taken = []
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, limits[1]))
        try:
            while True:  # the holes below the limit too: accept() has no fd left
                try:
                    taken.append(os.open("/dev/null", os.O_RDONLY))
                except OSError:
                    break
            while guard.accept_errors < 3:  # asyncio retries accept() every second
                await asyncio.sleep(0.1)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            for fd in taken:
                os.close(fd)
            for client in clients:
                client.close()
            server.close()

    with caplog.at_level(logging.WARNING, logger="crwatch.connections"):
        asyncio.run(scenario())
    said = [record for record in caplog.records if "accept" in record.getMessage()]
    assert guard.accept_errors >= 3
    assert len(said) == 1 and "Too many open files" in said[0].getMessage()
    assert not any(record.exc_info for record in caplog.records)


# ---------------------------------------------------------------- half-open connections


def test_ten_thousand_half_open_connections_leave_the_service_answering(server):
    service = server.process.pid
    baseline = len(os.listdir(f"/proc/{service}/fd"))
    attacker = subprocess.Popen([sys.executable, "-c", HALF_OPEN_ATTACK, str(server.port),
                                 str(HALF_OPEN)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
    try:
        assert int(attacker.stdout.readline()) == HALF_OPEN  # the kernel took them all
        latencies, statuses = [], []
        for _ in range(11):
            began = time.perf_counter()
            status, _ = server.get("/healthz")
            latencies.append((time.perf_counter() - began) * 1000)
            statuses.append(status)
        assert set(statuses) == {200}
        assert statistics.median(latencies) < HEALTHZ_LIMIT_MS, latencies
        status = server.ok("/healthz")["connections"]
        during = len(os.listdir(f"/proc/{service}/fd"))
        assert status["open"] <= status["limit"] < HALF_OPEN
        assert during <= baseline + status["limit"] + 16
        assert status["evicted"] + status["refused"] >= HALF_OPEN - status["limit"]
        attacker.stdin.write("count\n")
        attacker.stdin.flush()
        closed = int(attacker.stdout.readline())  # by the service: EOF on the attacker's end
        assert closed >= HALF_OPEN - status["limit"]
    finally:
        attacker.stdin.close()
        attacker.wait(timeout=60)
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while len(os.listdir(f"/proc/{service}/fd")) > baseline + 16:
        assert time.monotonic() < deadline, "the service kept the attack's fds"
        time.sleep(0.1)
    samples = metrics(server)
    assert samples['crwatch_connections_closed_total{why="evicted"}'] > 0
    assert samples["crwatch_fd_limit"] == status["fd_limit"]


# ---------------------------------------------------------------- event streams


def test_idle_event_clients_do_not_cost_the_tracker_its_transitions(server):
    counter = Counter(server.port)
    try:
        calm_made, calm = burst(counter)
        clients = subprocess.Popen([sys.executable, "-c", EVENT_CLIENTS, str(server.port),
                                    str(IDLE_CLIENTS)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert clients.stdout.readline().strip() == "connected"
            deadline = time.monotonic() + ARRIVAL_TIMEOUT
            while server.ok("/healthz")["connections"]["event_streams"] < IDLE_CLIENTS + 1:
                assert time.monotonic() < deadline, "the event clients never connected"
                time.sleep(0.05)
            # their 200 connects are probe events too (about 15 ms each to apply): the
            # burst comes once they are applied, when the clients are idle
            barrier(counter)
            loaded_made, loaded = burst(counter)
            clients.stdin.write("0\n")
            clients.stdin.flush()
            still_open, lost_lines, _ = map(int, clients.stdout.readline().split())
        finally:
            clients.kill()
            clients.wait()
    finally:
        counter.close()
    # (nearly) every open and close of /dev/kvm is a transition, with the clients as
    # without: a pair the applier takes in one batch is skipped whole
    assert calm >= 0.95 * calm_made, (calm, calm_made)
    assert abs(loaded / loaded_made - calm / calm_made) <= 0.01, (calm, calm_made, loaded,
                                                                  loaded_made)
    assert counter.lost == [] and (still_open, lost_lines) == (IDLE_CLIENTS, 0)


def test_a_client_that_reads_nothing_is_cut_off_while_the_others_get_every_line(server, loops):
    counter = Counter(server.port)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few lines
    slow.connect(("127.0.0.1", server.port))
    slow.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    slow.settimeout(ARRIVAL_TIMEOUT)
    received = slow.recv(4096)  # the head and the ready line; then it reads nothing
    cut_off = server.ok("/healthz")["connections"]["event_clients_cut_off"]
    burst = subprocess.Popen([str(loops), "events", str(BURST_RATE), "30", "reopen"],
                             stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while server.ok("/healthz")["connections"]["event_clients_cut_off"] == cut_off:
            assert time.monotonic() < deadline, "the client that reads nothing was not cut off"
            time.sleep(0.1)
        seen = len(counter.of(burst.pid))  # the tracker and the reading client go on
        counter.await_line(lambda: len(counter.of(burst.pid)) >= seen + 1000)
    finally:
        burst.kill()
        burst.wait()
        counter.close()
    while not received.endswith(b"\r\n0\r\n\r\n"):  # the stream's last chunk
        chunk = slow.recv(1 << 20)
        assert chunk, "the connection closed before the stream's end"
        received += chunk
    slow.close()
    lines = [json.loads(line[len(b"data: "):]) for line in received.split(b"\n")
             if line.startswith(b"data: ")]
    assert lines[0]["kind"] == "ready" and lines[-1]["kind"] == "lost"
    assert lines[-1]["where"] == "client" and lines[-1]["count"] > 0
    assert [line for line in counter.lost if line.get("where") == "client"] == []
