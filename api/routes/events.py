"""/events: the tracker's transitions as server-sent events."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

router = APIRouter(tags=["events"])


@router.get("/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "crwatch.event/1 lines: ready, transition, lost"}})
async def events(request: Request) -> StreamingResponse:
    """One `data:` line per notice: `ready` first, then `transition` and `lost` lines
    (the same lines as `crwatch watch`)."""
    return StreamingResponse(request.app.state.service.events.stream(request.state.redact),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
