"""Socket and pipe states the differential fuzzer found CRIU refusing, judged by crwatch and by
the real CRIU.

- An O_PATH fd reopened on a socket through /proc/PID/fd/N (link socket:[N], fdinfo flags
  with O_PATH): CRIU's dump_socket asks it for SO_DOMAIN first (sockets.c), which an O_PATH
  fd refuses with EBADF, whatever the family and whether the original fd is still open.
- An O_PATH fd on a pipe or FIFO: CRIU reads the queued data once per pipe (pipes.c
  dump_one_pipe_data), through its first fd in the dump's order (processes depth first
  from the root, fds ascending) that is not open write-only. An O_PATH fd has no access
  mode, so it counts as a read end; when it comes first, F_GETPIPE_SZ fails with EBADF.
- A socket made in a network namespace the process then left: sock_diag lists it in no
  namespace CRIU collects, so CRIU looks it up by the fd. When the tree's root has a network
  namespace of its own, an inet or netlink socket must come from a namespace CRIU knows (a
  tree process's or CRIU's own: net.c get_socket_ns), or "Unable to dump a socket from an
  external network namespace"; unix and packet sockets are "not found" wherever they come
  from. With the root in CRIU's namespace nothing is asked (socket.foreign_netns covers the
  listeners and unix sockets that are refused there).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.agreement import assert_agrees, namespace_lock_codes
from tests.support.subjects import subject
from tracker.checks import sockets
from tracker.context import AuditContext
from tracker.criu.options import arguments_for
from tracker.criu.runner import find_criu
from tracker.procfs import OpenFd, Proc

pytestmark = [pytest.mark.criu]

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


PIPE_DATA_ERROR = "Can't obtain piped data size"
# (state, code run before ready(), expected verdict)
PIPE_STATES = [
    ("O_PATH reopen of a pipe's read end, the read end closed",
     "r, w = os.pipe(); p = os.open(f'/proc/self/fd/{r}', os.O_PATH); os.close(r)", "blocked"),
    ("O_PATH reopen of a pipe's read end, the read end kept at a lower fd",
     "r, w = os.pipe(); p = os.open(f'/proc/self/fd/{r}', os.O_PATH)", "ok"),
    ("O_PATH reopen of a pipe's read end moved below the read end",
     "r, w = os.pipe(); p = os.open(f'/proc/self/fd/{r}', os.O_PATH)\n"
     "os.dup2(r, 90); os.dup2(p, r); os.close(p); p = r", "blocked"),
    ("O_PATH reopen of a pipe's write end, the read end closed",
     "r, w = os.pipe(); os.close(r); p = os.open(f'/proc/self/fd/{w}', os.O_PATH)", "blocked"),
    ("O_PATH reopen of a pipe's write end, the read end kept",
     "r, w = os.pipe(); p = os.open(f'/proc/self/fd/{w}', os.O_PATH)", "ok"),
    ("FIFO opened with O_PATH only",
     "os.mkfifo(FIFO); p = os.open(FIFO, os.O_PATH)", "blocked"),
    ("FIFO opened O_RDWR, then with O_PATH",
     "os.mkfifo(FIFO); r = os.open(FIFO, os.O_RDWR); p = os.open(FIFO, os.O_PATH)", "ok"),
    ("FIFO opened with O_PATH, then O_RDWR",
     "os.mkfifo(FIFO); p = os.open(FIFO, os.O_PATH); r = os.open(FIFO, os.O_RDWR)", "blocked"),
    ("FIFO opened write-only and with O_PATH",
     "os.mkfifo(FIFO); r = os.open(FIFO, os.O_RDWR); w = os.open(FIFO, os.O_WRONLY)\n"
     "os.close(r); p = os.open(FIFO, os.O_PATH)", "blocked"),
]


@pytest.mark.parametrize(("state", "code", "expect"), PIPE_STATES, ids=[s[0] for s in PIPE_STATES])
def test_an_o_path_fd_on_a_pipe_or_fifo(tmp_path, state, code, expect):
    body = f"FIFO = {str(tmp_path / 'fifo')!r}\n{code}\nready(str(p)); hold()"
    with subject(body) as s:
        if expect == "ok":
            document = assert_agrees(s.pid, state, expect="ok")
            assert "file.pipe.o_path" not in {r["code"] for r in document["reasons"]}
            return
        document = assert_agrees(s.pid, state, expect="blocked", codes={"file.pipe.o_path"},
                                 criu_error=PIPE_DATA_ERROR)
    reason = next(r for r in document["reasons"] if r["code"] == "file.pipe.o_path")
    assert reason["fd"] == int(s.note)
    assert "is open with O_PATH" in reason["message"]


def tree_with_pipe(o_path_in: str) -> str:
    """A parent and its child sharing one pipe: one holds the read end, the other only an
    O_PATH fd on it (both hold the write end)."""
    child_drops, parent_drops = ("r", "p") if o_path_in == "child" else ("p", "r")
    return f"""
r, w = os.pipe()
p = os.open(f"/proc/self/fd/{{r}}", os.O_PATH)
done_r, done_w = os.pipe()
child = os.fork()
if child == 0:
    os.close({child_drops}); os.close(done_r)
    os.close(done_w)   # last: the parent's read of done_r ends when it is closed
    signal.pause()
os.close({parent_drops}); os.close(done_w)
assert os.read(done_r, 1) == b""
os.close(done_r)
ready(); hold()
"""


@pytest.mark.parametrize(("o_path_in", "expect"), [("parent", "blocked"), ("child", "ok")])
def test_the_first_process_in_dump_order_decides_for_a_shared_pipe(o_path_in, expect):
    state = f"pipe shared by a parent and its child, the O_PATH fd in the {o_path_in}"
    with subject(tree_with_pipe(o_path_in)) as s:
        if expect == "ok":
            assert_agrees(s.pid, state, expect="ok", tree=True)
            return
        document = assert_agrees(s.pid, state, expect="blocked", codes={"file.pipe.o_path"},
                                 tree=True, criu_error=PIPE_DATA_ERROR)
    assert [r["pid"] for r in document["reasons"] if r["code"] == "file.pipe.o_path"] == [s.pid]


NETNS_SOCKETS = {
    "udp": "socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
    "udp_bound": "bound(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))",
    "udp6": "socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)",
    "tcp": "socket.socket()",
    "tcp_listener": "listening(socket.socket())",
    "raw": "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)",
    "raw_tcp": "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)",
    "netlink": "socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)",
    "netlink_bound": "nl_bound(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))",
    "unix": "socket.socketpair()[0]",
    "packet": "socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)",
}
NETNS_HELPERS = """
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
def bound(s): s.bind(("127.0.0.1", 0)); return s
def listening(s): s.bind(("127.0.0.1", 0)); s.listen(); return s
def nl_bound(s): s.bind((0, 0)); return s
def unshare_net(): assert libc.unshare(CLONE_NEWNET) == 0, ctypes.get_errno()
host = os.open("/proc/self/ns/net", os.O_RDONLY)
"""
NOT_FOUND = {"unix": "Unix socket", "packet": "Can't find packet socket"}


def refused_with_options(pid: int, document: dict, message: str) -> None:
    """CRIU's refusal names the state when given the options the reasons name (without
    them, a missing network lock can fail the dump first)."""
    result = find_criu().dump(pid, arguments_for(document["reasons"]))
    assert not result.ok and message in result.log, result.errors


@pytest.mark.parametrize("kind", sorted(NETNS_SOCKETS))
def test_a_socket_of_a_namespace_the_tree_left_is_refused(kind):
    # made in a namespace the process then left for one of its own, as the fuzzer's
    # socket_of_another_netns + unshare_namespace(net) does
    code = NETNS_HELPERS + f"""
unshare_net(); s = {NETNS_SOCKETS[kind]}
libc.setns(host, CLONE_NEWNET); os.close(host); unshare_net()
ready(str(s.fileno())); hold()
"""
    code_expected = "socket.foreign_netns" if kind in NOT_FOUND else "socket.external_netns"
    with subject(code) as s:
        document = assert_agrees(s.pid, f"{kind} socket of a network namespace the process left",
                                 expect="blocked", codes={code_expected} | namespace_lock_codes())
        refused_with_options(s.pid, document, NOT_FOUND.get(
            kind, "Unable to dump a socket from an external network namespace"))
    reason = next(r for r in document["reasons"] if r["code"] == code_expected)
    assert reason["fd"] == int(s.note)
    if code_expected == "socket.external_netns":
        assert "where no process of the dumped tree lives" in reason["message"]


@pytest.mark.parametrize("kind", ["udp", "tcp", "raw", "raw_tcp", "netlink_bound"])
def test_a_socket_of_crius_own_namespace_in_a_tree_of_its_own_is_fine(kind):
    # CRIU knows its own namespace: get_socket_ns finds it, and the socket is dumped unbound
    code = NETNS_HELPERS + f"""
os.close(host); s = {NETNS_SOCKETS[kind]}; unshare_net()
ready(); hold()
"""
    with subject(code) as s:
        assert_agrees(s.pid, f"{kind} socket made before the process left CRIU's network namespace",
                      expect="needs_options" if namespace_lock_codes() else "ok",
                      codes=namespace_lock_codes())


@pytest.mark.parametrize("kind", ["udp", "tcp_listener", "unix", "packet", "netlink_bound"])
def test_a_socket_of_a_namespace_a_child_lives_in_is_fine(kind):
    # CRIU collects the sockets of every namespace of the tree and finds the socket there
    code = NETNS_HELPERS + f"""
unshare_net(); s = {NETNS_SOCKETS[kind]}
made_in = os.open("/proc/self/ns/net", os.O_RDONLY)
libc.setns(host, CLONE_NEWNET); unshare_net()
done_r, done_w = os.pipe()
child = os.fork()
if child == 0:
    assert libc.setns(made_in, CLONE_NEWNET) == 0
    s.close(); os.close(made_in); os.close(host); os.close(done_r)
    os.close(done_w)   # last: the parent's read of done_r ends when it is closed
    signal.pause()
os.close(made_in); os.close(host); os.close(done_w)
assert os.read(done_r, 1) == b""
os.close(done_r)
ready(); hold()
"""
    with subject(code) as s:
        document = assert_agrees(
            s.pid, f"{kind} socket of the network namespace a child of the tree lives in",
            expect="needs_options" if namespace_lock_codes() else "ok",
            codes=namespace_lock_codes(), tree=True)
    assert not {"socket.foreign_netns", "socket.external_netns"} & {r["code"] for r in document["reasons"]}


@pytest.mark.parametrize("kind", ["tcp_listener", "unix", "packet"])
def test_a_socket_a_child_took_into_a_namespace_of_its_own_is_fine(kind):
    # the root stays in CRIU's namespace, whose sockets CRIU collects with the child's
    code = NETNS_HELPERS + f"""
os.close(host); s = {NETNS_SOCKETS[kind]}
done_r, done_w = os.pipe()
child = os.fork()
if child == 0:
    unshare_net(); os.close(done_r)
    os.close(done_w)   # last: the parent's read of done_r ends when it is closed
    signal.pause()
s.close(); os.close(done_w)
assert os.read(done_r, 1) == b""
os.close(done_r)
ready(); hold()
"""
    with subject(code) as s:
        document = assert_agrees(s.pid, f"{kind} socket a child took into a network namespace "
                                 f"of its own", expect="ok", tree=True)
    assert not {"socket.foreign_netns", "socket.external_netns"} & {r["code"] for r in document["reasons"]}
