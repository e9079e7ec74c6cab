"""Socket rules this machine cannot reach with a real process, on fixtures (the reasons are
in tests/support/fixture_only_rules.py): a socket whose family's sock_diag listing fails, and a
unix socket of a type or state CRIU does not know (sk-unix.c: "Unknown state")."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from tracker.checks import sockets
from tracker.checks.sockets import unix
from tracker.checks.sockets.records import UnixSocket
from tracker.context import AuditContext
from tracker.procfs import OpenFd, Proc

SOCK_RAW, SOCK_STREAM, TCP_SYN_SENT = 3, 1, 2


def test_a_socket_whose_family_cannot_be_listed_is_unreadable(tmp_path: Path):
    # This process's real socket, seen through a /proc whose network namespace link names
    # one crwatch cannot join: every sock_diag listing there fails.
    pid = os.getpid()
    (tmp_path / str(pid) / "ns").mkdir(parents=True)
    (tmp_path / str(pid) / "net").mkdir()
    os.symlink("net:[4026539999]", tmp_path / str(pid) / "ns" / "net")
    proc = Proc(pid, tmp_path)
    ctx = AuditContext(root_pid=pid, tree_pids={pid}, proc_root=tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        fd, inode = sock.fileno(), os.fstat(sock.fileno()).st_ino
        found = list(sockets.check_fd(ctx, proc, OpenFd(proc, fd, f"socket:[{inode}]")))
    assert [f.code for f in found] == ["socket.unreadable"]
    assert found[0].message.startswith(
        f"fd {fd}: AF_UNIX socket:[{inode}]: sock_diag cannot list its sockets (")


def test_a_unix_socket_of_an_unknown_type_or_state_is_unsupported():
    proc = Proc(100, Path("/nonexistent"))
    ctx = AuditContext(root_pid=100, tree_pids={100}, proc_root=Path("/nonexistent"))
    open_fd = OpenFd(proc, 5, "socket:[77]")
    for kind, state in ((SOCK_RAW, 7), (SOCK_STREAM, TCP_SYN_SENT)):
        sock = UnixSocket(inode=77, type=kind, state=state, name=None, peer=0, icons=(),
                          rqlen=0, wqlen=0, shutdown=0)
        assert [(f.code, f.message) for f in unix.check(ctx, proc, open_fd, sock)] == [
            ("socket.unix.unsupported",
             f"fd 5: unix socket (unnamed) of type {kind} in state {state}")]
