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
import time
from contextlib import contextmanager
from typing import Iterator

READY_TIMEOUT = 30.0

# Subjects the command line's tests judge, each way it is answered.
PLAIN = "ready(); hold()"
DEVICE = "kvm = open('/dev/kvm', 'rb', buffering=0); ready(); hold()"
TCP_PAIR = """
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
client = socket.create_connection(server.getsockname()); peer, _ = server.accept()
ready(); hold()
"""

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
def make(create):
    # a resource this kernel refuses to create: say so instead of dying (see skip_if_refused)
    try:
        return create()
    except OSError as error:
        ready(f"skip: {error}")
        hold()
"""


class Subject:
    def __init__(self, process: subprocess.Popen, note: str):
        self.process = process
        self.pid = process.pid
        self.note = note  # what the subject reported with ready(), e.g. a pid or port

    def stop(self) -> None:
        if self.process.poll() is None:
            # Its descendants first: a child that made a session of its own (setsid)
            # is in no process group of the subject's.
            for pid in descendants(self.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                # its whole session when it leads one (children included)
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                self.process.kill()
        self.process.wait(timeout=10)


def descendants(pid: int) -> list[int]:
    """Every process below pid (its children's children included), as /proc lists them."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as children:
                    kids = [int(word) for word in children.read().split()]
            except OSError:
                continue
            found += kids
            queue += kids
    return found


def start(code: str, *, new_session: bool = True, env: dict | None = None,
          stdin=subprocess.DEVNULL, pass_fds: tuple[int, ...] = (),
          ready_pipe_closes: bool = True) -> Subject:
    """Start a subject running `code` (which must call ready() once its state is set up).

    `pass_fds` are inherited by the subject under the same numbers. A subject
    that cannot close its ready pipe (a parent blocked in vfork keeps its copy)
    says so with `ready_pipe_closes=False`.
    """
    read_end, write_end = os.pipe()
    child_env = dict(os.environ, **(env or {}), SUBJECT_READY_FD=str(write_end))
    process = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        pass_fds=(write_end, *pass_fds), start_new_session=new_session, env=child_env,
        close_fds=True,
    )
    os.close(write_end)
    ready_pipe_link = f"pipe:[{os.fstat(read_end).st_ino}]"
    with os.fdopen(read_end, "rb") as ready_pipe:
        line = _read_line(ready_pipe, process)
    running = Subject(process, line.decode().strip())
    if ready_pipe_closes:
        try:
            _await_closed(process, write_end, ready_pipe_link)
        except RuntimeError:
            running.stop()
            raise
    return running


def _await_closed(process: subprocess.Popen, fd: int, link: str) -> None:
    """Wait until the subject has closed its end of the ready pipe (ready() closes it
    right after writing), so no audit ever sees that pipe."""
    deadline = time.monotonic() + READY_TIMEOUT
    while _holds(process.pid, fd, link) and process.poll() is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"subject {process.pid} kept its ready pipe open")
        time.sleep(0.001)


def _holds(pid: int, fd: int, link: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}") == link
    except OSError:
        return False


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


def skip_if_refused(running: Subject, state: str) -> None:
    """Skip, with the kernel's reason, a state the subject's make() could not create."""
    import pytest

    if running.note.startswith("skip:"):
        pytest.skip(f"{state}: this kernel refuses it ({running.note[5:].strip()})")


@contextmanager
def subject(code: str, **kwargs) -> Iterator[Subject]:
    running = start(code, **kwargs)
    try:
        yield running
    finally:
        running.stop()
