"""/environment: the dumper's environment every verdict is judged in."""
from __future__ import annotations

from fastapi import APIRouter

from api.models import Environment
from tracker import environment

router = APIRouter(tags=["environment"])


@router.get("/environment", response_model=Environment, response_model_by_alias=True)
def dumper_environment() -> dict:
    """The dumper's capabilities, its CRIU's features and libraries, the network-lock backend
    CRIU can use and the kernel, as detected once when the service started judging."""
    return environment.current().to_json()
