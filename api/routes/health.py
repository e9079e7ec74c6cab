"""/healthz: are the probes attached, and what the tracker counted."""
from __future__ import annotations

from fastapi import APIRouter, Request

from api.models import Health

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=Health)
def healthz(request: Request) -> dict:
    """`degraded` (with the reason) when the probes could not attach: the service then
    answers from audits alone."""
    return request.app.state.service.health()
