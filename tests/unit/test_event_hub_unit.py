"""EventHub: fan-out to clients, ready first, one encoding per notice, a client too far
behind cut off with a `lost` line, a bounded number of streams, clean end."""
from __future__ import annotations

import asyncio
import json

import pytest

from api.service import event_hub
from api.service.event_hub import EventHub, TooManyStreams
from api.service.privacy import Viewer


class Notice:
    def __init__(self, kind: str, number: int = 0, path: str = "/root/secret"):
        self.line = {"kind": kind, "number": number, "message": f"{path} is open"}

    def to_json(self) -> dict:
        return self.line


async def _lines(stream, count: int) -> list[dict]:
    lines = []
    while len(lines) < count:
        text = await stream.__anext__()
        lines += [json.loads(part[len("data: "):]) for part in text.split("\n\n")
                  if part.startswith("data: ")]
    return lines


def test_every_client_gets_every_line_after_ready():
    async def scenario():
        hub = EventHub()
        hub.publish(Notice("ready"))
        streams = [hub.open() for _ in range(3)]
        for stream in streams:
            assert (await _lines(stream, 1))[0]["kind"] == "ready"
        for number in range(5):
            hub.publish(Notice("transition", number))
        got = [await _lines(stream, 5) for stream in streams]
        hub.close()
        ended = [[text async for text in stream] for stream in streams]
        return got, ended, hub.clients()

    got, ended, clients = asyncio.run(scenario())
    assert [[line["number"] for line in lines] for lines in got] == [[0, 1, 2, 3, 4]] * 3
    assert ended == [[], [], []] and clients == 0


def test_a_notice_is_encoded_once_per_variant_whatever_the_clients(monkeypatch):
    """Forty clients, half of them of a uid that may not see the process: two encodings,
    the full one and the redacted one (api.service.privacy)."""
    encoded = []
    real = event_hub._sse
    monkeypatch.setattr(event_hub, "_sse", lambda line: encoded.append(line) or real(line))
    secret = {"code": "lock.flock", "severity": "option", "message": "fd 3: /root/secret is "
              "locked", "remedy": "unlock /root/secret", "pid": 1, "fd": 3}

    class Transition(Notice):
        def __init__(self):
            # pid 1 with a start time it never had: no caller but root may see it
            self.line = {"kind": "transition", "pid": 1, "start_time": -1.0,
                         "reasons": [secret]}

    async def scenario():
        hub = EventHub()
        hub.publish(Notice("ready"))
        plain = [hub.open() for _ in range(20)]
        hidden = [hub.open(Viewer(65534)) for _ in range(20)]
        for stream in plain + hidden:
            await _lines(stream, 1)
        encoded.clear()
        hub.publish(Transition())
        return ([(await _lines(stream, 1))[0] for stream in plain],
                [(await _lines(stream, 1))[0] for stream in hidden])

    plain, hidden = asyncio.run(scenario())
    assert len(encoded) == 2  # one plain, one redacted, for 40 clients
    assert {line["reasons"][0]["message"] for line in plain} == {secret["message"]}
    assert not any("secret" in json.dumps(line) for line in hidden)
    assert {line["reasons"][0]["code"] for line in hidden} == {"lock.flock"}


def test_a_client_too_far_behind_is_cut_off_with_a_lost_line(monkeypatch):
    monkeypatch.setattr(event_hub, "CLIENT_BACKLOG", 4)

    async def scenario():
        hub = EventHub()
        hub.publish(Notice("ready"))
        slow, quick = hub.open(), hub.open()
        for stream in (slow, quick):
            await _lines(stream, 1)
        got = []
        for number in range(10):  # the quick client reads as they come, the slow one never
            hub.publish(Notice("transition", number))
            got += await _lines(quick, 1)
        await asyncio.sleep(0)  # the loop runs the last wake-up
        slow_lines = [json.loads(text[len("data: "):]) async for text in slow]
        return got, slow_lines, hub.cut_off, hub.clients()

    got, slow_lines, cut_off, clients = asyncio.run(scenario())
    assert [line["number"] for line in got] == list(range(10))
    assert len(slow_lines) == 1 and slow_lines[0]["kind"] == "lost"
    assert slow_lines[0]["where"] == "client" and slow_lines[0]["count"] >= 4
    assert cut_off == 1 and clients == 1


def test_streams_beyond_the_allowance_are_refused(monkeypatch):
    monkeypatch.setattr(event_hub, "MAX_STREAMS", 2)

    async def scenario():
        hub = EventHub()
        hub.publish(Notice("ready"))
        streams = [hub.open(), hub.open()]
        for stream in streams:
            await _lines(stream, 1)
        with pytest.raises(TooManyStreams):
            hub.open()
        await streams[0].aclose()  # a stream that ends makes room
        again = hub.open()
        return (await _lines(again, 1))[0]["kind"], hub.refused

    assert asyncio.run(scenario()) == ("ready", 1)
