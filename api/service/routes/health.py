"""/healthz: are the probes attached, does the background work work, what was counted."""
from __future__ import annotations

from fastapi import APIRouter

from api.service.deps import ServiceDep
from api.service.models import Health

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=Health)
def healthz(service: ServiceDep) -> dict:
    """`degraded` (with a reason per part) when the probes could not attach (the service
    then answers from audits alone) or a background worker is retrying or dead; the
    workers' states and the history's counts."""
    return service.health()
