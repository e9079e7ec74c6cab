"""Real processes put into real states, for the tests.

A subject is a Python child started in its own session (so CRIU can dump it
without --shell-job), with stdin/stdout/stderr on /dev/null. Its code sets up
the state, then reports readiness on a pipe that it closes straight after,
so the pipe never shows up in the audit.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from typing import Iterator

READY_TIMEOUT = 30.0

PRELUDE = """
import os, sys, time, socket, signal, fcntl, mmap, ctypes, errno
def ready(note=""):
    # tell the test the state is set up, then drop the pipe so it is not audited
    fd = int(os.environ.pop("SUBJECT_READY_FD"))
    os.write(fd, (note or "ok").encode() + b"\\n")
    os.close(fd)
def hold():
    while True:
        signal.pause()
"""


class Subject:
    def __init__(self, process: subprocess.Popen, note: str):
        self.process = process
        self.pid = process.pid
        self.note = note  # what the subject reported with ready(), e.g. a pid or port

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)


def start(code: str, *, new_session: bool = True, env: dict | None = None,
          stdin=subprocess.DEVNULL) -> Subject:
    """Start a subject running `code` (which must call ready() once its state is set up)."""
    read_end, write_end = os.pipe()
    child_env = dict(os.environ, **(env or {}), SUBJECT_READY_FD=str(write_end))
    process = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        pass_fds=(write_end,), start_new_session=new_session, env=child_env, close_fds=True,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as ready_pipe:
        line = _read_line(ready_pipe, process)
    return Subject(process, line.decode().strip())


def _read_line(pipe, process: subprocess.Popen) -> bytes:
    import select

    ready, _, _ = select.select([pipe], [], [], READY_TIMEOUT)
    line = pipe.readline() if ready else b""
    if not line:
        process.kill()
        process.wait()
        raise RuntimeError(f"subject {process.pid} died or never became ready "
                           f"(exit status {process.returncode})")
    return line


@contextmanager
def subject(code: str, **kwargs) -> Iterator[Subject]:
    running = start(code, **kwargs)
    try:
        yield running
    finally:
        running.stop()
