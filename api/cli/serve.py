"""`crwatch serve`: the service (probes, API) under uvicorn."""
from __future__ import annotations

import os
import sys

import uvicorn

from api.cli import exit_codes
from api.service.app import create_app
from api.service.connections import IDLE_SECONDS, ConnectionGuard, guarded_protocol
from api.service.history import History, HistoryError
from api.service.settings import Settings, SettingsError, host_name

# Open /events streams are ended by the lifespan; anything else gets this long.
GRACEFUL_SHUTDOWN_SECONDS = 5


def say(line: str) -> None:
    """A line of the tracker's start, on stderr: the service listens once it is ready."""
    print(f"crwatch: {line}", file=sys.stderr, flush=True)


def run(args) -> int:
    try:
        settings = Settings(host=args.host, port=args.port, profile=args.profile,
                            criu_version=args.criu_version,
                            token=args.token or os.environ.get("CRWATCH_TOKEN") or None,
                            probes=not args.no_probes, db=args.db,
                            retention_days=args.retention_days, criu=args.criu,
                            dump_root=args.dump_root,
                            allowed_hosts=tuple(host_name(name) for name in args.allow_host))
        settings.check()
    except SettingsError as error:
        print(f"crwatch: {error}", file=sys.stderr)
        return exit_codes.USAGE
    if os.geteuid() != 0 and settings.probes:
        print("crwatch: not running as root: the probes cannot be attached and other users' "
              "processes cannot be read; serving degraded (audits only)", file=sys.stderr)
        settings = Settings(**{**settings.__dict__, "probes": False})

    try:  # a database that cannot be opened is said in one line, before anything starts
        History(settings.db, settings.retention_days).close()
    except HistoryError as error:
        print(f"crwatch: {error}", file=sys.stderr)
        return exit_codes.USAGE

    connections = ConnectionGuard()
    connections.raise_fd_limit()
    # proxy_headers off: a caller is who its socket says (api.service.peer), never what an
    # X-Forwarded-For header claims. asyncio's loop, never uvloop's: uvloop stops listening
    # for good after an accept() error (out of fds), which asyncio retries.
    uvicorn.run(create_app(settings, connections, progress=say), host=settings.host,
                port=settings.port, loop="asyncio",
                http=guarded_protocol(connections), timeout_keep_alive=IDLE_SECONDS,
                log_level="warning", access_log=False, proxy_headers=False,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    return exit_codes.OK
