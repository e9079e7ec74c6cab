"""`crwatch check PID...`: audit, judge and print.

Each pid is judged with all its descendants, as `criu dump -t PID` takes them;
`--only` asks for the pid's own findings. Who holds a pipe or socket outside the tree,
and who outside it locks its files, is named only with `--holders` (a walk over every
fd of the host and a read of /proc/locks, for info messages).
This is the audit here; when a service runs, the compiled front end (launcher.c) has
the service answer instead, with the same output and status (api/check_output.py),
and runs this only when the service cannot answer as this would, or with --local.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys

from api import check_output, exit_codes
from api.cli import arguments
from api.service_socket import DEFAULT_SOCKET, LOCAL_VARIABLE, SOCKET_VARIABLE
from tracker import environment, verdict
from tracker.audit import audit
from tracker.procfs import ProcessGone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pids", nargs="+", type=arguments.pid, metavar="PID")
    arguments.add_scope_arguments(
        parser, "judge each pid's own findings, without its descendants (a checkpoint takes "
                "them too: `criu dump -t PID` dumps the tree)")
    parser.add_argument("--json", action="store_true",
                        help="print verdict documents (crwatch.verdict/1)")
    parser.add_argument("--allow", action="append", default=[], metavar="OPTION",
                        help="a CRIU option the dump may use (repeatable), "
                             "e.g. --allow=--tcp-established")
    parser.add_argument("--holders", action="store_true",
                        help="name the processes outside the tree that hold the other end of "
                             "its pipes and sockets or lock its files (reads every fd of the "
                             "host and /proc/locks; no verdict depends on them)")
    parser.add_argument("--local", action="store_true",
                        help="audit here rather than ask the crwatch service running on "
                             f"{DEFAULT_SOCKET} (or ${SOCKET_VARIABLE}), whose answers say "
                             f'"answered_by": "service"; the same as {LOCAL_VARIABLE}=1')
    arguments.add_profile_arguments(parser)


def run(args) -> int:
    refusals = check_output.refusals(args.pids)
    if refusals:
        print("\n".join(refusals), file=sys.stderr)
        return exit_codes.USAGE
    if os.geteuid() != 0:
        print("crwatch: not running as root: the open files, memory maps and sockets of other "
              "users' processes cannot be read, and those processes will be judged 'unknown' "
              "(CRIU needs root to dump them too)", file=sys.stderr)

    # The command ends once it has printed: its objects are freed by their counts, and
    # the collector's passes, which would walk every fd's objects again and again (89
    # passes in a 12,500-fd check), would free only the few cycles exceptions leave.
    # What is loaded by now is frozen too: the interpreter's last pass at exit, which runs
    # even with the collector off, then walks only what the audits made.
    gc.freeze()
    gc.disable()
    environment.detect_ahead()     # CRIU's runs overlap the audits; the verdicts await them
    tree = not args.only
    results = []
    for pid in args.pids:
        try:
            results.append((pid, audit(pid, tree=tree, name_holders=args.holders)))
        except ProcessGone:
            # gone between the existence check and the first read
            results.append((pid, None))
    # the CRIU found decides its version: asked after the audits
    chosen = arguments.judged_by(args)
    documents = [verdict.document(result, chosen, args.allow) if result
                 else check_output.gone_document(pid, chosen, args.allow, tree)
                 for pid, result in results]
    sys.stdout.write(check_output.printed(documents, args.json))
    return check_output.status(documents)
