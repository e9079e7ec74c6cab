"""Sockets in real processes, judged by crwatch and by the real CRIU."""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.agreement import assert_agrees, connection_lock_codes
from tests.support.sockets import HELPERS
from tests.support.subjects import skip_if_refused, subject
from tracker.criu.runner import find_criu

pytestmark = [pytest.mark.criu]


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
    # Queued messages (CRIU's dump_sk_queue): fds in flight are dumped, every other
    # control message is refused.
    *[blocked(f"unix {kind} socket with SO_PASSCRED and a queued message", f"""
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_{kind.upper()})
b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
a.send(b"hello")""", "socket.unix.queue_control", "Control messages in queue, not supported")
      for kind in ("dgram", "stream", "seqpacket")],
    blocked("unix dgram socket with SO_PASSPIDFD and a queued message", """
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
b.setsockopt(socket.SOL_SOCKET, 76, 1)
a.send(b"hello")""", "socket.unix.queue_control", "Control messages in queue, not supported"),
    blocked("unix seqpacket socket with SO_TIMESTAMP and a queued message", """
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
b.setsockopt(socket.SOL_SOCKET, 29, 1)
a.send(b"hello")""", "socket.unix.queue_control", "Control messages in queue, not supported"),
    ok("unix stream socket with SO_TIMESTAMP and queued data (streams carry no timestamps)", """
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
b.setsockopt(socket.SOL_SOCKET, 29, 1)
a.send(b"hello")"""),
    ok("unix dgram socket with SO_PASSCRED and an empty queue", """
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)"""),
    ok("unix dgram socket whose sender has SO_PASSCRED (the receiver gets no credentials)", """
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
a.send(b"hello")"""),
    *[ok(f"unix {kind} socket with /dev/null in flight", f"""
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_{kind.upper()})
null = os.open("/dev/null", os.O_RDONLY)
socket.send_fds(a, [b"hello"], [null]); os.close(null)""", "socket.unix.queue_fds")
      for kind in ("dgram", "stream", "seqpacket")],
    blocked("unix dgram socket with /dev/kvm in flight", """
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
kvm = make(lambda: os.open("/dev/kvm", os.O_RDWR))
socket.send_fds(a, [b"hello"], [kvm]); os.close(kvm)""",
            "device.chr.unsupported", "Can't dump file"),
    blocked("unix stream socket with /dev/kvm in flight behind a plain message", """
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
a.send(b"first")
kvm = make(lambda: os.open("/dev/kvm", os.O_RDWR))
socket.send_fds(a, [b"second"], [kvm]); os.close(kvm)""",
            "device.chr.unsupported", "Can't dump file"),
    needs("unix dgram socket with an established TCP socket in flight", """
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.create_connection(l.getsockname()); a, _ = l.accept(); l.close(); a.close()
x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
socket.send_fds(x, [b"hello"], [c.fileno()]); c.close()""",
          "socket.tcp.established", "Connected TCP socket, consider using --tcp-established"),
    ok("unix socket whose only peer is in flight in a queue of the tree", """
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
socket.send_fds(x, [b"hello"], [b.fileno()]); b.close()""", "socket.unix.queue_fds"),
    ok("both ends of a unix socketpair in flight in one message", """
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
socket.send_fds(x, [b"both ends"], [a.fileno(), b.fileno()]); a.close(); b.close()""",
       "socket.unix.queue_fds"),
    blocked("unix socket in flight whose own queue carries credentials", """
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1); a.send(b"hello")
x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
socket.send_fds(x, [b"a socket"], [b.fileno()]); b.close()""",
            "socket.unix.queue_control", "Control messages in queue, not supported"),
    needs("unix socket whose only peer is in flight in a queue outside the tree", """
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
socket.send_fds(x, [b"hello"], [b.fileno()]); b.close()
keep_outside_tree(y.fileno()); y.close(); x.close()""",
          "socket.unix.external_stream", "External socket is used"),
    # Socket filters (CRIU's dump_socket_filter): classic ones are read back, eBPF ones cannot be.
    ok("UDP socket with a classic BPF filter", """
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); classic_filter(s)""",
       "socket.udp.open"),
    ok("unix dgram socket with a classic BPF filter", """
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM); classic_filter(b)"""),
    blocked("UDP socket with an eBPF filter", """
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
make(lambda: ebpf_filter(s))""",
            "socket.filter.ebpf", "Can't get socket filter len"),
    blocked("unix dgram socket with an eBPF filter", """
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM); make(lambda: ebpf_filter(b))""",
            "socket.filter.ebpf", "Can't get socket filter len"),
    blocked("packet socket with an eBPF filter", """
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); make(lambda: ebpf_filter(s))""",
            "socket.filter.ebpf", "Can't get socket filter len"),
    # Socket mappings (CRIU's dump_socket_map): only packet rings, with their socket open.
    ok("packet socket with its ring mapped", "s = packet_ring()", "socket.packet.open"),
    blocked("packet ring mapped after its socket was closed", "s = packet_ring(); s.close()",
            "memory.socket_ring_closed", "Mmap-ed socket"),
    blocked("TCP socket mapped (zerocopy receive area), then closed", """
s = socket.socket(); mmap_socket(s); s.close()""", "memory.socket", "Can't find packet socket"),
    blocked("TCP listener mapped (zerocopy receive area)", """
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); mmap_socket(s)""",
            "memory.socket", "BUG at criu/sockets.c"),
    # IPv6 link-local addresses: bound again through the socket's interface.
    ok("UDPv6 socket bound to a link-local address with its scope", """
address, index = make(link_local)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind((address, 0, 0, index))""",
       "socket.udp.open"),
    ok("TCPv6 listener on a link-local address with its scope", """
address, index = make(link_local)
s = socket.socket(socket.AF_INET6); s.bind((address, 0, 0, index)); s.listen()""",
       "socket.tcp.listen"),
    ok("UDPv6 socket connected to a link-local address", """
address, index = make(link_local)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.connect(("fe80::1", 9, 0, index))""",
       "socket.udp.open"),
    blocked("UDPv6 socket bound to a link-local address, then to no interface", """
address, index = make(link_local)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind((address, 0, 0, index))
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"")""",
            "socket.inet.link_local_no_device", "couldn't find ifname"),
    blocked("TCPv6 listener on a link-local address, then bound to no interface", """
address, index = make(link_local)
s = socket.socket(socket.AF_INET6); s.bind((address, 0, 0, index)); s.listen()
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"")""",
            "socket.inet.link_local_no_device", "couldn't find ifname"),
]


@pytest.mark.parametrize("state", STATES, ids=[state.name for state in STATES])
def test_socket_agrees_with_criu(state: State):
    with subject(HELPERS + state.code + "\nready()\nhold()\n") as running:
        skip_if_refused(running, state.name)
        assert_agrees(running.pid, state.name, expect=state.expect,
                      codes=set(state.codes) | _lock_codes(state.codes),
                      criu_error=state.criu_error)


def _lock_codes(codes: tuple[str, ...]) -> set[str]:
    """A state with a TCP connection CRIU locks also needs the lock where iptables is missing."""
    return connection_lock_codes() if "socket.tcp.established" in codes else set()


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
                          expect="needs_options",
                          codes={"socket.tcp.established"} | connection_lock_codes(),
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
        server.bind(str(tmp_path / "server"))
        server.listen()
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
        server.bind(str(tmp_path / "server"))
        server.listen()
        code = HELPERS + f"""
c = socket.socket(socket.AF_UNIX); c.connect({str(tmp_path / 'server')!r}); ready(inode(c)); hold()"""
        with subject(code) as running, server.accept()[0]:
            _assert_needs_external_unix(running.pid, running.note, "socket.unix.external_stream",
                                        "Can't dump half of stream unix connection")


def _assert_needs_external_unix(pid: int, inode: str, code: str, ext_unix_sk_error: str) -> None:
    verdict = assert_agrees(pid, f"unix socket {inode} with its peer outside the tree",
                            expect="needs_options", codes={code},
                            criu_error="External socket is used")
    assert verdict["required_options"] == ["--external"]
    assert [r["option_value"] for r in verdict["reasons"] if r["code"] == code] == [f"unix[{inode}]"]
    # The legacy option is no substitute for naming the socket.
    legacy = find_criu().dump(pid, ["--ext-unix-sk"])
    assert not legacy.ok and ext_unix_sk_error in legacy.log, legacy.errors
