"""The arguments of `crwatch serve`, apart from api.cli.serve, which loads the service
(FastAPI, uvicorn, the probes) as it is imported: `crwatch serve --help` does not."""
from __future__ import annotations

import argparse
from pathlib import Path

from api.cli import arguments
from api.service.settings import DEFAULT_DB, DEFAULT_DUMP_ROOT, DEFAULT_HOST, DEFAULT_PORT
from api.service_socket import DEFAULT_SOCKET


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}; others need --token)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument("--token", help="callers must send `Authorization: Bearer TOKEN` "
                                        "(default: $CRWATCH_TOKEN)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also accept requests whose Host header names NAME (repeatable; "
                             "by default only the bound address, 127.0.0.1, ::1 and localhost: "
                             "other names are refused against DNS rebinding)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB,
                        help=f"the history database (default {DEFAULT_DB})")
    parser.add_argument("--retention-days", type=float, default=30.0,
                        help="history older than this is dropped (default 30)")
    parser.add_argument("--criu", metavar="PATH", help="the CRIU for gates' dumps (default: "
                        "$CRWATCH_CRIU, else the one scripts/setup.sh provides, else criu on PATH)")
    parser.add_argument("--dump-root", type=Path, default=DEFAULT_DUMP_ROOT, metavar="DIR",
                        help="a gate's dump.directory must be inside it, `..` and symlinks "
                             f"resolved (default {DEFAULT_DUMP_ROOT})")
    parser.add_argument("--socket", type=arguments.socket_path, default=DEFAULT_SOCKET,
                        metavar="PATH",
                        help="also listen on this unix socket, where `crwatch check` asks "
                             f"first (default for root: {DEFAULT_SOCKET}; `none`: only TCP); "
                             "callers are known by their uid, as on loopback")
    parser.add_argument("--no-probes", action="store_true",
                        help="do not attach the eBPF probes: answer from audits alone")
    arguments.add_profile_arguments(parser)
