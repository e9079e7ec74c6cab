"""/events: the tracker's transitions as server-sent events."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.service.deps import ServiceDep, ViewerDep
from api.service.event_hub import TooManyStreams
from api.service.models import EventLine

router = APIRouter(tags=["events"])


@router.get("/events", response_class=StreamingResponse,
            responses={200: {"model": EventLine,
                             "content": {"text/event-stream": {"schema": {
                                 "$ref": "#/components/schemas/EventLine"}}},
                             "description": "one `data:` line per crwatch.event/1 document: "
                                            "ready, then transition and lost lines"},
                        503: {"description": "every event stream the service allows is open"}})
async def events(service: ServiceDep, viewer: ViewerDep) -> Response:
    """One `data:` line per notice: `ready` first, then `transition` and `lost` lines
    (the same lines as `crwatch watch`). A client that falls too far behind gets a `lost`
    line (`where: client`) and its stream ends."""
    try:
        lines = service.events.open(viewer)
    except TooManyStreams as error:
        return JSONResponse({"status": 503, "detail": str(error)}, status_code=503)
    return StreamingResponse(lines,
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
