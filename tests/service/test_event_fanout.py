"""The EventHub behind a real uvicorn (guarded protocol) with 200 real `/events` clients in
another process: the publishing thread, which stands for the tracker's applier (a fixed
amount of work per notice, then publish()), keeps its pace, and every client gets every
line. The same with the real tracker and probes is in tests/service/test_serving.py."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from api.service.connections import ConnectionGuard, guarded_protocol
from api.service.event_hub import EventHub
from bench.serving_bench import Notice
from tests.support.servers import EVENT_CLIENTS

pytestmark = [pytest.mark.bpf]

CLIENTS = 200
NOTICES = 3_000
WORK_SECONDS = 0.0002     # what an apply costs the applier, about
START_TIMEOUT = 10.0


def _apply_and_publish(hub: EventHub) -> float:
    """Seconds the 'applier' takes for NOTICES notices."""
    began = time.perf_counter()
    for number in range(NOTICES):
        until = time.perf_counter() + WORK_SECONDS
        while time.perf_counter() < until:
            pass
        hub.publish(Notice(number))
    return time.perf_counter() - began


def test_two_hundred_event_clients_leave_the_applier_its_pace():
    hub = EventHub()
    app = FastAPI()

    @app.get("/events")
    async def events() -> StreamingResponse:
        return StreamingResponse(hub.open(), media_type="text/event-stream")

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, http=guarded_protocol(ConnectionGuard()),
                                           lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, args=([listener],), daemon=True)
    thread.start()
    clients = None
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        alone = _apply_and_publish(hub)
        clients = subprocess.Popen([sys.executable, "-c", EVENT_CLIENTS, str(port), str(CLIENTS)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert clients.stdout.readline().strip() == "connected"
        while hub.clients() < CLIENTS:
            assert time.monotonic() < deadline + START_TIMEOUT, hub.clients()
            time.sleep(0.01)
        watched = _apply_and_publish(hub)
        clients.stdin.write(f"{NOTICES}\n")
        clients.stdin.flush()
        still_open, lost_lines, fewest = map(int, clients.stdout.readline().split())
    finally:
        if clients is not None:
            clients.kill()
            clients.wait()
        hub.close()
        server.should_exit = True
        thread.join(START_TIMEOUT)
    # Before the ring, each notice cost the applier one wake-up and one encoding per
    # client: with 200 clients it took about 5 times as long.
    assert watched < 2 * alone, (alone, watched)
    assert (still_open, lost_lines, hub.cut_off) == (CLIENTS, 0, 0)
    assert fewest >= NOTICES  # every client got every line
