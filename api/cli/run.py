"""`crwatch run [OPTIONS] -- CMD`: the command line of CI gating.

What can be refused is refused before CMD runs: no command, one that cannot be
found, a report path that cannot be written. The engine (api.ci.run) runs CMD
and follows its tree; this module prints the report on stderr (stdout stays
CMD's), writes `--json` and `--junit`, and turns the ended run into the exit status.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from api import exit_codes
from api.ci.report import junit, text
from api.ci.run import CommandNotFound, RunError, RunRequest, run_and_follow
from api.cli import arguments
from api.service.settings import DEFAULT_HOST, DEFAULT_PORT
from tracker.safe_text import json_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Exit status: the command's own when it fails; else 1 when a process of "
                          "its tree was non-checkpointable beyond the allowed options; else 0.")
    parser.add_argument("--allow", action="append", default=[], metavar="OPTION",
                        help="a CRIU option the checkpoint may use (repeatable)")
    parser.add_argument("--junit", metavar="FILE", help="write a JUnit XML report (a test case "
                                                       "per process)")
    parser.add_argument("--json", metavar="FILE", help="write the report (crwatch.run/1)")
    parser.add_argument("--at-end", action="store_true",
                        help="judge only what still runs when the command ends, not transient states")
    parser.add_argument("--at-signal", type=arguments.signal_number, metavar="SIGNAL",
                        help="judge the tree each time crwatch gets this signal (the command "
                             "finds crwatch's pid in $CRWATCH_PID), e.g. USR1")
    parser.add_argument("--at-file", metavar="PATH",
                        help="judge the tree each time the workload creates or touches PATH")
    parser.add_argument("--degraded-ok", action="store_true",
                        help="without root or a service, judge by periodic audits instead of "
                             "refusing")
    parser.add_argument("--interval", type=arguments.seconds, default=0.5, metavar="SECONDS",
                        help="how often to audit when degraded (default 0.5)")
    parser.add_argument("--service", metavar="URL",
                        help="the service whose events to use (default: $CRWATCH_URL, else "
                             f"http://{DEFAULT_HOST}:{DEFAULT_PORT} when it answers)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    arguments.add_profile_arguments(parser)


def run(args) -> int:
    chosen = arguments.judged_by(args)
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        print("crwatch: run needs a command: crwatch run [OPTIONS] -- CMD [ARGS...]",
              file=sys.stderr)
        return exit_codes.USAGE
    if _executable(command[0]) is None:
        print(f"crwatch: {command[0]}: command not found", file=sys.stderr)
        return exit_codes.COMMAND_NOT_FOUND
    unwritable = [problem for path in (args.json, args.junit) if path
                  and (problem := _unwritable(path))]
    if unwritable:  # said before the command runs, not after a long run
        for problem in unwritable:
            print(f"crwatch: {problem}", file=sys.stderr)
        return exit_codes.USAGE

    request = RunRequest(command=command, allow=args.allow, at_end=args.at_end,
                         at_signal=args.at_signal, at_file=args.at_file,
                         degraded_ok=args.degraded_ok, interval=args.interval,
                         service=args.service)
    try:
        ended = run_and_follow(request, chosen)
    except CommandNotFound as error:
        print(f"crwatch: {error}", file=sys.stderr)
        return exit_codes.COMMAND_NOT_FOUND
    except RunError as error:
        print(f"crwatch: {error}", file=sys.stderr)
        return exit_codes.USAGE

    report = ended.document(exit_codes.of_run(ended.status, ended.checkpointable))
    print(text(report), file=sys.stderr)
    written = all([_write(args.json, (json_text(report, indent=2) + "\n").encode(), "report"),
                   _write(args.junit, junit(report), "JUnit report")])
    if not written and report["exit_code"] == exit_codes.OK:
        return exit_codes.USAGE  # a passing run whose report is lost must not pass
    return report["exit_code"]


def _executable(name: str) -> str | None:
    if os.sep in name:
        return name if os.access(name, os.X_OK) and not os.path.isdir(name) else None
    return shutil.which(name)


def _unwritable(path: str) -> str | None:
    """Why a report cannot be written at `path` (None: it can), found by opening it the way
    the report will be written, without changing it: a file made only for this goes again."""
    existed = os.path.lexists(path)
    try:
        # O_NONBLOCK: a FIFO nobody reads is refused (ENXIO) instead of blocking
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC,
                     0o644)
    except OSError as error:
        return f"cannot write a report to {path}: {error.strerror}"
    os.close(fd)
    if not existed:
        os.unlink(path)
    return None


def _write(path: str | None, content: bytes, what: str) -> bool:
    """Write a report file; when that fails after all, say why and print it on stdout instead."""
    if not path:
        return True
    try:
        Path(path).write_bytes(content)
        return True
    except OSError as error:
        print(f"crwatch: cannot write the {what} to {path}: {error.strerror}; it follows on "
              f"stdout", file=sys.stderr)
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
        return False
