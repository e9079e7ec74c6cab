"""A real `crwatch serve` for the tests, on a free port, and requests to it."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CRWATCH = Path(sys.executable).with_name("crwatch")
ARRIVAL_TIMEOUT = 10.0   # for a probe event to reach the service
START_TIMEOUT = 60.0      # compiling the probes and auditing every process on a slow runner


class Server:
    """`crwatch serve` with these extra arguments (its tests are marked `bpf`, or `root`
    with --no-probes). Without a --socket among them it listens on TCP only: a test's
    service never answers the `crwatch check` of another test."""

    def __init__(self, *extra: str):
        with socket.socket() as probe:  # a free port, for the server to bind
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        if not any(argument.startswith("--socket") for argument in extra):
            extra = (*extra, "--socket", "none")
        self.process = subprocess.Popen([str(CRWATCH), "serve", "--port", str(self.port), *extra],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # until it answers: the lifespan has attached the probes by then
            try:
                self.get("/healthz")
                return
            except (ConnectionError, TimeoutError, urllib.error.URLError):
                if self.process.poll() is not None:
                    pytest.fail(f"crwatch serve exited: {self.process.communicate()[1].decode()}")
                if time.monotonic() >= deadline:
                    self.process.kill()  # no service outlives a test that gave up on it
                    self.process.wait()
                    pytest.fail("crwatch serve did not start")
                time.sleep(0.05)

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def ok(self, path: str) -> dict:
        status, body = self.get(path)
        assert status == 200, (status, body)
        return body

    def stop(self) -> str:
        self.process.terminate()
        try:
            _, stderr = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()  # not left behind to load the machine
            _, stderr = self.process.communicate()
            pytest.fail(f"crwatch serve did not stop on SIGTERM: {stderr.decode()[-2000:]}")
        return stderr.decode()

    def post(self, path: str, body: dict | None = None, token: str | None = None,
             timeout: float = 120) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method="POST",
                                         data=json.dumps(body or {}).encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


class EventStream:
    """A client of GET /events: reads its `data:` lines one at a time."""

    def __init__(self, server: Server):
        self.reply = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/events",
                                            timeout=ARRIVAL_TIMEOUT)
        assert self.reply.headers["Content-Type"].startswith("text/event-stream")

    def next(self) -> dict:
        while True:
            line = self.reply.readline()
            assert line, "the stream ended"
            if line.startswith(b"data: "):
                return json.loads(line[len(b"data: "):])

    def await_transition(self, pid: int, state: str, code: str | None = None) -> dict:
        while True:
            line = self.next()
            if (line["kind"] == "transition" and line["pid"] == pid and line["state"] == state
                    and (code is None or code in [r["code"] for r in line["reasons"]])):
                return line

    def close(self) -> None:
        self.reply.close()


def metrics(server: Server) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=30) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


# COUNT clients of GET /events that read and throw away what comes. A line N on stdin:
# once every client has N lines (or after 30 s), prints how many streams are still
# open, how many `lost` lines came to all of them, and the fewest lines one of them got.
EVENT_CLIENTS = """
import selectors, socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
LINE, LOST = b"data: ", b'"kind": "lost"'
selector = selectors.DefaultSelector()
lines = {}
for _ in range(count):
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(b"GET /events HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n")
    client.setblocking(False)
    selector.register(client, selectors.EVENT_READ, bytearray())
    lines[client] = 0
selector.register(sys.stdin, selectors.EVENT_READ)
print("connected", flush=True)
open_streams, lost, wanted, until = count, 0, None, None
while True:
    if wanted is not None and (min(lines.values()) >= wanted or time.monotonic() > until):
        print(open_streams, lost, min(lines.values()), flush=True)
        sys.exit(0)
    for key, _ in selector.select(0.1):
        if key.fileobj is sys.stdin:
            wanted, until = int(sys.stdin.readline() or 0), time.monotonic() + 30
            selector.unregister(sys.stdin)
            continue
        data = key.fileobj.recv(1 << 16)
        if not data:
            selector.unregister(key.fileobj)
            open_streams -= 1
            continue
        # with the end of the last read (a match across two reads), less what it held
        tail = bytes(key.data)
        seen = tail + data
        lines[key.fileobj] += seen.count(LINE) - tail.count(LINE)
        lost += seen.count(LOST) - tail.count(LOST)
        key.data[:] = seen[-len(LOST):]
"""
