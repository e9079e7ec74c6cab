"""The service's connections: bounded, with deadlines, so that no local user can take its fds.

uvicorn closes a connection that stays idle after a response (`timeout_keep_alive`),
but not one that never sends a request, nor one whose peer stops reading a
response; its `limit_concurrency` answers 503 only once a request has come, after
the connection's fd is taken. ConnectionGuard adds, in a subclass of uvicorn's
httptools protocol (guarded_protocol(); httptools parses a request in C, where h11
takes a tenth of a millisecond of Python per request):

- a cap on open connections (MAX_CONNECTIONS, /events streams included, lowered to
  fit the fd limit): beyond it the oldest connection that is between requests is
  closed to make room, so that a flood of silent connections cannot keep a real
  request out; when every connection is busy with a request, the new one is
  closed at once;
- a request deadline: a connection must send a whole request (head and body)
  within REQUEST_SECONDS of being opened or of its previous response;
- a write deadline: a peer that reads nothing of a response for STALL_SECONDS
  (the connection's write buffer stays full) is cut off;
- accept() failures (out of fds) said once, then counted, with a line at most every
  REPEAT_SECONDS while they go on (loop_exception_handler);
- the soft RLIMIT_NOFILE raised to the hard limit at start (raise_fd_limit).

It also says who is at the other end of a unix socket connection: the credentials
the kernel recorded at connect() (api.service.peer.unix_peer), in every request's
scope["state"] under UNIX_PEER (request.state.unix_peer), as uvicorn says nothing
of a unix client.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
import time
from collections import OrderedDict

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.service.peer import unix_peer

MAX_CONNECTIONS = 1024
# fds kept for everything but connections: /proc reads of audits and of the tracker,
# the history database, the probes' buffers, CRIU runs of gates.
FD_RESERVE = 512
REQUEST_SECONDS = 10.0
IDLE_SECONDS = 5       # uvicorn's keep-alive timeout, between requests
STALL_SECONDS = 30.0
REPEAT_SECONDS = 60.0
UNIX_PEER = "unix_peer"
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

log = logging.getLogger("crwatch.connections")


class ConnectionGuard:
    """What the service's connections may take, and what was refused (one per app)."""

    def __init__(self):
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.cap = _cap(self.fd_limit)
        self.open = 0
        self.refused = 0           # closed at once: every connection was busy
        self.evicted = 0           # closed between requests to make room for a new one
        self.timed_out = 0         # no whole request within REQUEST_SECONDS
        self.stalled = 0           # read nothing of a response for STALL_SECONDS
        self.accept_errors = 0
        self._accept_failing_since: float | None = None
        self._accept_said = 0.0
        # Connections between requests (waiting for one), oldest first: the ones closed
        # to make room.
        self._waiting: OrderedDict[GuardedHttpProtocol, None] = OrderedDict()

    def raise_fd_limit(self) -> None:
        """The soft fd limit up to the hard one (what an unprivileged process may), and
        the connection cap fitted to it."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        most = _nr_open() if hard == resource.RLIM_INFINITY else hard
        if soft != resource.RLIM_INFINITY and soft < most:
            resource.setrlimit(resource.RLIMIT_NOFILE, (most, hard))
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.cap = _cap(self.fd_limit)
        if self.cap < MAX_CONNECTIONS:
            log.warning("crwatch: the fd limit is %d: at most %d connections at once",
                        self.fd_limit, self.cap)

    def status(self) -> dict:
        return {"open": self.open, "limit": self.cap, "fd_limit": self.fd_limit,
                "fds_open": _fds_open(), "refused": self.refused, "evicted": self.evicted,
                "timed_out": self.timed_out, "stalled": self.stalled,
                "accept_errors": self.accept_errors}

    @property
    def between_requests(self) -> int:
        """Open connections waiting for a request (those that can make room)."""
        return len(self._waiting)

    # ------------------------------------------------------------ for the protocol

    def admit(self, connection: GuardedHttpProtocol) -> bool:
        """May this new connection stay? Makes room by closing the oldest connection
        between requests when the cap is reached."""
        if self.open >= self.cap:
            if not self._waiting:
                self.refused += 1
                return False
            oldest, _ = self._waiting.popitem(last=False)
            self.evicted += 1
            oldest.transport.abort()
        self.open += 1
        self.accepted()
        return True

    def waiting(self, connection: GuardedHttpProtocol) -> None:
        self._waiting[connection] = None

    def busy(self, connection: GuardedHttpProtocol) -> None:
        self._waiting.pop(connection, None)

    def closed(self, connection: GuardedHttpProtocol) -> None:
        self._waiting.pop(connection, None)
        self.open -= 1

    # ------------------------------------------------------------ accept errors

    def loop_exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """The event loop's handler: accept() out of fds is said once, then every
        REPEAT_SECONDS while it goes on; anything else goes to the default handler."""
        error = context.get("exception")
        if not (isinstance(error, OSError) and error.errno in _OUT_OF_RESOURCES
                and "accept" in context.get("message", "")):
            loop.default_exception_handler(context)
            return
        self.accept_errors += 1
        now = time.monotonic()
        if self._accept_failing_since is None:
            self._accept_failing_since = self._accept_said = now
            log.error("crwatch: cannot accept connections: %s (fd limit %d, %d connections "
                      "open); retrying every second", os.strerror(error.errno), self.fd_limit,
                      self.open)
        elif now - self._accept_said >= REPEAT_SECONDS:
            self._accept_said = now
            log.error("crwatch: still cannot accept connections: %s (%d failures in %.0f s)",
                      os.strerror(error.errno), self.accept_errors,
                      now - self._accept_failing_since)

    def accepted(self) -> None:
        if self._accept_failing_since is not None:
            log.warning("crwatch: accepting connections again after %d failures",
                        self.accept_errors)
            self._accept_failing_since = None


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guard's cap and deadlines."""

    guard: ConnectionGuard

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._admitted = self.guard.admit(self)
        self._deadline: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None
        # whole requests received and responses completed: the peer is to send (the rest
        # of) a request unless more came than were answered (pipelined requests)
        self._received = self._answered = 0
        if not self._admitted:
            transport.abort()
            return
        super().connection_made(transport)
        connection = transport.get_extra_info("socket")
        if connection is not None and connection.family == socket.AF_UNIX:
            # the scope's state is copied from this for each request of the connection
            self.app_state = {**self.app_state, UNIX_PEER: unix_peer(connection)}
        self._await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._cancel_timers()
        self.guard.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline is not None and not self._requesting():
            self._deadline.cancel()
            self._deadline = None
            self.guard.busy(self)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._received += 1

    def on_response_complete(self) -> None:
        self._answered += 1
        super().on_response_complete()
        if not self.transport.is_closing() and self._requesting():
            self._await_request()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._stall = self.loop.call_later(STALL_SECONDS, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    # ------------------------------------------------------------ inside

    def _requesting(self) -> bool:
        """Is the peer still to send (the rest of) a request?"""
        return self._received <= self._answered

    def _await_request(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(REQUEST_SECONDS, self._request_late)
        self.guard.waiting(self)

    def _request_late(self) -> None:
        self._deadline = None
        if self._requesting() and not self.transport.is_closing():
            self.guard.timed_out += 1
            self.transport.abort()

    def _stalled(self) -> None:
        self._stall = None
        self.guard.stalled += 1
        self.transport.abort()

    def _cancel_timers(self) -> None:
        for timer in (self._deadline, self._stall):
            if timer is not None:
                timer.cancel()
        self._deadline = self._stall = None


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedHttpProtocol]:
    """The protocol class for uvicorn's `http=`, bound to this guard."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"guard": guard})


def _cap(fd_limit: int) -> int:
    return max(16, min(MAX_CONNECTIONS, fd_limit - FD_RESERVE))


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return 1 << 20


def _fds_open() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1
