"""/rules: the catalogue every reason's code comes from."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Query

from api.rules_document import rules_document
from api.service.deps import ServiceDep
from api.service.models import Rules
from tracker.checks.catalogue import catalogue

router = APIRouter(tags=["rules"])


@router.get("/rules", response_model=Rules, response_model_by_alias=True)
def rules(service: ServiceDep,
          profile: Annotated[Optional[Literal["criu", "strict"]], Query()] = None) -> dict:
    return rules_document(catalogue(), service.profile_for(profile))
