"""`crwatch check PID...`: audit, judge and print.

Each pid is judged with all its descendants, as `criu dump -t PID` takes them;
`--only` asks for the pid's own findings. Who holds a pipe or socket outside the tree
is named only with `--holders` (a walk over every fd of the host, for info messages).
This is the audit here; when a service runs, the compiled front end (launcher.c) has
the service answer instead, with the same output and status (api/check_output.py),
and runs this only when the service cannot answer as this would, or with --local.
"""
from __future__ import annotations

import gc
import os
import sys

from api import check_output, exit_codes
from api.cli.arguments import judged_by
from tracker import environment, verdict
from tracker.audit import audit
from tracker.checks import locks
from tracker.procfs import ProcessGone


def run(args) -> int:
    refusals = check_output.refusals(args.pids)
    if refusals:
        print("\n".join(refusals), file=sys.stderr)
        return exit_codes.USAGE
    if os.geteuid() != 0:
        print("crwatch: not running as root: the open files, memory maps and sockets of other "
              "users' processes cannot be read, and those processes will be judged 'unknown' "
              "(CRIU needs root to dump them too)", file=sys.stderr)

    # What is loaded by now lives as long as the command: kept out of the collector's
    # full passes, which the objects of thousands of fds would otherwise set off over it.
    gc.freeze()
    environment.detect_ahead()     # CRIU's runs overlap the audits; the verdicts await them
    locks.read_ahead()             # the kernel's wait for /proc/locks overlaps the fd walk
    tree = not args.only
    results = []
    for pid in args.pids:
        try:
            results.append((pid, audit(pid, tree=tree, name_holders=args.holders)))
        except ProcessGone:
            # gone between the existence check and the first read
            results.append((pid, None))
    chosen = judged_by(args)    # the CRIU found decides its version: asked after the audits
    documents = [verdict.document(result, chosen, args.allow) if result
                 else check_output.gone_document(pid, chosen, args.allow, tree)
                 for pid, result in results]
    sys.stdout.write(check_output.printed(documents, args.json))
    return check_output.status(documents)
