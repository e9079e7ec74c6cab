"""ConnectionGuard in a real uvicorn server (api/service/connections.py): the cap, the request
deadline and the write deadline, over real sockets, with the limits made small so that
each attack takes a fraction of a second. The real `crwatch serve` under 10,000
half-open connections is in tests/service/test_serving.py."""
from __future__ import annotations

import socket
import threading
import time
from typing import Iterator

import pytest
import uvicorn

from api.service import connections
from api.service.connections import ConnectionGuard, guarded_protocol

pytestmark = [pytest.mark.bpf]

CAP = 8
DEADLINE = 0.5
ANSWER_TIMEOUT = 10.0
BIG = b"x" * (32 << 20)  # more than any socket buffers hold: the write stays paused


async def app(scope, receive, send) -> None:
    """/big: 32 MiB; /wait: nothing until the client goes; anything else: "ok"."""
    if scope["path"] == "/wait":
        await receive()  # the request
        await receive()  # the disconnect
        return
    body = BIG if scope["path"] == "/big" else b"ok"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Running:
    def __init__(self, guard: ConnectionGuard):
        self.guard = guard
        listener = socket.create_server(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(
            app, http=guarded_protocol(guard), lifespan="off", log_level="warning",
            timeout_keep_alive=connections.IDLE_SECONDS))
        self._thread = threading.Thread(target=self._server.run, args=([listener],), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while not self._server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def get(self, path: str = "/") -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=ANSWER_TIMEOUT) as client:
            client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"Connection: close\r\n\r\n".encode())
            answer = b""
            while chunk := client.recv(1 << 16):
                answer += chunk
            return answer

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(ANSWER_TIMEOUT)


@pytest.fixture
def running(monkeypatch) -> Iterator[Running]:
    monkeypatch.setattr(connections, "REQUEST_SECONDS", DEADLINE)
    monkeypatch.setattr(connections, "STALL_SECONDS", DEADLINE)
    guard = ConnectionGuard()
    guard.cap = CAP
    server = Running(guard)
    try:
        yield server
    finally:
        server.stop()


def _closed_by_the_server(client: socket.socket) -> bool:
    client.settimeout(ANSWER_TIMEOUT)
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


def test_silent_connections_beyond_the_cap_make_room_for_a_real_request(running):
    silent = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(CAP * 4)]
    try:
        assert running.get().endswith(b"ok")
        # the oldest silent ones were closed to make room, and the cap held
        assert all(_closed_by_the_server(client) for client in silent[:CAP * 3])
        assert running.guard.evicted >= CAP * 3 and running.guard.open <= CAP
    finally:
        for client in silent:
            client.close()


def test_when_every_connection_is_busy_a_new_one_is_closed_at_once(running):
    readers = []
    try:
        for _ in range(CAP):  # each waits for its answer: busy, not between requests
            client = socket.create_connection(("127.0.0.1", running.port))
            client.sendall(b"GET /wait HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            readers.append(client)
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while running.guard.open < CAP or running.guard.between_requests:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        extra = socket.create_connection(("127.0.0.1", running.port))
        assert _closed_by_the_server(extra) and running.guard.refused >= 1
        extra.close()
    finally:
        for client in readers:
            client.close()


def test_a_request_not_finished_in_time_is_closed(running):
    with socket.create_connection(("127.0.0.1", running.port)) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the head never ends
        began = time.monotonic()
        assert _closed_by_the_server(client)
        assert DEADLINE * 0.8 <= time.monotonic() - began < DEADLINE + 5
    assert running.guard.timed_out == 1 and running.guard.open == 0


def test_a_connection_kept_alive_gets_a_new_deadline_for_its_next_request(running):
    with socket.create_connection(("127.0.0.1", running.port)) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        client.settimeout(ANSWER_TIMEOUT)
        answer = b""
        while not answer.endswith(b"ok"):
            answer += client.recv(1 << 16)
        client.sendall(b"GET / HTTP/1.1\r\n")  # a second request that never ends
        assert _closed_by_the_server(client)
    assert running.guard.timed_out == 1


def test_requests_sent_together_on_one_connection_are_each_answered(running):
    with socket.create_connection(("127.0.0.1", running.port), timeout=ANSWER_TIMEOUT) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                       b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := client.recv(1 << 16):
            answer += chunk
    assert answer.count(b"HTTP/1.1 200") == 2
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while running.guard.open:  # the server's side of the close is seen on its loop
        assert time.monotonic() < deadline, "the connection stayed open"
        time.sleep(0.01)
    assert running.guard.timed_out == 0


def test_a_peer_that_reads_nothing_of_a_response_is_cut_off(running):
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", running.port))
        client.sendall(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while running.guard.stalled == 0:
            assert time.monotonic() < deadline, "the stalled response was never cut off"
            time.sleep(0.05)
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while running.guard.open:
        assert time.monotonic() < deadline
        time.sleep(0.01)
