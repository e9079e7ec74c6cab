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


def table(open_fds) -> list[tuple[int, str, list[str], dict[str, str]]]:
    return [(open_fd.fd, open_fd.target, open_fd.fdinfo_lines, open_fd.fdinfo)
            for open_fd in open_fds]


def test_both_walks_read_the_same_fd_table(compiled):
    with subject(MIXED) as running:
        proc = Proc(running.pid)
        walked = table(proc.fds())
        in_python = table(proc.fds_walked_in_python())
    assert walked == in_python
    targets = [target for _, target, _, _ in walked]
    assert len(walked) >= 14
    assert any(target.startswith("pipe:[") for target in targets)
    assert any(target.endswith("(deleted)") for target in targets)
    assert any(len(target) > 3000 for target in targets)
    assert any(line.startswith("lock:") for _, _, lines, _ in walked for line in lines)
    assert any(sum(line.startswith("inotify") for line in lines) == 2
               for _, _, lines, _ in walked)
    assert all(int(fields["flags"], 8) >= 0 for _, _, _, fields in walked)


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
    ends = (read_end, write_end)
    try:
        proc = Proc(os.getpid())    # this process's other fds come and go meanwhile
        walked = table(open_fd for open_fd in proc.fds() if open_fd.fd in ends)
        in_python = table(open_fd for open_fd in proc.fds_walked_in_python()
                          if open_fd.fd in ends)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert walked == in_python
    assert [target[:6] for _, target, _, _ in walked] == ["pipe:[", "pipe:["]


# Records as the kernel never writes them: every ASCII line break and blank that
# str.splitlines() and str.strip() know, repeated keys, lines with no colon or nothing,
# and a record that is not ASCII (its fields are then made in Python).
ODD_RECORDS = {
    3: b"pos:\t0\nflags:\t02\nmnt_id:\t15\n",
    4: b" a : b \r\nc:d\re:f\x0bg:h\x0ci:j\x1ck:l\x1dm:n\x1eo:\x1fp\x1f\n\nnocolon\n:\n",
    5: b"flags:\t01\nflags:\t02\nlock:\t1: FLOCK  ADVISORY  WRITE 1 00:1a:2 0 EOF\n",
    6: b"name:\t\xc2\xa0caf\xc3\xa9\xc2\xa0\nend:\tx\xe2\x80\xa8y:z\n",
    7: b"bad:\t\xff\xfe\n",
    8: b"",
    9: b"last:\tno newline",
}


def test_fields_are_made_as_python_makes_them(compiled, tmp_path):
    process = tmp_path / "42"
    (process / "fd").mkdir(parents=True)
    (process / "fdinfo").mkdir()
    for fd, record in ODD_RECORDS.items():
        (process / "fd" / str(fd)).symlink_to(f"/fixture/{fd}")
        (process / "fdinfo" / str(fd)).write_bytes(record)
    proc = Proc(42, proc_root=tmp_path)
    walked, in_python = table(proc.fds()), table(proc.fds_walked_in_python())
    assert walked == in_python
    fields = {fd: rest[-1] for fd, *rest in walked}
    assert fields[4]["a"] == "b" and fields[4]["o"] == "p" and fields[4]["nocolon"] == ""
    assert fields[5]["flags"] == "01" and fields[6]["name"] == "caf\xe9"
    assert fields[8] == {} and fields[9] == {"last": "no newline"}
