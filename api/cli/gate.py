"""`crwatch gate PID`: freeze, recheck, judge, thaw; optionally hand the tree to CRIU.

When a crwatch service answers on this host, the gate runs there, so that the
drift report compares the recheck with the service's tracked state (and counts
it in its /metrics); `--local` runs it in this process, without that comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from api import exit_codes
from api.cli import arguments
from api.render import gate_text
from api.service.settings import DEFAULT_HOST, DEFAULT_PORT, service_url
from tracker.audit import ThreadId, identify
from tracker.criu.runner import criu_at
from tracker.gate.freeze import DEFAULT_WATCHDOG_S
from tracker.gate.recheck import GateError, GateRequest, gate, refuse_crwatch
from tracker.procfs import AccessDenied, ProcessGone
from tracker.profiles import Profile
from tracker.safe_text import json_text, visible

SERVICE_TIMEOUT_S = 120  # a gate with a dump of a large tree takes a while


class ServiceUnreachable(Exception):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=arguments.pid, metavar="PID")
    arguments.add_scope_arguments(
        parser, "recheck the pid alone, without its descendants (not with --dump: CRIU dumps "
                "the whole tree)")
    parser.add_argument("--allow", action="append", default=[], metavar="OPTION",
                        help="a CRIU option the dump may use (repeatable)")
    parser.add_argument("--dump", metavar="DIR",
                        help="when the gate passes, dump the tree into DIR with the real CRIU, "
                             "with exactly the options the verdict requires")
    parser.add_argument("--no-leave-running", dest="leave_running", action="store_false",
                        help="let CRIU end the tree after the dump, as plain `criu dump` does "
                             "(default: --leave-running)")
    parser.add_argument("--watchdog", type=arguments.seconds, default=DEFAULT_WATCHDOG_S,
                        metavar="SECONDS",
                        help=f"the longest the tree may stay frozen for the recheck "
                             f"(default {DEFAULT_WATCHDOG_S:g})")
    parser.add_argument("--json", action="store_true",
                        help="print the gate document (crwatch.gate/1)")
    parser.add_argument("--local", action="store_true",
                        help="run the gate here even if a crwatch service answers (no drift report)")
    parser.add_argument("--service", metavar="URL",
                        help="the service to run the gate (default: $CRWATCH_URL, else "
                             f"http://{DEFAULT_HOST}:{DEFAULT_PORT} when it answers)")
    parser.add_argument("--criu", metavar="PATH", help="the CRIU to dump with, when the gate "
                        "runs here (default: "
                        "$CRWATCH_CRIU, else the one scripts/setup.sh provides, else criu on PATH)")
    # Stays frozen this long after the recheck: exercises the watchdog and crash tests.
    parser.add_argument("--hold", type=arguments.seconds, default=0.0, help=argparse.SUPPRESS)
    arguments.add_profile_arguments(parser)


def run(args) -> int:
    chosen = arguments.judged_by(args)
    request = GateRequest(
        pid=args.pid, tree=not args.only, allow=tuple(args.allow),
        dump_dir=Path(args.dump).absolute() if args.dump else None,
        leave_running=args.leave_running, watchdog_s=args.watchdog, hold_s=args.hold)
    try:
        _identify(args.pid)  # a thread or no process: said here, before any service is asked
        request.check()
        refuse_crwatch(args.pid, request.tree)  # this command too, when a service runs the gate
        document = None
        if not args.local:
            try:
                document = _ask_service(args, request, chosen)
            except ServiceUnreachable as unreachable:
                if args.service:  # asked for by name: not finding it is an error
                    raise
                if "refused" in str(unreachable):
                    print(f"crwatch: {unreachable}; running the gate here, without a drift "
                          f"report", file=sys.stderr)
        if document is None:
            if os.geteuid() != 0:
                print("crwatch: the gate needs root: freezing another process (ptrace or the "
                      "cgroup freezer) and CRIU both do", file=sys.stderr)
                return exit_codes.USAGE
            document = gate(request, chosen, criu=criu_at(args.criu))
    except ProcessGone:
        print(f"crwatch: no process with pid {args.pid}", file=sys.stderr)
        return exit_codes.USAGE
    except ThreadId as thread:
        print(f"crwatch: {thread.tid} is a thread of process {thread.tgid}; a checkpoint takes "
              f"whole processes: gate {thread.tgid}", file=sys.stderr)
        return exit_codes.USAGE
    except (GateError, ServiceUnreachable) as error:
        print(f"crwatch: {visible(str(error))}", file=sys.stderr)  # may name a directory
        return exit_codes.USAGE
    print(json_text(document, indent=2) if args.json else gate_text(document))
    return exit_codes.GATE_OUTCOMES[document["outcome"]]


def _identify(pid: int) -> None:
    try:
        identify(pid)
    except AccessDenied:
        pass  # the gate itself says what it cannot read


def _ask_service(args, request: GateRequest, chosen: Profile) -> dict:
    base = service_url(args.service).rstrip("/")
    body = {"tree": request.tree, "allow": list(request.allow), "profile": chosen.name,
            "watchdog_seconds": request.watchdog_s}
    if request.dump_dir is not None:
        body["dump"] = {"directory": str(request.dump_dir),
                        "leave_running": request.leave_running}
    headers = {"Content-Type": "application/json"}
    if token := os.environ.get("CRWATCH_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    call = urllib.request.Request(f"{base}/processes/{request.pid}/gate", method="POST",
                                  data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=SERVICE_TIMEOUT_S) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:
        detail = _detail(error)
        if error.code == 404:
            raise ProcessGone(request.pid) from None
        if error.code in (401, 403):  # e.g. a service started without --token
            raise ServiceUnreachable(f"the service at {base} refused the gate: {detail}") \
                from None
        raise GateError(f"the service at {base} refused the gate ({error.code}): {detail}") \
            from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        raise ServiceUnreachable(f"no crwatch service answers at {base}: "
                                 f"{getattr(error, 'reason', error)}") from None


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        return json.load(error).get("detail", "")
    except (ValueError, AttributeError):
        return error.reason
