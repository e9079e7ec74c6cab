"""Task states no other agreement test reaches, judged by crwatch and by the real CRIU:
- threads of one process stopped individually (CRIU's seize.c: "Individually stopped
  threads not supported"), which only a tracer can leave behind: it resumes its thread
  out of the group stop that holds the others;
- a thread in uninterruptible sleep (an info: compel's seize waits up to --timeout for
  the task to stop), here a request to a FUSE server that does not answer.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.agreement import assert_agrees
from tests.support.subjects import subject
from tests.support.tasks import SEIZE, wait_for_state

pytestmark = [pytest.mark.criu]

MS_NOSUID, MS_NODEV, MNT_DETACH = 0x2, 0x4, 0x2
AWAIT_S = 30.0

# A subject with a second thread; the note is that thread's tid.
TWO_THREADS = """
import threading
def second():
    ready(str(threading.get_native_id()))
    hold()
threading.Thread(target=second, daemon=True).start()
hold()
"""

# A tracer of `tid` that stops its process and resumes `tid` alone out of the group stop.
RESUME_ONE = SEIZE + """
PTRACE_CONT, PTRACE_EVENT_STOP, WALL = 7, 128, 0x40000000
def resume_alone(pid, tid):
    seize(tid)
    os.kill(pid, signal.SIGSTOP)
    while True:
        _, status = os.waitpid(tid, WALL)
        if status >> 16 == PTRACE_EVENT_STOP:        # the group stop reached tid: let it run
            libc.ptrace(PTRACE_CONT, tid, None, None)
            return
        # tid took the SIGSTOP itself: deliver it, which starts the group stop
        libc.ptrace(PTRACE_CONT, tid, None, signal.SIGSTOP)
"""


def test_a_thread_resumed_alone_while_the_others_are_stopped_is_blocked():
    with subject(TWO_THREADS) as s:
        tid = int(s.note)
        with subject(RESUME_ONE + f"resume_alone({s.pid}, {tid})\nready()\nhold()"):
            wait_for_state(s.pid, "T")
            # Only a tracer leaves a thread running out of a group stop (detaching puts it
            # back into the stop), so CRIU meets the tracer first: it cannot interrupt tid.
            assert_agrees(s.pid, "one thread running, the other stopped (a tracer resumed it)",
                          expect="blocked", codes={"task.stopped_threads", "task.traced"},
                          criu_error=f"Unable to interrupt task: {tid}")


# ---------------------------------------------------------------- uninterruptible sleep

def wait_for_thread_state(pid: int, tid: int, state: str) -> None:
    deadline = time.monotonic() + AWAIT_S
    while _thread_state(pid, tid) != state:
        assert time.monotonic() < deadline, f"tid {tid} never reached state {state}"
        time.sleep(0.01)


def _thread_state(pid: int, tid: int) -> str:
    with open(f"/proc/{pid}/task/{tid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0]


class FuseConnection:
    """The server end of a FUSE mount, held by this test: closing it aborts the connection,
    which wakes every waiting request with ENOTCONN. Closed once, from whichever thread
    comes first (a second close could hit an fd number reused meanwhile)."""

    def __init__(self, device: int):
        self.device = device
        self._lock = threading.Lock()
        self._open = True

    @property
    def open(self) -> bool:
        return self._open

    def abort(self) -> None:
        with self._lock:
            if self._open:
                self._open = False
                os.close(self.device)


@contextmanager
def unanswered_fuse_mount(directory: Path) -> Iterator[FuseConnection]:
    """A FUSE file system mounted on `directory` whose server (this test) never answers:
    every request waits, killable only, in state D, until the connection is aborted."""
    libc = ctypes.CDLL(None, use_errno=True)
    directory.mkdir()
    connection = FuseConnection(os.open("/dev/fuse", os.O_RDWR))
    options = f"fd={connection.device},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"crwatch-test", bytes(directory), b"fuse", MS_NOSUID | MS_NODEV, options):
        error = ctypes.get_errno()
        connection.abort()
        raise OSError(error, f"mount fuse on {directory}")
    try:
        yield connection
    finally:
        connection.abort()
        libc.umount2(bytes(directory), MNT_DETACH)


def tracer_of(pid: int, tid: int) -> int:
    with open(f"/proc/{pid}/task/{tid}/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("TracerPid:")))


def test_a_thread_in_uninterruptible_sleep_dumps_once_it_wakes(tmp_path: Path):
    mount = tmp_path / "fuse"
    with unanswered_fuse_mount(mount) as connection:
        code = f"""
import threading
def stat_on_fuse():
    tid.append(threading.get_native_id()); event.set()
    try:
        os.stat({str(mount / 'file')!r})    # waits in D until the connection is aborted
    except OSError:
        pass
    hold()
tid, event = [], threading.Event()
threading.Thread(target=stat_on_fuse, daemon=True).start()
event.wait()
ready(str(tid[0]))
hold()
"""
        with subject(code) as s:
            tid = int(s.note)
            wait_for_thread_state(s.pid, tid, "D")

            # CRIU waits (up to --timeout) for a task in D to stop: wake the thread as soon
            # as CRIU has seized it, the way a short uninterruptible wait ends by itself.
            def wake_when_seized() -> None:
                deadline = time.monotonic() + AWAIT_S
                while (connection.open and tracer_of(s.pid, tid) == 0
                       and time.monotonic() < deadline):
                    time.sleep(0.001)
                connection.abort()

            waker = threading.Thread(target=wake_when_seized)
            waker.start()
            try:
                assert_agrees(s.pid, "a thread in uninterruptible sleep (an unanswered FUSE "
                              "request) that wakes while CRIU waits", expect="ok",
                              codes={"task.uninterruptible"})
            finally:
                connection.abort()
                waker.join()
