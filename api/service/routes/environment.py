"""/environment: the dumper's environment every verdict is judged in."""
from __future__ import annotations

from fastapi import APIRouter

from api.service.deps import ViewerDep
from api.service.models import Environment
from api.service.privacy import environment_shown
from tracker import environment

router = APIRouter(tags=["environment"])


@router.get("/environment", response_model=Environment, response_model_by_alias=True)
def dumper_environment(viewer: ViewerDep) -> dict:
    """The dumper's capabilities, its CRIU's features and libraries, the network-lock backend
    CRIU can use and the kernel, as detected once when the service started judging."""
    return environment_shown(environment.current().to_json(), viewer)
