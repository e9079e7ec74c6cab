"""/events: the tracker's transitions as server-sent events."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from api.models import EventLine

router = APIRouter(tags=["events"])


@router.get("/events", response_class=StreamingResponse,
            responses={200: {"model": EventLine,
                             "content": {"text/event-stream": {"schema": {
                                 "$ref": "#/components/schemas/EventLine"}}},
                             "description": "one `data:` line per crwatch.event/1 document: "
                                            "ready, then transition and lost lines"}})
async def events(request: Request) -> StreamingResponse:
    """One `data:` line per notice: `ready` first, then `transition` and `lost` lines
    (the same lines as `crwatch watch`)."""
    return StreamingResponse(request.app.state.service.events.stream(request.state.viewer),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
