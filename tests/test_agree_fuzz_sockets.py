"""Socket and pipe states the differential fuzzer found CRIU refusing, judged by crwatch and by
the real CRIU.

- An O_PATH fd reopened on a socket through /proc/PID/fd/N (link socket:[N], fdinfo flags
  with O_PATH): CRIU's dump_socket asks it for SO_DOMAIN first (sockets.c), which an O_PATH
  fd refuses with EBADF, whatever the family and whether the original fd is still open.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.agreement import assert_agrees
from tests.subjects import subject
from tracker.checks import sockets
from tracker.context import AuditContext
from tracker.procfs import OpenFd, Proc

SOCKETS = {
    "unix": "socket.socketpair()[0]",
    "tcp": "socket.socket()",
    "tcp_listener": "listening(socket.socket())",
    "udp": "socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
    "netlink": "socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)",
}


def o_path_socket(make: str, keep_original: bool) -> str:
    return f"""
def listening(s):
    s.bind(("127.0.0.1", 0)); s.listen(); return s
original = {make}
path_fd = os.open(f"/proc/self/fd/{{original.fileno()}}", os.O_PATH)
{"" if keep_original else "original.close()"}
ready(str(path_fd)); hold()
"""


@pytest.mark.parametrize(("kind", "keep_original"), [
    ("unix", True), ("unix", False), ("tcp", False), ("tcp_listener", True), ("udp", True),
    ("netlink", False),
])
def test_an_o_path_fd_on_a_socket_is_blocked(kind, keep_original):
    with subject(o_path_socket(SOCKETS[kind], keep_original)) as s:
        state = f"O_PATH fd on a {kind} socket, original {'kept' if keep_original else 'closed'}"
        document = assert_agrees(s.pid, state, expect="blocked", codes={"socket.o_path"},
                                 criu_error="Can't get 1:39 opt: Bad file descriptor")
    reason = next(r for r in document["reasons"] if r["code"] == "socket.o_path")
    assert reason["fd"] == int(s.note)
    assert "is open with O_PATH" in reason["message"]
    # The O_PATH fd gets this one reason; a kept original is judged as any socket.
    assert [r["code"] for r in document["reasons"] if r["fd"] == int(s.note)] == ["socket.o_path"]


def test_a_fixture_socket_with_o_path_flags_is_blocked(tmp_path: Path):
    # A fixture tree: the flags come from its fdinfo file alone, no socket is asked.
    fdinfo = tmp_path / "100" / "fdinfo"
    fdinfo.mkdir(parents=True)
    (fdinfo / "7").write_text("pos:\t0\nflags:\t012000000\nmnt_id:\t10\nino:\t4242\n")
    proc = Proc(100, tmp_path)
    ctx = AuditContext(root_pid=100, tree_pids={100}, proc_root=tmp_path)
    found = list(sockets.check_fd(ctx, proc, OpenFd(proc, 7, "socket:[4242]")))
    assert [(f.code, f.fd) for f in found] == [("socket.o_path", 7)]
    assert found[0].message.startswith("fd 7: socket:[4242] is open with O_PATH")
