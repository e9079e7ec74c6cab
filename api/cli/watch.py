"""`crwatch watch`: the tracker's notices as NDJSON (crwatch.event/1) on stdout.

One line per notice, flushed at once: `ready` first, then `transition` and
`lost` lines. At the end the tracker's counters go to stderr, in one line.
It ends cleanly on SIGINT or SIGTERM, and as soon as whoever
reads stdout goes away (`crwatch watch | head -3`), even when no event comes.
"""
from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import threading

from api import exit_codes
from api.cli import arguments
from probes.loader import ProbeError, Probes
from tracker.live.applier import Tracker
from tracker.safe_text import json_text

READER_CHECK_MS = 500


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.add_profile_arguments(parser)
    # Prints the exact BPF program and cflags that would be loaded (for debugging the probes).
    parser.add_argument("--print-bpf", action="store_true", help=argparse.SUPPRESS)


def run(args) -> int:
    if os.geteuid() != 0:
        print("crwatch: watch needs root: it loads eBPF programs and reads every process's "
              "/proc", file=sys.stderr)
        return exit_codes.USAGE
    if args.print_bpf:
        return _print_bpf()

    chosen = arguments.judged_by(args)
    done = threading.Event()
    closed = threading.Event()

    def emit(notice) -> None:
        if done.is_set():
            return
        try:
            sys.stdout.write(json_text(notice.to_json()) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            closed.set()
            done.set()

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: done.set())
    tracker = Tracker(chosen, progress=_say)
    tracker.subscribe(emit)
    try:
        tracker.start()
        if tracker.degraded:
            print(f"crwatch: the probes could not be loaded: {tracker.degraded}", file=sys.stderr)
            return exit_codes.PROBES_FAILED
        _await_end(done, closed)
    finally:
        done.set()
        tracker.stop()
        if tracker.table is not None and not tracker.degraded:
            print(f"crwatch: {_summary(tracker.counters())}", file=sys.stderr)
        if closed.is_set():
            # Nobody reads stdout any more: let the interpreter's last flush go nowhere.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return exit_codes.OK


def _say(line: str) -> None:
    """A line of the tracker's start, on stderr (stdout is NDJSON only)."""
    print(f"crwatch: {line}", file=sys.stderr, flush=True)


def _summary(counters: dict) -> str:
    """The tracker's counters, for the end of a watch (stderr: stdout is NDJSON only)."""
    table, lost = counters["table"], counters.get("lost", {})
    return (f"{table['events']:,} events applied ({table['coalesced']:,} of them skipped as "
            f"copies closed untouched), {table['transitions']:,} transitions, "
            f"{table['lock_reads']:,} lock reads; lost: kernel {lost.get('kernel', 0):,}, "
            f"queue overflow {lost.get('queue_overflow', 0):,}, decode errors "
            f"{lost.get('decode_errors', 0):,}, out of fds {lost.get('out_of_fds', 0):,}; "
            f"{table['reaudits']} re-audits; "
            f"{counters['apply_errors']} apply errors")


def _await_end(done: threading.Event, closed: threading.Event) -> None:
    """Until a signal, or until the reader of stdout is gone (a pipe's write end then
    polls as an error, a terminal's as a hang-up)."""
    poller = select.poll()
    poller.register(sys.stdout.fileno(), 0)  # only errors and hang-ups are reported
    while not done.is_set():
        if poller.poll(READER_CHECK_MS):
            closed.set()
            done.set()


def _print_bpf() -> int:
    try:
        with Probes() as probes:
            sys.stdout.write(probes.source_and_cflags())
    except ProbeError as error:
        print(f"crwatch: the probes could not be loaded: {error}", file=sys.stderr)
        return exit_codes.PROBES_FAILED
    return exit_codes.OK
