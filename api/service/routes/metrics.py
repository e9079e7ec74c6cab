"""/metrics: Prometheus text exposition."""
from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.service.deps import ServiceDep

router = APIRouter(tags=["service"])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(service: ServiceDep) -> Response:
    """Processes and reasons the probes track, probe status, event and loss counters,
    audit latency and the verdicts served."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
