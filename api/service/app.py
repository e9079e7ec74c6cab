"""The FastAPI application: create_app(settings) wires the service and its routers."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from api.service.auth import misdirected, refusal, viewer
from api.service.connections import ConnectionGuard
from api.service.errors import GateBusy, NoSuchProcess
from api.service.history import HistoryUnavailable
from api.service.routes import (
    check,
    dashboard,
    environment,
    events,
    health,
    metrics,
    processes,
    rules,
)
from api.service.safe_json import SafeJSONResponse as JSONResponse
from api.service.settings import Settings
from api.service.state import Service
from tracker.audit import ThreadId
from tracker.gate.recheck import CriuUnavailable, GateError


def create_app(settings: Settings, connections: ConnectionGuard | None = None,
               progress: Callable[[str], None] | None = None) -> FastAPI:
    """`connections`: the guard of the server's connections (crwatch serve), whose
    figures /healthz and /metrics show; `progress`: told a line at each step of the
    tracker's start (crwatch serve prints them on stderr)."""
    settings.check()
    connections = connections or ConnectionGuard()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # accept() out of fds is said once, not a traceback per attempt
        asyncio.get_running_loop().set_exception_handler(connections.loop_exception_handler)
        service = Service(settings, connections, progress)
        service.start()  # compiles and attaches the probes, seeds the table (about a second)
        app.state.service = service
        try:
            yield
        finally:
            service.stop()

    # every JSON answer, errors included, encodes names that are not UTF-8 safely
    app = FastAPI(title="crwatch", lifespan=lifespan, default_response_class=JSONResponse,
                  description="Can this process be checkpointed right now, and if not, why?")
    for router in (processes.router, check.router, events.router, rules.router,
                   environment.router, health.router, metrics.router, dashboard.router):
        app.include_router(router)
    _add_error_handlers(app)

    app.add_middleware(Guard, settings=settings)
    return app


class Guard:
    """Every HTTP request's checks before its route: the Host header, the token, and who
    the caller is (request.state.viewer). A plain ASGI middleware: Starlette's
    BaseHTTPMiddleware would add a task and a stream to every request."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refused = self._refused(request)
        if refused is not None:
            await refused(scope, receive, send)
            return
        request.state.viewer = viewer(self.settings, request)
        await self.app(scope, receive, send)

    def _refused(self, request: Request) -> JSONResponse | None:
        settings = self.settings
        wrong_host = misdirected(settings, request)
        if wrong_host is not None:
            return _problem(421, wrong_host)
        changing = request.method not in ("GET", "HEAD", "OPTIONS")
        status = refusal(settings, request, changing=changing)
        if status is None:
            return None
        detail = ("this service needs `Authorization: Bearer TOKEN`" if status == 401
                  else "wrong token" if settings.token
                  else "changing state needs a token: start the service with --token")
        response = _problem(status, detail)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"status": status, "detail": detail}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NoSuchProcess)
    async def no_such_process(_: Request, error: NoSuchProcess) -> JSONResponse:
        return _problem(404, str(error))

    @app.exception_handler(ThreadId)
    async def thread_id(_: Request, error: ThreadId) -> JSONResponse:
        return JSONResponse({"status": 422, "detail": f"{error}: a checkpoint takes whole "
                             f"processes, ask for pid {error.tgid}",
                             "thread_group_leader": error.tgid}, status_code=422)

    @app.exception_handler(HistoryUnavailable)
    async def history_unavailable(_: Request, error: HistoryUnavailable) -> JSONResponse:
        return _problem(503, str(error))

    @app.exception_handler(GateBusy)
    async def gate_busy(_: Request, error: GateBusy) -> JSONResponse:
        return _problem(409, str(error))

    @app.exception_handler(GateError)
    async def gate_impossible(_: Request, error: GateError) -> JSONResponse:
        return _problem(503 if isinstance(error, CriuUnavailable) else 422, str(error))

    @app.exception_handler(PermissionError)
    async def forbidden(_: Request, error: PermissionError) -> JSONResponse:
        return _problem(403, f"crwatch cannot read this process: {error}")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return _problem(422, where)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return _problem(error.status_code, str(error.detail))
