"""CRIU's pre-dump action script for a dump started ahead of the gate's verdict.

CRIU runs its action scripts at `pre-dump` just before it seizes the tree
(cr_dump_tasks: run_scripts(ACT_PRE_DUMP), then collect_pstree), and aborts the
dump, having touched nothing, when one exits non-zero ("Pre dump script failed").
This script is that point's latch: it waits there for the gate's answer, one line
in a FIFO, and lets CRIU go on only when the line is `dump`. Anything else ends the
dump: `stop`, the gate closing the FIFO without a word, the gate or CRIU dying.

Usage (CRIU runs its action script by path, without arguments, so a shell wrapper
names them: held_dump.py's action_script, which first reads an answer given before
pre-dump, and starts this only without one): dump_answer.py FIFO GATE_PID. Every
action other than pre-dump passes.
When the gate is gone it also removes the gate's scratch directory (the FIFO's),
which the gate would have removed once CRIU ended. The FIFO closed without a word
counts as gone: the gate closes it only once CRIU has ended, and a dying gate closes
its files before its pidfd says it is gone.

It runs as `python -I -S`: standard library only, nothing of crwatch. Its start is part
of what CRIU waits at pre-dump, so it uses the C core `posix` rather than os.py (1 ms
to import), and the gate starts it from its cached bytecode (standalone.py).
"""
from __future__ import annotations

import posix
import select
import sys

ANSWER = b"dump"


def await_answer(fifo: str, gate_pid: int) -> bytes | None:
    """The gate's answer (b"" for none: CRIU, the parent, is gone), or None once the
    gate is gone or has closed the FIFO without a word."""
    # Non-blocking: opening a FIFO for reading waits for a writer, and a gate that died
    # before this ran would never come. The gate holds it open from before CRIU started.
    answer = posix.open(fifo, posix.O_RDONLY | posix.O_NONBLOCK)
    try:
        gate = posix.pidfd_open(gate_pid)
    except ProcessLookupError:
        return None
    try:
        criu = posix.pidfd_open(posix.getppid())
    except ProcessLookupError:
        return b""
    ready = select.select([answer, gate, criu], [], [])[0]
    if gate in ready:  # its death closes the FIFO too: gone comes first
        return None
    if answer in ready:
        try:
            return posix.read(answer, 64).strip() or None  # end of file: gone, or going
        except BlockingIOError:
            return b""
    return b""


def remove_scratch(directory: str) -> None:
    """The gate's scratch directory: the FIFO, this script's wrapper, CRIU's log (which
    CRIU, ending, still writes through its open descriptor)."""
    try:
        for name in posix.listdir(directory):
            posix.unlink(f"{directory}/{name}")
        posix.rmdir(directory)
    except OSError:
        pass  # gone already, or not ours to empty: left as it is


def main(argv: list[str]) -> int:
    if posix.environ.get(b"CRTOOLS_SCRIPT_ACTION") != b"pre-dump":
        return 0
    fifo, gate_pid = argv
    answer = await_answer(fifo, int(gate_pid))
    if answer is None:  # nobody else will remove it now
        remove_scratch(fifo.rpartition("/")[0])
    return 0 if answer == ANSWER else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
