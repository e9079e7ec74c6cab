"""The tracker's notices, fanned out to every `GET /events` client.

The tracker calls publish() on its applier thread: it appends the notice to one
shared ring and, once per batch of notices, wakes the event loop; it never waits
for a client. The loop wakes the clients at most every 0.25 ms per client (50 ms
with 200 clients), so that a burst of notices costs the loop about 4,000 writes a
second whatever the number of clients, not one per client per notice: each
client reads the ring from its own cursor and writes what it has not sent yet as
one chunk; each line is encoded once (and its
redacted variant once) for all the clients, and each client gets it as its
caller may see it (api.service.privacy). A client whose backlog grows beyond
CLIENT_BACKLOG lines is cut off: its stream ends with a `lost` line (`where:
client`) saying how many it missed. The `ready` notice is kept and sent first
to every client, as `crwatch watch` does. At most MAX_STREAMS streams are open
at once (open() refuses more).
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import AsyncIterator

from api.service.privacy import LineView, Viewer
from tracker.clock import iso_from_wall_ns
from tracker.live.model import SCHEMA
from tracker.safe_text import json_text

CLIENT_BACKLOG = 10_000  # lines published but not yet handed to a client's connection
MAX_STREAMS = 256
# Between two wake-ups of the clients, this long per client: the loop's writes stay
# about 1 / WRITE_SECONDS a second, and a lone client waits next to nothing.
WRITE_SECONDS = 0.00025
KEEPALIVE_SECONDS = 15.0


class TooManyStreams(RuntimeError):
    """Every /events stream the service allows is open."""


class _Line:
    """A notice, encoded at most once per variant: as given, and redacted for the
    callers that may not see its process (api.service.privacy)."""

    __slots__ = ("line", "_view", "_full", "_redacted")

    def __init__(self, line: dict):
        self.line = line
        self._view = LineView(line)
        self._full: str | None = None
        self._redacted: str | None = None

    def text(self, viewer: Viewer) -> str:
        shown = self._view.shown(viewer)
        if shown is self.line:
            if self._full is None:
                self._full = _sse(shown)
            return self._full
        if self._redacted is None:
            self._redacted = _sse(shown)
        return self._redacted


class _Client:
    def __init__(self, cursor: int, viewer: Viewer):
        self.cursor = cursor          # sequence of the next line to send
        self.viewer = viewer
        self.wake = asyncio.Event()
        self.missed = 0               # > 0: cut off, this many lines were not sent


class EventHub:
    def __init__(self):
        self._lock = threading.Lock()
        self._ring: deque[_Line] = deque(maxlen=CLIENT_BACKLOG)
        self._next = 0                # sequence of the next line published
        self._ready: _Line | None = None
        self._clients: set[_Client] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_pending = False
        self._woken_at = 0.0          # loop.time() of the last wake-up of the clients
        self.closed = False
        self.cut_off = 0              # clients cut off for their backlog
        self.refused = 0              # streams refused beyond MAX_STREAMS

    # ------------------------------------------------------------ the applier's side

    def publish(self, notice) -> None:
        """Called by the tracker, on its applier thread, for every notice."""
        if not self._clients and self._ready is not None:
            # nobody listens (one who comes now reads from the next line on) and the
            # ready line is kept: a burst of transitions costs the applier nothing here
            return
        line = _Line(notice.to_json())
        with self._lock:
            if line.line["kind"] == "ready":
                self._ready = line
            if not self._clients:
                return
            self._ring.append(line)
            self._next += 1
            if self._wake_pending:
                return  # the loop has not run the last wake-up yet: it will see this line
            self._wake_pending = True
            loop = self._loop
        try:
            loop.call_soon_threadsafe(self._wake_soon, loop)
        except RuntimeError:  # the loop is closed: the service is stopping
            pass

    def close(self) -> None:
        """End every stream (the service is stopping)."""
        with self._lock:
            self.closed = True
            loop = self._loop if self._clients else None
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake_all)
            except RuntimeError:
                pass

    # ------------------------------------------------------------ the loop's side

    def open(self, viewer: Viewer = Viewer(None, everything=True)) -> AsyncIterator[str]:
        """A new client's stream, on the running loop; TooManyStreams beyond MAX_STREAMS.
        Each line is shown as `viewer` may see it (api.service.privacy)."""
        with self._lock:
            if len(self._clients) >= MAX_STREAMS:
                self.refused += 1
                raise TooManyStreams(f"{MAX_STREAMS} event streams are open already, the "
                                     f"most this service serves at once")
            self._loop = asyncio.get_running_loop()
        return self._stream(viewer)

    async def _stream(self, viewer: Viewer) -> AsyncIterator[str]:
        """Server-sent events: one `data:` line per notice, a comment now and then. The
        client counts from its first line on (a stream never started holds nothing)."""
        with self._lock:
            if self.closed:
                return
            client = _Client(self._next, viewer)
            self._clients.add(client)
            ready = self._ready
        try:
            if ready is not None:
                yield ready.text(client.viewer)
            while True:
                client.wake.clear()
                lines, ended = self._take(client)
                if client.missed:
                    yield _sse(_lost_line(client.missed))
                    return
                if lines:
                    yield "".join(line.text(client.viewer) for line in lines)
                    continue
                if ended:
                    return
                try:
                    await asyncio.wait_for(client.wake.wait(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    yield ": keepalive\n\n"  # also finds out that a client has gone
        finally:
            with self._lock:
                self._clients.discard(client)

    def _take(self, client: _Client) -> tuple[list[_Line], bool]:
        """The lines the client has not been sent, and whether the hub has closed. A client
        that is behind by more than the ring holds is cut off (client.missed)."""
        with self._lock:
            oldest = self._next - len(self._ring)
            if not client.missed and client.cursor < oldest:
                self._cut_off(client)
            if client.missed:
                return [], True
            lines = [self._ring[index] for index in
                     range(client.cursor - oldest, len(self._ring))]
            client.cursor = self._next
            return lines, self.closed

    def _wake_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop: wake the clients now, or once their interval since the last time
        has passed."""
        delay = self._woken_at + WRITE_SECONDS * len(self._clients) - loop.time()
        if delay > 0:
            loop.call_later(delay, self._wake_all)
        else:
            self._wake_all()

    def _wake_all(self) -> None:
        """On the loop, once per batch of notices: wake every client, and cut off those
        whose backlog is beyond CLIENT_BACKLOG (the ring is about to drop their lines)."""
        with self._lock:
            self._wake_pending = False
            if self._loop is not None:
                self._woken_at = self._loop.time()
            clients = list(self._clients)
            for client in clients:
                if not client.missed and self._next - client.cursor >= CLIENT_BACKLOG:
                    self._cut_off(client)
        for client in clients:
            client.wake.set()

    def _cut_off(self, client: _Client) -> None:
        """Under the lock: the client is behind for good; it ends with a `lost` line."""
        client.missed = self._next - client.cursor
        self.cut_off += 1
        self._clients.discard(client)

    def clients(self) -> int:
        with self._lock:
            return len(self._clients)


def _sse(line: dict) -> str:
    return f"data: {json_text(line)}\n\n"


def _lost_line(count: int) -> dict:
    return {"schema": SCHEMA, "kind": "lost", "count": count, "where": "client",
            "ts": iso_from_wall_ns(time.time_ns())}
