"""`crwatch check PID...`: audit, judge and print."""
from __future__ import annotations

import json
import os
import sys

from tracker import verdict
from tracker.audit import audit, identify
from tracker.procfs import AccessDenied, ProcessGone
from tracker.profiles import Profile

EXIT_OK, EXIT_NOT_CHECKPOINTABLE, EXIT_USAGE = 0, 1, 2


def run_check(args, chosen: Profile) -> int:
    missing = [pid for pid in args.pids if not _exists(pid)]
    if missing:
        for pid in missing:
            print(f"crwatch: no process with pid {pid}", file=sys.stderr)
        return EXIT_USAGE
    if os.geteuid() != 0:
        print("crwatch: not running as root: the open files, memory maps and sockets of other "
              "users' processes cannot be read, and those processes will be judged 'unknown' "
              "(CRIU needs root to dump them too)", file=sys.stderr)

    documents = []
    for pid in args.pids:
        try:
            result = audit(pid, tree=args.tree)
        except ProcessGone:
            # gone between the existence check and the first read
            result = None
        documents.append(verdict.document(result, chosen, args.allow) if result
                         else _gone_document(pid, chosen, args))
    _print(documents, args.json)
    return EXIT_OK if all(d["checkpointable"] for d in documents) else EXIT_NOT_CHECKPOINTABLE


def _exists(pid: int) -> bool:
    try:
        identify(pid)
        return True
    except ProcessGone:
        return False
    except AccessDenied:
        return True


def _gone_document(pid: int, chosen: Profile, args) -> dict:
    from tracker.audit import Audit, ProcessIdentity
    from tracker.checks.general import exited

    gone = Audit(root=ProcessIdentity(pid, 0.0, ""), tree=args.tree, findings=[exited(pid)])
    return verdict.document(gone, chosen, args.allow)


def _print(documents: list[dict], as_json: bool) -> None:
    if as_json:
        payload = documents[0] if len(documents) == 1 else documents
        print(json.dumps(payload, indent=2))
        return
    from api.render import verdict_text

    print("\n\n".join(verdict_text(document) for document in documents))
