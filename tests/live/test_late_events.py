"""Events applied late keep the kernel side's tracking right.

With the applier held back, a child is forked from a process whose fd N is followed (an
established TCP connection), closes N and opens /dev/kvm at the same number. When the
fork is applied, the inherited fd N is judged moved (another file now) and untracked in
the kernel: the open of /dev/kvm, applied next, must track it again, or its close would go
unreported and the child stay `nocr` for a device it no longer holds.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.subjects import subject
from tests.support.trackers import ARRIVAL_TIMEOUT, Brake, Recorder, attached_tracker

pytestmark = [pytest.mark.root, pytest.mark.bpf]

# Opens /dev/kvm at SIGUSR1: its transition is the one the brake holds the applier at.
OPENS_KVM = """
held = []
signal.signal(signal.SIGUSR1, lambda *_: held.append(os.open('/dev/kvm', os.O_RDONLY)))
ready(); hold()
"""

# Holds an established TCP connection at fd N; at SIGUSR1 forks a child that closes N,
# opens /dev/kvm at N, writes its pid to CHILD_PID_FILE, and closes the device at SIGUSR2.
FORKS_AND_REOPENS = """
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(1)
client = socket.create_connection(listener.getsockname()); accepted, _ = listener.accept()
number = client.fileno()
def fork_and_reopen(*_):
    if os.fork() == 0:
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
        os.close(number)
        fd = os.open("/dev/kvm", os.O_RDONLY)
        assert fd == number, (fd, number)
        with open(os.environ["CHILD_PID_FILE"] + ".new", "w") as out:
            out.write(str(os.getpid()))
        os.rename(os.environ["CHILD_PID_FILE"] + ".new", os.environ["CHILD_PID_FILE"])
        signal.sigwait([signal.SIGUSR2])
        os.close(fd)
        signal.sigwait([signal.SIGUSR2])
        os._exit(0)
signal.signal(signal.SIGUSR1, fork_and_reopen)
ready(str(number)); hold()
"""


def _await_child(pid_file: Path) -> int:
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while not pid_file.exists():  # written once the child holds /dev/kvm at N
        assert time.monotonic() < deadline, "the child never reopened fd N"
        time.sleep(0.01)
    return int(pid_file.read_text())


def _await_fd_codes(tracker, pid: int, number: int, codes: set[str]) -> None:
    """Returns once the table's reasons for fd N of pid have these codes (the state stays
    nocr throughout, for the accepted end the child still holds: no transition marks it)."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while True:
        tracked = tracker.table.tracked(pid) or {"reasons": []}
        if {reason["code"] for reason in tracked["reasons"] if reason["fd"] == number} == codes:
            return
        assert time.monotonic() < deadline, f"fd {number} never had {codes or 'no mark'}: {tracked}"
        time.sleep(0.01)


def test_a_device_opened_at_a_number_a_late_fork_untracks_still_reports_its_close(tmp_path):
    brake, recorder = Brake(), Recorder()
    pid_file = tmp_path / "child.pid"
    with attached_tracker(brake, recorder) as tracker, subject(OPENS_KVM) as stopper, \
            subject(FORKS_AND_REOPENS, env={"CHILD_PID_FILE": str(pid_file)}) as parent:
        recorder.await_state(parent.pid, "nocr")  # its TCP connection is followed
        brake.pid = stopper.pid
        os.kill(stopper.pid, signal.SIGUSR1)
        try:
            assert brake.holding.wait(ARRIVAL_TIMEOUT), "the applier was never held"
            os.kill(parent.pid, signal.SIGUSR1)
            child = _await_child(pid_file)
        finally:
            brake.released.set()
        try:
            # the fork and the open applied: fd N is /dev/kvm, no longer the TCP connection
            _await_fd_codes(tracker, child, int(parent.note), {"device.chr.unsupported"})
            os.kill(child, signal.SIGUSR2)  # closes /dev/kvm
            _await_fd_codes(tracker, child, int(parent.note), set())
        finally:
            os.kill(child, signal.SIGKILL)
