"""Sockets in real processes, judged by crwatch and by the real CRIU."""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.agreement import assert_agrees
from tests.subjects import skip_if_refused, subject
from tracker.audit import audit
from tracker.criu import find_criu
from tracker.profiles import profile
from tracker.verdict import document

# Helpers the subjects share (make(), from the subjects' prelude, reports a
# socket this kernel refuses to create).
HELPERS = """
import struct, ctypes
def ping_socket(family=socket.AF_INET, protocol=socket.IPPROTO_ICMP):
    # ping sockets need the caller's group in ping_group_range: open it for
    # root only while the socket is created
    path = "/proc/sys/net/ipv4/ping_group_range"
    with open(path) as file:
        saved = file.read()
    with open(path, "w") as file:
        file.write("0 0")
    try:
        return socket.socket(family, socket.SOCK_DGRAM, protocol)
    finally:
        with open(path, "w") as file:
            file.write(saved)
def keep_outside_tree(*fds):
    # a grandchild, reparented away from the subject, keeps these files open
    # (CRIU dumps the subject's descendants, so a child would be inside the tree)
    if os.fork() == 0:
        if os.fork() == 0:
            for name in os.listdir("/proc/self/fd"):
                if int(name) > 2 and int(name) not in fds:
                    try:
                        os.close(int(name))
                    except OSError:
                        pass
            hold()
        os._exit(0)
    os.wait()
def in_new_netns(create):
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(0x40000000) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        return create()
    finally:
        libc.setns(own, 0x40000000)
        os.close(own)
def inode(sock):
    return str(os.fstat(sock.fileno()).st_ino)
"""


@dataclass(frozen=True)
class State:
    name: str
    code: str
    expect: str
    codes: tuple[str, ...] = ()
    criu_error: str | None = None


def ok(name: str, code: str, *codes: str) -> State:
    return State(name, code, "ok", codes)


def needs(name: str, code: str, rule: str, criu_error: str) -> State:
    return State(name, code, "needs_options", (rule,), criu_error)


def blocked(name: str, code: str, rule: str, criu_error: str) -> State:
    return State(name, code, "blocked", (rule,), criu_error)


STATES = [
    ok("TCP listener", """
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()""", "socket.tcp.listen"),
    ok("IPv6 TCP listener", """
s = socket.socket(socket.AF_INET6); s.bind(("::1", 0)); s.listen()""", "socket.tcp.listen"),
    ok("TCP socket neither bound nor connected", "s = socket.socket()", "socket.tcp.closed"),
    needs("TCP connection with both ends in the subject", """
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.create_connection(l.getsockname()); a, _ = l.accept()""",
          "socket.tcp.established", "Connected TCP socket, consider using --tcp-established"),
    needs("TCP connection in CLOSE_WAIT", """
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.create_connection(l.getsockname()); a, _ = l.accept()
a.close(); l.close()
assert c.recv(1) == b""   # the peer's FIN has arrived""",
          "socket.tcp.established", "Connected TCP socket, consider using --tcp-established"),
    ok("UDP socket bound", """
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))""", "socket.udp.open"),
    ok("UDP socket connected", """
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.connect(("::1", 9))""", "socket.udp.open"),
    ok("UDP socket with unread datagrams", """
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.sendto(b"hello", s.getsockname())""",
       "socket.udp.open"),
    ok("UDP-Lite socket", """
s = make(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136)); s.bind(("127.0.0.1", 0))""",
       "socket.udp.open"),
    blocked("UDP socket corked, nothing pending", """
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
s.setsockopt(socket.IPPROTO_UDP, 1, 1)""", "socket.udp.corked", "Can't dump corked dgram socket"),
    blocked("UDP socket corked, unbound", """
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.IPPROTO_UDP, 1, 1)""",
            "socket.udp.corked", "Can't dump corked dgram socket"),
    ok("ICMP ping socket", """
s = ping_socket(); s.bind(("127.0.0.1", 0))""", "socket.icmp.open"),
    ok("ICMPv6 ping socket, unbound", """
s = ping_socket(socket.AF_INET6, socket.IPPROTO_ICMPV6)""", "socket.icmp.open"),
    ok("raw ICMP socket", """
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)""", "socket.raw.open"),
    ok("raw IPv6 socket of protocol 132", """
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 132)""", "socket.raw.open"),
    blocked("MPTCP socket", """
s = make(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262))""",
            "socket.inet.unsupported", "Unsupported proto 262"),
    blocked("TCP listener of another network namespace", """
def listener():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); return s
s = in_new_netns(listener)""", "socket.foreign_netns", "Socket state 10 obtained but expected 7"),
    blocked("unix socketpair of another network namespace", """
a, b = in_new_netns(socket.socketpair)""", "socket.foreign_netns", "not found"),
    ok("packet socket", """
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))""", "socket.packet.open"),
    ok("packet socket bound to lo, one membership", """
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800)); s.bind(("lo", 0x0800))
s.setsockopt(263, 1, struct.pack("iHH8s", socket.if_nametoindex("lo"), 1, 0, b""))""",
       "socket.packet.open"),
    blocked("packet socket with a membership added twice", """
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
membership = struct.pack("iHH8s", socket.if_nametoindex("lo"), 1, 0, b"")
s.setsockopt(263, 1, membership); s.setsockopt(263, 1, membership)""",
            "socket.packet.repeated_membership", "Multiple MC membership not supported"),
    ok("netlink route socket", """
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); s.bind((0, 0))""", "socket.netlink.open"),
    ok("netlink uevent socket in a group", """
s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15); s.bind((0, 1))""", "socket.netlink.open"),
    ok("netlink socket never bound", """
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)""", "socket.netlink.open"),
    blocked("netlink socket with a reply not read", """
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); s.bind((0, 0))
s.send(struct.pack("=IHHIIBxxx", 20, 18, 0x301, 1, 0, 0))   # RTM_GETLINK dump
import select; select.select([s], [], [])""", "socket.netlink.queued", "The socket has data to read"),
    blocked("netlink socket in group 33", """
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); s.bind((0, 0)); s.setsockopt(270, 1, 33)""",
            "socket.netlink.many_groups", "has more than 32 groups"),
    blocked("netlink socket in a group but never bound", """
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); s.setsockopt(270, 1, 1)""",
            "socket.netlink.groups_unbound", "is bound to groups but not to portid"),
    ok("unix stream socketpair", "a, b = socket.socketpair()"),
    ok("unix seqpacket socketpair", "a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)"),
    ok("unix stream socketpair, one end closed", "a, b = socket.socketpair(); b.close()"),
    ok("unix listener", """
s = socket.socket(socket.AF_UNIX); s.bind("\\0crwatch-listener"); s.listen()""", "socket.unix.listen"),
    ok("unix listener with its own connection not accepted", """
s = socket.socket(socket.AF_UNIX); s.bind("\\0crwatch-pending"); s.listen()
c = socket.socket(socket.AF_UNIX); c.connect("\\0crwatch-pending")""",
       "socket.unix.listen", "socket.unix.in_flight"),
    blocked("unix connection not accepted, with data written", """
s = socket.socket(socket.AF_UNIX); s.bind("\\0crwatch-pending-data"); s.listen()
c = socket.socket(socket.AF_UNIX); c.connect("\\0crwatch-pending-data"); c.send(b"hello")""",
            "socket.unix.in_flight_data", "Non-empty write queue on an in-flight socket"),
    blocked("unix listener holding a connection whose client closed", """
s = socket.socket(socket.AF_UNIX); s.bind("\\0crwatch-pending-closed"); s.listen()
c = socket.socket(socket.AF_UNIX); c.connect("\\0crwatch-pending-closed"); c.close()""",
            "socket.unix.in_flight_closed", "Found a closed in-flight socket"),
    needs("unix dgram socket connected to a named socket outside the tree", """
server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); server.bind("\\0crwatch-dgram-server")
keep_outside_tree(server.fileno()); server.close()
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.connect("\\0crwatch-dgram-server")""",
          "socket.unix.external_named", "External socket is used. Consider using --ext-unix-sk"),
    blocked("AF_VSOCK socket", """
s = make(lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM))""",
            "socket.unknown_family", "Unknown socket collected (family 40)"),
    blocked("AF_XDP socket", """
s = make(lambda: socket.socket(44, socket.SOCK_RAW))""",
            "socket.unknown_family", "Unknown socket collected (family 44)"),
]


@pytest.mark.parametrize("state", STATES, ids=[state.name for state in STATES])
def test_socket_agrees_with_criu(state: State):
    with subject(HELPERS + state.code + "\nready()\nhold()\n") as running:
        skip_if_refused(running, state.name)
        assert_agrees(running.pid, state.name, expect=state.expect, codes=set(state.codes),
                      criu_error=state.criu_error)


def test_tcp_listener_with_a_connection_not_accepted_needs_skip_in_flight():
    code = """
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
ready(str(s.getsockname()[1])); hold()"""
    with subject(code) as running, socket.create_connection(("127.0.0.1", int(running.note))):
        assert_agrees(running.pid, "TCP listener with a connection not accepted",
                      expect="needs_options", codes={"socket.tcp.in_flight"},
                      criu_error="In-flight connection (l)")


def test_tcp_connection_to_a_server_outside_the_tree_needs_tcp_established():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = f"c = socket.create_connection(('127.0.0.1', {port})); ready(); hold()"
        with subject(code) as running, server.accept()[0]:
            assert_agrees(running.pid, "TCP connection to a server outside the tree",
                          expect="needs_options", codes={"socket.tcp.established"},
                          criu_error="Connected TCP socket")


def test_unix_listener_with_a_connection_from_outside_not_accepted_is_ok(tmp_path: Path):
    path = tmp_path / "listener"
    code = f"s = socket.socket(socket.AF_UNIX); s.bind({str(path)!r}); s.listen(); ready(); hold()"
    with subject(code) as running, socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        assert_agrees(running.pid, "unix listener with a connection from outside not accepted",
                      expect="ok", codes={"socket.unix.listen"})


def test_unix_connection_to_a_listener_outside_not_accepted_is_ok(tmp_path: Path):
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "server")); server.listen()
        code = f"c = socket.socket(socket.AF_UNIX); c.connect({str(tmp_path / 'server')!r}); ready(); hold()"
        with subject(code) as running:
            assert_agrees(running.pid, "unix connection to a listener outside, not accepted",
                          expect="ok", codes={"socket.unix.in_flight"})


# An external unix socket that --ext-unix-sk does not cover: CRIU dumps it only when
# it is named with --external unix[INO]. assert_agrees cannot pass a value with an
# option, so these spell the three dumps out.
EXTERNAL = [
    ("unix stream socketpair, other end outside the tree", "socket.SOCK_STREAM",
     "socket.unix.external_stream", "Can't dump half of stream unix connection"),
    ("unix seqpacket socketpair, other end outside the tree", "socket.SOCK_SEQPACKET",
     "socket.unix.external_stream", "Can't dump half of stream unix connection"),
    ("unix dgram socketpair, other end outside the tree", "socket.SOCK_DGRAM",
     "socket.unix.external_unnamed", "Can't dump name-less external socket"),
]


@pytest.mark.parametrize("name,kind,code,ext_unix_sk_error", EXTERNAL, ids=[row[0] for row in EXTERNAL])
def test_external_unix_socket_needs_external_unix_inode(name: str, kind: str, code: str,
                                                        ext_unix_sk_error: str):
    subject_code = HELPERS + f"""
a, b = socket.socketpair(socket.AF_UNIX, {kind})
keep_outside_tree(b.fileno()); b.close()
ready(inode(a)); hold()"""
    with subject(subject_code) as running:
        _assert_needs_external_unix(running.pid, running.note, code, ext_unix_sk_error)


def test_accepted_unix_connection_to_a_server_outside_needs_external_unix_inode(tmp_path: Path):
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "server")); server.listen()
        code = HELPERS + f"""
c = socket.socket(socket.AF_UNIX); c.connect({str(tmp_path / 'server')!r}); ready(inode(c)); hold()"""
        with subject(code) as running, server.accept()[0]:
            _assert_needs_external_unix(running.pid, running.note, "socket.unix.external_stream",
                                        "Can't dump half of stream unix connection")


def _assert_needs_external_unix(pid: int, inode: str, code: str, ext_unix_sk_error: str) -> None:
    criu = find_criu()
    assert criu is not None, "no CRIU: scripts/setup.sh provides one"
    result = audit(pid)
    verdict = document(result, profile("criu", criu.version))
    assert verdict["verdict"] == "needs_options", verdict["reasons"]
    assert verdict["required_options"] == ["--external"]
    assert [f.option_value for f in result.findings if f.code == code] == [f"unix[{inode}]"]

    plain = criu.dump(pid)
    assert not plain.ok and "External socket is used" in plain.log, plain.errors
    legacy = criu.dump(pid, ["--ext-unix-sk"])
    assert not legacy.ok and ext_unix_sk_error in legacy.log, legacy.errors
    named = criu.dump(pid, ["--external", f"unix[{inode}]"])
    assert named.ok, named.errors
