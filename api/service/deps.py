"""What the routes depend on, as Annotated aliases a handler names in its signature:
`service: ServiceDep` (the application's Service) and `viewer: ViewerDep` (who asks).

The one place a request reaches the application's state; the Service itself is made
and set there by create_app's lifespan (app.py), and the viewer by its middleware.
A test can replace either through `app.dependency_overrides[get_service]`."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.service.privacy import Viewer
from api.service.state import Service


async def get_service(request: Request) -> Service:
    return request.app.state.service


async def get_viewer(request: Request) -> Viewer:
    return request.state.viewer


ServiceDep = Annotated[Service, Depends(get_service)]
ViewerDep = Annotated[Viewer, Depends(get_viewer)]
