"""The tracker's notices, fanned out to every `GET /events` client.

The tracker calls publish() on its applier thread; each client has a bounded
asyncio queue on the event loop. A client too slow to keep up loses lines,
never silently: it gets a `lost` line with the count once it has room again.
The `ready` notice is kept and sent first to every client, as `crwatch watch` does.
Each client gets a line as its caller may see it (api.privacy), worked out once
per line for all the clients of that view.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import AsyncIterator

from api.privacy import NoticeView, Viewer
from tracker.live_model import SCHEMA, iso_from_wall_ns

CLIENT_QUEUE = 10_000
KEEPALIVE_SECONDS = 15.0
_END = object()


class _Client:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue(CLIENT_QUEUE)
        self.dropped = 0

    def offer(self, line) -> None:
        """On the event loop: queue the line, or count it dropped."""
        if self.dropped and line is not _END and self.queue.qsize() < CLIENT_QUEUE - 1:
            self.queue.put_nowait(_lost_line(self.dropped))
            self.dropped = 0
        try:
            self.queue.put_nowait(line)
        except asyncio.QueueFull:
            if line is _END:
                self.queue.get_nowait()
                self.queue.put_nowait(_END)
            else:
                self.dropped += 1


class EventHub:
    def __init__(self):
        self._clients: set[_Client] = set()
        self._lock = threading.Lock()
        self._ready: dict | None = None
        self._view = NoticeView()
        self.closed = False

    def publish(self, notice) -> None:
        """Called by the tracker, on its applier thread, for every notice."""
        line = notice.to_json()
        with self._lock:
            if line["kind"] == "ready":
                self._ready = line
            clients = list(self._clients)
        for client in clients:
            client.loop.call_soon_threadsafe(client.offer, line)

    def close(self) -> None:
        """End every stream (the service is stopping)."""
        with self._lock:
            self.closed = True
            clients = list(self._clients)
        for client in clients:
            client.loop.call_soon_threadsafe(client.offer, _END)

    async def stream(self, viewer: Viewer = Viewer(None, everything=True)) -> AsyncIterator[str]:
        """Server-sent events: one `data:` line per notice, a comment now and then, each
        as `viewer` may see it (api.privacy)."""
        def shown(line: dict) -> dict:
            return self._view.shown(line, viewer)
        client = _Client(asyncio.get_running_loop())
        with self._lock:
            if self.closed:
                return
            self._clients.add(client)
            ready = self._ready
        try:
            if ready is not None:
                yield _sse(shown(ready))
            while True:
                try:
                    line = await asyncio.wait_for(client.queue.get(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    yield ": keepalive\n\n"  # also finds out that a client has gone
                    continue
                if line is _END:
                    return
                yield _sse(shown(line))
        finally:
            with self._lock:
                self._clients.discard(client)

    def clients(self) -> int:
        with self._lock:
            return len(self._clients)


def _sse(line: dict) -> str:
    return f"data: {json.dumps(line)}\n\n"


def _lost_line(count: int) -> dict:
    return {"schema": SCHEMA, "kind": "lost", "count": count, "where": "client",
            "ts": iso_from_wall_ns(time.time_ns())}
