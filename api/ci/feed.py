"""The transitions of every process, for `crwatch run` and the pytest plugin.

A feed reads crwatch.event/1 lines from a running service (`GET /events`) or,
when none answers, from a `crwatch watch` of its own. `barrier()` returns once
every event the kernel recorded before the call has been applied and its
line handed on: a helper process connects a TCP socket (a state the probes
mark) and closes it, and the feed waits for both transitions.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

from api.service.settings import service_url

READY_TIMEOUT_S = 120.0     # compiling the probes on a slow, loaded runner
BARRIER_TIMEOUT_S = 30.0
CRWATCH = Path(sys.executable).with_name("crwatch")

# Connects to the listener whose port it is given for each byte it reads, and closes
# the connection at the next byte.
BARRIER_HELPER = """
import os, socket, sys
port = int(sys.argv[1])
while True:
    if not os.read(0, 1):
        break
    connection = socket.create_connection(("127.0.0.1", port))
    os.write(1, b"c")
    if not os.read(0, 1):
        break
    connection.close()
    os.write(1, b"d")
"""


class FeedError(Exception):
    """The feed cannot start (no probes, no service, a refusal)."""


class Feed:
    """Reads lines on a thread of its own and hands each to `on_line` as it comes, so
    that whoever records them can still look at the process a line is about."""

    source = ""

    def __init__(self, on_line: Callable[[dict], None]):
        self._on_line = on_line
        self._helper: subprocess.Popen | None = None
        self._listener: socket.socket | None = None
        self._changed = threading.Condition()
        self._helper_states: list[str] = []
        self._ended: str | None = None
        self.ready: dict = {}
        self.own_pids: set[int] = set()   # the feed's processes: never part of a watched tree
        # "ip:port" of the feed's own TCP ends: a child forked by this process holds them
        # until its exec closes them (they are close-on-exec), and is marked for it.
        self.own_addresses: set[str] = set()

    def start(self) -> Feed:
        self._open()
        threading.Thread(target=self._pump, name="crwatch-feed", daemon=True).start()
        with self._changed:
            if not self._changed.wait_for(lambda: self.ready or self._ended, READY_TIMEOUT_S):
                raise FeedError(f"{self.source}: the probes were not attached in time")
        if self._ended and not self.ready:
            raise FeedError(self._ended)
        if self.ready.get("kind") != "ready":
            raise FeedError(f"unexpected first line from {self.source}: {self.ready}")
        if self.ready.get("degraded"):
            raise FeedError(f"{self.source} runs without probes: {self.ready['degraded']}")
        self._start_barrier_helper()
        return self

    def barrier(self) -> None:
        """Returns once the helper's TCP connection has come and gone in the feed: by then
        the tracker has applied every event recorded before the call, and `on_line` has
        been given its line."""
        helper = self._helper
        for command, state in ((b"+", "nocr"), (b"-", "cr")):
            with self._changed:
                seen = len(self._helper_states)
            helper.stdin.write(command)
            helper.stdin.flush()
            helper.stdout.read(1)
            if state == "nocr":
                self._listener.accept()[0].close()
            with self._changed:
                if not self._changed.wait_for(
                        lambda state=state, seen=seen: (state in self._helper_states[seen:]
                                                        or self._ended),
                        BARRIER_TIMEOUT_S):
                    raise FeedError(f"{self.source}: the barrier's transition never came")
                if self._ended:
                    raise FeedError(self._ended)

    def close(self) -> None:
        if self._helper is not None:
            self._helper.stdin.close()
            self._helper.wait(timeout=10)
        if self._listener is not None:
            self._listener.close()
        self._close()

    # ------------------------------------------------------------ for the subclasses

    def _open(self) -> None:
        raise NotImplementedError

    def _read_lines(self) -> Iterator[dict]:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _end_reason(self) -> str:
        return f"{self.source} ended"

    # ------------------------------------------------------------ inside

    def _pump(self) -> None:
        try:
            for line in self._read_lines():
                if not self.ready:
                    with self._changed:
                        self.ready = line
                        self._changed.notify_all()
                    continue
                self._on_line(line)
                helper = self._helper
                if (helper is not None and line.get("kind") == "transition"
                        and line.get("pid") == helper.pid):
                    with self._changed:
                        self._helper_states.append(line["state"])
                        self._changed.notify_all()
        except Exception:
            pass
        with self._changed:
            self._ended = self._end_reason()
            self._changed.notify_all()

    def _start_barrier_helper(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.own_addresses.add("127.0.0.1:%d" % self._listener.getsockname()[1])
        self._helper = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", BARRIER_HELPER,
             str(self._listener.getsockname()[1])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.own_pids.add(self._helper.pid)


class WatchFeed(Feed):
    """A `crwatch watch` of its own (needs root)."""

    def __init__(self, on_line: Callable[[dict], None], profile_name: str):
        super().__init__(on_line)
        self.source = "crwatch watch"
        self._profile_name = profile_name
        self._watch: subprocess.Popen | None = None

    def _open(self) -> None:
        self._watch = subprocess.Popen([str(CRWATCH), "watch", "--profile", self._profile_name],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
        self.own_pids.add(self._watch.pid)

    def _read_lines(self) -> Iterator[dict]:
        for raw in self._watch.stdout:
            yield json.loads(raw)

    def _end_reason(self) -> str:
        problem = self._watch.stderr.read().decode(errors="replace").strip()
        return problem.splitlines()[-1] if problem else "crwatch watch ended"

    def _close(self) -> None:
        if self._watch is not None and self._watch.poll() is None:
            self._watch.terminate()
            try:
                self._watch.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._watch.kill()
                self._watch.wait()


class ServiceFeed(Feed):
    """The `/events` stream of a running crwatch service."""

    def __init__(self, on_line: Callable[[dict], None], base_url: str, token: str | None):
        super().__init__(on_line)
        self.source = f"the service at {base_url}"
        self._address = urllib.parse.urlsplit(base_url)
        self._token = token
        self._connection: http.client.HTTPConnection | None = None
        self._reply: http.client.HTTPResponse | None = None

    def _open(self) -> None:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        self._connection = http.client.HTTPConnection(
            self._address.hostname, self._address.port or 80, timeout=READY_TIMEOUT_S)
        try:
            self._connection.request("GET", f"{self._address.path.rstrip('/')}/events",
                                     headers=headers)
            self._reply = self._connection.getresponse()
        except OSError as error:
            raise FeedError(f"{self.source} does not answer: {error}") from None
        if self._reply.status != 200:
            raise FeedError(f"{self.source} refused its events ({self._reply.status}): "
                            f"{self._reply.read(300).decode(errors='replace')}")
        self._connection.sock.settimeout(None)  # events may be far apart
        host, port = self._connection.sock.getsockname()[:2]
        self.own_addresses.add(f"{host}:{port}")

    def _read_lines(self) -> Iterator[dict]:
        for raw in self._reply:
            if raw.startswith(b"data: "):
                yield json.loads(raw[len(b"data: "):])

    def _close(self) -> None:
        if self._connection is not None and self._connection.sock is not None:
            try:  # ends the read the pump is blocked in
                self._connection.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._connection.close()


def service_answers(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/healthz", timeout=2) as reply:
            return json.load(reply).get("status") == "ok"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def choose_feed(on_line: Callable[[dict], None], named_service: str | None,
                profile_name: str) -> tuple[Feed | None, str]:
    """The events of the service named or answering (its URL is returned too), else a
    `crwatch watch` of our own when root; None when neither can be had. Not started."""
    base = service_url(named_service)
    if named_service or service_answers(base):
        return ServiceFeed(on_line, base, os.environ.get("CRWATCH_TOKEN")), base
    if os.geteuid() == 0:
        return WatchFeed(on_line, profile_name), base
    return None, base
