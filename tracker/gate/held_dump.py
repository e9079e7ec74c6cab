"""A `criu dump` started before the gate's verdict, held before it touches the tree.

CRIU spends most of a dump of a small tree before it seizes anything: it execs,
reads the kernel's features (kerndat) and collects the host's mounts and network
links. That start runs while the gate freezes and rechecks the tree: CRIU waits at
its pre-dump action script (dump_answer.py), the last point before it seizes the
tree, for the verdict. Only a checkpointable tree whose dump needs exactly the
arguments CRIU was started with is answered `dump`; otherwise that CRIU is answered
`stop` and ends there, having touched nothing, and the gate runs a CRIU with the
verdict's arguments, as it would have without this head start. (It is never killed:
CRIU killed in its start-up leaves the children of its kernel probes stranded.)

A `dump` answered before CRIU gets to pre-dump is also written to a file in the
gate's scratch directory (0700, root's), which the script's shell wrapper reads
first: CRIU then goes on at once, without starting the Python that waits for a
later answer (5 ms on the dump's critical path). The wrapper reads that file once,
and anything but a whole `dump` line there (none yet, a write half done) leaves
the wait to dump_answer.py, which the gate answers through the FIFO as well.

Its log goes to a scratch directory until the dump is answered, so a refused tree
leaves nothing in the images directory; a directory made for the dump is removed
again when the dump is not made.
"""
from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from tracker.criu.runner import Criu, DumpResult, StartedDump
from tracker.gate import standalone

SCRIPT = Path(__file__).with_name("dump_answer.py")


class HeldDump:
    """`criu dump -t PID` with `arguments`, started now, held at pre-dump.

    `matches(arguments)` says whether the verdict's arguments are these; `answer()` lets
    CRIU go on (once); `dump()` answers if not yet and waits for the dump; `cancel()`
    answers `stop` unless CRIU was let on already, and waits for it to end (idempotent;
    nothing to do once `dump()` has run).
    """

    def __init__(self, criu: Criu, pid: int, arguments: list[str], *, images_dir: Path,
                 leave_running: bool):
        self.arguments = arguments
        self._made = _make_directories(images_dir)
        self._scratch: Path | None = None
        self._answer: int | None = None
        self._early_answer: int | None = None
        self._started: StartedDump | None = None
        self.answered = False
        try:
            self._scratch = Path(tempfile.mkdtemp(prefix="crwatch-gate-"))
            fifo = self._scratch / "answer"
            os.mkfifo(fifo, 0o600)
            # Read-write: opening never waits for a reader, writing never finds none.
            self._answer = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
            early = self._scratch / "answered"
            self._early_answer = os.open(early, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                         | os.O_CLOEXEC, 0o600)
            script = self._scratch / "pre-dump"
            script.write_text(action_script(fifo, early, os.getpid()))
            script.chmod(0o700)
            self._started = criu.start_dump(
                pid, arguments, images_dir=images_dir, leave_running=leave_running,
                extra=["--action-script", str(script)], log_dir=self._scratch)
        except OSError:
            self._clean_up(made=self._made)
            raise

    def matches(self, arguments: list[str]) -> bool:
        return self._started is not None and arguments == self.arguments

    def answer(self, on_answer: Callable[[int], None] | None = None) -> None:
        """Let CRIU go on, once. `on_answer` is told CRIU's pid first."""
        if self.answered:
            return
        if on_answer is not None:
            on_answer(self._started.pid)
        os.write(self._early_answer, b"dump\n")  # for a CRIU not at pre-dump yet
        self._tell(b"dump\n")                    # for one waiting there already
        self.answered = True

    def dump(self, on_answer: Callable[[int], None] | None = None) -> DumpResult:
        """Let CRIU go on (if not yet) and wait for its dump."""
        self.answer(on_answer)
        started, self._started = self._started, None
        try:
            return started.finish()
        finally:
            self._clean_up(made=None)

    def cancel(self) -> None:
        started, self._started = self._started, None
        if started is None:
            return
        if self.answered:  # dumping already: only the dump's own end ends it
            started.wait()
            self._clean_up(made=None)
            return
        try:
            self._tell(b"stop\n")
            started.wait()  # "Pre dump script failed": it ends having touched nothing
        finally:
            self._clean_up(made=self._made)

    def _tell(self, answer: bytes) -> None:
        # The FIFO stays open until CRIU has ended (_clean_up): closed earlier, an answer
        # not read yet would be lost with it.
        os.write(self._answer, answer)

    def _clean_up(self, made: list[Path] | None) -> None:
        for descriptor in (self._answer, self._early_answer):
            if descriptor is not None:
                os.close(descriptor)
        self._answer = self._early_answer = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        for directory in made or []:  # the deepest first; CRIU wrote nothing there
            try:
                directory.rmdir()
            except OSError:
                break  # something else came to live there meanwhile: keep it


def action_script(fifo: Path, early: Path, gate_pid: int) -> str:
    """The shell wrapper CRIU runs at each action: the answer file `early`, else
    dump_answer.py's wait on `fifo` for the gate `gate_pid`."""
    # CRIU runs it at every action (post-dump too, on the dump's critical path): the
    # shell lets all but pre-dump pass without starting a Python.
    await_answer = standalone.command(SCRIPT, str(fifo), str(gate_pid))
    return ("#!/bin/sh\n"
            '[ "$CRTOOLS_SCRIPT_ACTION" = pre-dump ] || exit 0\n'
            f'read -r answer < {shlex.quote(str(early))} && [ "$answer" = dump ] && exit 0\n'
            f"exec {shlex.join(await_answer)}\n")


def _make_directories(directory: Path) -> list[Path]:
    """Make `directory` and its missing parents; those made, the deepest first."""
    missing = []
    for path in (directory, *directory.parents):
        if path.exists():
            break
        missing.append(path)
    directory.mkdir(parents=True, exist_ok=True)
    return missing
