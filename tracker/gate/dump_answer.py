"""CRIU's pre-dump action script for a dump started ahead of the gate's verdict.

CRIU runs its action scripts at `pre-dump` just before it seizes the tree
(cr_dump_tasks: run_scripts(ACT_PRE_DUMP), then collect_pstree), and aborts the
dump, having touched nothing, when one exits non-zero ("Pre dump script failed").
This script is that point's latch: it waits there for the gate's answer, one line
in a FIFO, and lets CRIU go on only when the line is `dump`. Anything else ends the
dump: `stop`, the gate closing the FIFO without a word, the gate or CRIU dying.

Usage (CRIU runs it by path, without arguments, so a two-line shell wrapper names
them): dump_answer.py FIFO GATE_PID. Every action other than pre-dump passes.

It runs as `python -I -S`: standard library only, nothing of crwatch.
"""
from __future__ import annotations

import os
import select
import sys

ANSWER = b"dump"


def await_answer(fifo: str, gate_pid: int) -> bool:
    """Is the gate's answer `dump`? False as soon as the gate or CRIU (the parent) is gone."""
    # Non-blocking: opening a FIFO for reading waits for a writer, and a gate that died
    # before this ran would never come. The gate holds it open from before CRIU started.
    answer = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    watched = [answer]
    for pid in (gate_pid, os.getppid()):
        try:
            watched.append(os.pidfd_open(pid))
        except ProcessLookupError:
            return False
    ready = select.select(watched, [], [])[0]
    if answer not in ready:
        return False
    try:
        return os.read(answer, 64).strip() == ANSWER
    except BlockingIOError:
        return False


def main(argv: list[str]) -> int:
    if os.environ.get("CRTOOLS_SCRIPT_ACTION") != "pre-dump":
        return 0
    fifo, gate_pid = argv
    return 0 if await_answer(fifo, int(gate_pid)) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
