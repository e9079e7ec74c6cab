"""The compiled fd walk (_crwatch_fdwalk, tracker/fdwalk.c, built by scripts/setup.sh) and the
walk in Python read the same fd table of a real process: the same fds, links and fdinfo
records, and an audit finds the same with either."""
from __future__ import annotations

import os

import pytest

from tests.support.subjects import subject
from tracker import procfs
from tracker.audit import audit
from tracker.procfs import Proc, ProcessGone

# Every kind of fd the walk meets, with fdinfo records of one line and of many: files
# (one deleted, one locked, one with a path of 3,000 bytes), pipes, a socketpair, a TCP
# listener, eventfds, epoll, inotify and memfd.
MIXED = """
import select, tempfile
directory = tempfile.mkdtemp()
deep = directory
while len(deep) < 3000:
    deep = os.path.join(deep, "d" * 200)
    os.mkdir(deep)
held = [open(os.path.join(deep, "long"), "w"), open("/etc/hostname")]
gone = open(os.path.join(directory, "gone"), "w"); os.unlink(gone.name); held.append(gone)
locked = open(os.path.join(directory, "locked"), "w"); fcntl.flock(locked, fcntl.LOCK_EX)
held += [locked, *os.pipe(), *socket.socketpair(), os.eventfd(0), os.memfd_create("m")]
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(); held.append(listener)
watched = os.eventfd(0); poll = select.epoll(); poll.register(watched); held += [watched, poll]
libc = ctypes.CDLL(None, use_errno=True)
inotify = libc.inotify_init1(0)
for path in (directory, "/etc"):
    libc.inotify_add_watch(inotify, path.encode(), 0x100)
held.append(inotify)
ready(); hold()
"""


@pytest.fixture
def compiled():
    if procfs.compiled_walk is None:
        pytest.skip("_crwatch_fdwalk is not built here (scripts/setup.sh builds it)")
    return procfs.compiled_walk


def table(open_fds) -> list[tuple[int, str, list[str]]]:
    return [(open_fd.fd, open_fd.target, open_fd.fdinfo_lines) for open_fd in open_fds]


def test_both_walks_read_the_same_fd_table(compiled):
    with subject(MIXED) as running:
        proc = Proc(running.pid)
        walked = table(proc.fds())
        in_python = table(proc.fds_walked_in_python())
    assert walked == in_python
    targets = [target for _, target, _ in walked]
    assert len(walked) >= 14
    assert any(target.startswith("pipe:[") for target in targets)
    assert any(target.endswith("(deleted)") for target in targets)
    assert any(len(target) > 3000 for target in targets)
    assert any(line.startswith("lock:") for _, _, lines in walked for line in lines)
    assert any(sum(line.startswith("inotify") for line in lines) == 2 for _, _, lines in walked)


def test_an_audit_finds_the_same_with_either_walk(compiled, monkeypatch):
    with subject(MIXED) as running:
        walked = audit(running.pid, tree=True)
        monkeypatch.setattr(procfs, "compiled_walk", None)
        in_python = audit(running.pid, tree=True)
    assert walked.findings == in_python.findings
    assert {finding.code for finding in walked.findings} >= {"lock.flock"}


def test_a_process_gone_is_gone_to_both(compiled):
    with subject("ready(); hold()") as running:
        pid = running.pid
    proc = Proc(pid)
    for walk in (proc.fds, proc.fds_walked_in_python):
        with pytest.raises(ProcessGone):
            walk()


def test_own_fds_read_alike(compiled):
    read_end, write_end = os.pipe()
    try:
        proc = Proc(os.getpid())
        walked = {fd: (target, lines) for fd, target, lines in table(proc.fds())}
        in_python = {fd: (target, lines) for fd, target, lines in
                     table(proc.fds_walked_in_python())}
    finally:
        os.close(read_end)
        os.close(write_end)
    assert walked[read_end] == in_python[read_end]
    assert walked[read_end][0].startswith("pipe:[")
