"""EventHub: fan-out to clients, ready first, loss counted per client, clean end."""
from __future__ import annotations

import asyncio
import json

from api import event_hub
from api.event_hub import EventHub


class Notice:
    def __init__(self, kind: str, number: int = 0):
        self.line = {"kind": kind, "number": number}

    def to_json(self) -> dict:
        return self.line


async def _lines(stream, count: int) -> list[dict]:
    lines = []
    while len(lines) < count:
        text = await stream.__anext__()
        if text.startswith("data: "):
            lines.append(json.loads(text[len("data: "):]))
    return lines


def test_a_slow_client_gets_a_lost_line_with_the_count_then_the_rest(monkeypatch):
    monkeypatch.setattr(event_hub, "CLIENT_QUEUE", 4)

    async def scenario():
        hub = EventHub()
        hub.publish(Notice("ready"))
        stream = hub.stream()
        assert (await _lines(stream, 1))[0]["kind"] == "ready"
        for number in range(7):  # 4 fit, 3 are dropped
            hub.publish(Notice("transition", number))
        await asyncio.sleep(0)  # let the loop run the scheduled offers
        first = await _lines(stream, 4)
        hub.publish(Notice("transition", 99))
        await asyncio.sleep(0)
        after = await _lines(stream, 2)
        hub.close()
        await asyncio.sleep(0)
        ended = [text async for text in stream]
        return first, after, ended, hub.clients()

    first, after, ended, clients = asyncio.run(scenario())
    assert [line["number"] for line in first] == [0, 1, 2, 3]
    assert after[0]["kind"] == "lost" and after[0]["count"] == 3 and after[0]["where"] == "client"
    assert after[1]["number"] == 99
    assert ended == [] and clients == 0

