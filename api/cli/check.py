"""`crwatch check PID...`: audit, judge and print.

Each pid is judged with all its descendants, as `criu dump -t PID` takes them;
`--only` asks for the pid's own findings. Who holds a pipe or socket outside the tree
is named only with `--holders` (a walk over every fd of the host, for info messages).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys

from api.cli import arguments, exit_codes
from api.render import verdict_text
from tracker import environment, verdict
from tracker.audit import Audit, ProcessIdentity, ThreadId, audit, identify
from tracker.checks.general import exited
from tracker.procfs import AccessDenied, ProcessGone
from tracker.profiles import Profile
from tracker.safe_text import json_text


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
                             "its pipes and sockets (reads every fd of the host; no verdict "
                             "depends on them)")
    arguments.add_profile_arguments(parser)


def run(args) -> int:
    refusals = [refusal for pid in args.pids if (refusal := _refusal(pid))]
    if refusals:
        for refusal in refusals:
            print(f"crwatch: {refusal}", file=sys.stderr)
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
                 else _gone_document(pid, chosen, args.allow, tree) for pid, result in results]
    _print(documents, args.json)
    if all(document["checkpointable"] for document in documents):
        return exit_codes.OK
    return exit_codes.NOT_CHECKPOINTABLE


def _refusal(pid: int) -> str | None:
    """Why this pid cannot be checked (None: it can)."""
    try:
        identify(pid)
    except ProcessGone:
        return f"no process with pid {pid}"
    except ThreadId as thread:
        return (f"{thread.tid} is a thread of process {thread.tgid}; a checkpoint takes whole "
                f"processes: check {thread.tgid}")
    except AccessDenied:
        pass  # judged `unknown`, with what could not be read
    return None


def _gone_document(pid: int, chosen: Profile, allow: list[str], tree: bool) -> dict:
    gone = Audit(root=ProcessIdentity(pid, 0.0, ""), tree=tree, findings=[exited(pid)])
    return verdict.document(gone, chosen, allow)


def _print(documents: list[dict], as_json: bool) -> None:
    if as_json:
        payload = documents[0] if len(documents) == 1 else documents
        print(json_text(payload, indent=2))
        return
    print("\n\n".join(verdict_text(document) for document in documents))
