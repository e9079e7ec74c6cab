"""sockets: /proc/net parsing, sock_diag decoding and the per-socket judgement, on fixtures."""
from __future__ import annotations

import ctypes
import os
import socket
import struct
from pathlib import Path

import pytest

from tests.support.sockets import load_socket_filter
from tracker.checks import sockets
from tracker.checks.sockets import bpf, diag, fd_query, inet, netlink, procnet, queue, tables
from tracker.checks.sockets.records import InetSocket, Membership, PacketSocket, UnixSocket
from tracker.context import AuditContext
from tracker.procfs import OpenFd, Proc
from tracker.profiles import profile
from tracker.rules import Finding
from tracker.safe_text import visible
from tracker.verdict import judge

PID = 100

# Captured on x86-64 (little endian): a connected ping socket, a TIME_WAIT-like
# line that no fd holds, a bound ICMPv6 ping socket and a raw ICMPv6 socket.
ICMP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
   59: 0100007F:38B5 0100007F:0000 01 00000000:00000340 00:00000000 00000000     0        0 887225 2 00000000e4d07109 0
   60: 0100007F:38B6 0100007F:0000 06 00000000:00000000 00:00000000 00000000     0        0 0 2 00000000e4d07109 0
"""
ICMP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
   60: 00000000000000000000000001000000:38B6 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 887226 2 00000000cdb6be5e 0
"""
RAW6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  151: 00000000000000000000000000000000:003A 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 887227 2 00000000c7bf3bb0 0
"""


def test_addresses_decode_from_the_kernels_word_order():
    assert procnet.decode_endpoint("0100007F:1F90", "little") == ("127.0.0.1:8080", 8080)
    assert procnet.decode_endpoint("00000000000000000000000001000000:1F90", "little")[0] == "[::1]:8080"
    assert procnet.decode_endpoint("0000000000000000FFFF00000100007F:0035", "little")[0] == \
        "[::ffff:127.0.0.1]:53"
    assert procnet.decode_endpoint("00000000:0000", "little") == ("0.0.0.0:0", 0)
    assert procnet.decode_address("7F000001", "big") == "127.0.0.1"


def test_proc_table_keeps_fd_backed_sockets_with_states_and_queues():
    table = procnet.parse_inet_table(ICMP, "ICMP", 4, "little")
    assert list(table) == [887225]               # the line without an inode is no fd's
    ping = table[887225]
    assert (ping.local, ping.remote, ping.state_name, ping.rx_queue) == (
        "127.0.0.1:14517", "127.0.0.1:0", "ESTABLISHED", 0x340)
    assert procnet.parse_inet_table(ICMP6, "ICMP", 6, "little")[887226].local == "[::1]:14518"
    raw = procnet.parse_inet_table(RAW6, "RAW", 6, "little")[887227]
    assert (raw.port, raw.state_name) == (58, "CLOSE")    # a raw socket's port is its protocol
    assert procnet.parse_inet_table("", "RAW", 6) == {}    # a kernel without IPv6


def inet_socket(state: int, local: str = "127.0.0.1:8080", remote: str = "0.0.0.0:0",
                rx_queue: int = 0, protocol: str = "TCP", port: int = 8080) -> InetSocket:
    return InetSocket(inode=1, protocol=protocol, version=4, state=state, local=local, remote=remote,
                      port=port, rx_queue=rx_queue, tx_queue=0)


def judged(sock: InetSocket) -> list[tuple[str, str]]:
    proc = Proc(PID, Path("/nonexistent"))
    return [(f.code, f.message) for f in inet.check(proc, OpenFd(proc, 5, "socket:[1]"), sock)]


def test_tcp_states_map_to_criu_decisions():
    assert judged(inet_socket(10)) == [("socket.tcp.listen", "fd 5: TCP listener on 127.0.0.1:8080")]
    assert judged(inet_socket(10, rx_queue=2)) == [
        ("socket.tcp.in_flight", "fd 5: TCP listener on 127.0.0.1:8080 has 2 connection(s) not yet accepted")]
    assert judged(inet_socket(1, "127.0.0.1:41394", "127.0.0.1:8080")) == [
        ("socket.tcp.established", "fd 5: TCP connection 127.0.0.1:41394 -> 127.0.0.1:8080 is established")]
    assert judged(inet_socket(4, "127.0.0.1:41394", "127.0.0.1:8080"))[0][1].endswith("is in FIN_WAIT1")
    assert judged(inet_socket(2))[0][0] == "socket.tcp.established"        # SYN_SENT
    assert judged(inet_socket(6))[0][0] == "socket.tcp.unknown_state"      # TIME_WAIT
    assert judged(inet_socket(12))[0][0] == "socket.tcp.unknown_state"     # NEW_SYN_RECV
    assert judged(inet_socket(7, "0.0.0.0:1", protocol="RAW", port=1))[0] == (
        "socket.raw.open", "fd 5: raw IPv4 socket for IP protocol 1")
    assert judged(inet_socket(1, "127.0.0.1:14517", "127.0.0.1:0", protocol="ICMP"))[0] == (
        "socket.icmp.open", "fd 5: ICMP ping socket 127.0.0.1:14517 connected to 127.0.0.1:0")


def test_lookup_goes_through_the_namespace_tables_in_order(tmp_path: Path):
    proc_dir = tmp_path / str(PID)
    (proc_dir / "net").mkdir(parents=True)
    (proc_dir / "ns").mkdir()
    os.symlink("net:[4026539999]", proc_dir / "ns" / "net")   # a namespace crwatch cannot join
    (proc_dir / "net" / "raw6").write_text(RAW6)
    (proc_dir / "net" / "icmp").write_text(ICMP)
    proc = Proc(PID, tmp_path)
    ctx = AuditContext(root_pid=PID, tree_pids={PID}, proc_root=tmp_path)

    assert tables.find(ctx, proc, 887227).port == 58
    assert tables.find(ctx, proc, 887225).protocol == "ICMP"
    assert tables.table(ctx, proc, "unix").error       # sock_diag there failed: kept as an error
    assert tables.table(ctx, proc, "icmp6").get(887226) is None   # no file: a kernel without it
    assert tables.find(ctx, proc, 424242) is None


# ---------------------------------------------------------------- sock_diag replies

def attribute(kind: int, payload: bytes) -> bytes:
    header = struct.pack("=HH", 4 + len(payload), kind)
    return header + payload + b"\0" * (-len(payload) % 4)


def test_unix_reply_decodes_name_peer_pending_connections_and_queues():
    body = (struct.pack("=BBBxIII", socket.AF_UNIX, 1, 10, 4242, 0, 0)
            + attribute(diag.UNIX_DIAG_NAME, b"\0crwatch")
            + attribute(diag.UNIX_DIAG_ICONS, struct.pack("=3I", 11, 0, 12))
            + attribute(diag.UNIX_DIAG_RQLEN, struct.pack("=II", 3, 128))
            + attribute(diag.UNIX_DIAG_SHUTDOWN, b"\x02"))
    assert diag.decode_unix(body) == UnixSocket(
        inode=4242, type=1, state=10, name="@crwatch", peer=0, icons=(11, 0, 12),
        rqlen=3, wqlen=128, shutdown=2)
    connected = struct.pack("=BBBxIII", socket.AF_UNIX, 2, 1, 4243, 0, 0) + attribute(
        diag.UNIX_DIAG_PEER, struct.pack("=I", 4244)) + attribute(diag.UNIX_DIAG_NAME, b"/run/x.sock")
    decoded = diag.decode_unix(connected)
    assert (decoded.peer, decoded.name, decoded.icons) == (4244, "/run/x.sock", ())


def test_unix_names_keep_their_bytes_and_a_path_ends_at_its_nul():
    def name_of(raw: bytes) -> str:
        return diag.decode_unix(struct.pack("=BBBxIII", socket.AF_UNIX, 1, 10, 7, 0, 0)
                                + attribute(diag.UNIX_DIAG_NAME, raw)).name

    # a binder that counts the terminating NUL in the address: CRIU reads the C string
    assert name_of(b"/run/s\xff\x1b.sock\0") == "/run/s\udcff\x1b.sock"
    # an abstract name is bytes to its length, NULs included, kept as they are
    assert name_of(b"\0abs\xff\0x") == "@abs\udcff\0x"
    assert visible(name_of(b"\0abs\xff\0x")) == "@abs\\xff\\x00x"


def test_netlink_reply_decodes_groups_and_unread_bytes():
    body = (struct.pack("=BBBBIIIIII", socket.AF_NETLINK, 3, 0, 0, 77, 0, 0, 5151, 0, 0)
            + attribute(diag.NETLINK_DIAG_MEMINFO, struct.pack("=9I", 4352, *[0] * 8))
            + attribute(diag.NETLINK_DIAG_GROUPS, struct.pack("=2I", 0b101, 1)))
    sock = diag.decode_netlink(body)
    assert (sock.inode, sock.portid, sock.rmem, sock.groups) == (5151, 77, 4352, (0b101, 1))
    assert netlink.joined_groups(sock.groups) == [1, 3, 33]


def test_criu_counts_netlink_group_words_after_dropping_one_empty_tail():
    assert netlink.group_words((1, 0)) == 1
    assert netlink.group_words((1, 1)) == 2
    assert netlink.group_words((1, 0, 0, 0)) == 3    # only one empty tail word is dropped
    assert netlink.group_words(()) == 0


def test_packet_reply_decodes_binding_and_memberships():
    body = (struct.pack("=BBHIII", socket.AF_PACKET, 3, 0x0003, 6161, 0, 0)
            + attribute(diag.PACKET_DIAG_INFO, struct.pack("=6I", 1, 0, 0, 0, 0, 0))
            + attribute(diag.PACKET_DIAG_MCLIST, struct.pack("=IIHH32s", 1, 2, 1, 0, b"")))
    assert diag.decode_packet(body) == PacketSocket(
        inode=6161, type=3, protocol=3, ifindex=1, memberships=(Membership(1, 2, 1),))


def test_inet_reply_decodes_endpoints_queues_and_inode():
    body = struct.pack("=BBBB", socket.AF_INET6, 10, 0, 0) + struct.pack("!HH", 8080, 0) + (
        socket.inet_pton(socket.AF_INET6, "::1") + bytes(16) + bytes(12)
        + struct.pack("=IIIII", 0, 3, 128, 0, 7171))
    sock = diag.inet_query("TCP", 6).decode(body)
    assert sock == InetSocket(inode=7171, protocol="TCP", version=6, state=10, local="[::1]:8080",
                              remote="[::]:0", port=8080, rx_queue=3, tx_queue=128)
    v4 = struct.pack("=BBBB", socket.AF_INET, 1, 0, 0) + struct.pack("!HH", 41394, 53) + (
        socket.inet_aton("10.0.0.2") + bytes(12) + socket.inet_aton("10.0.0.1") + bytes(12) + bytes(12)
        + struct.pack("=IIIII", 0, 0, 0, 0, 7172))
    assert diag.inet_query("UDP", 4).inode(v4) == 7172
    assert diag.decode_inet(v4, "UDP").remote == "10.0.0.1:53"


def test_dump_replies_end_at_done_and_report_errors():
    def message(kind: int, body: bytes) -> bytes:
        return struct.pack("=IHHII", 16 + len(body), kind, 2, 1, 0) + body

    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with reader, writer:
        writer.send(message(20, b"first") + b"\0" * 3 + message(20, b"secnd!!!"))
        writer.send(message(diag.NLMSG_DONE, struct.pack("=i", 0)))
        assert [bytes(body) for body in diag.replies(reader)] == [b"first", b"secnd!!!"]
        writer.send(message(diag.NLMSG_ERROR, struct.pack("=i", -2)))
        try:
            list(diag.replies(reader))
        except diag.DiagUnavailable as error:
            assert "No such file" in str(error)
        else:
            raise AssertionError("an NLMSG_ERROR reply must raise")


# ---------------------------------------------------------------- versions

def test_criu_before_4_2_cannot_dump_inet_sockets_on_this_kernel():
    listener = [Finding("socket.tcp.listen", "fd 3: TCP listener on 127.0.0.1:8080", PID, fd=3)]
    assert judge(listener, profile("criu", (4, 1, 1)))[0] == "blocked"
    assert judge(listener, profile("criu", (4, 2, 1)))[0] == "ok"
    pair = [Finding("socket.tcp.established", "fd 4: TCP connection ... is established", PID, fd=4)]
    assert judge(pair, profile("criu", (4, 1, 1)))[0] == "blocked"
    assert judge(pair, profile("criu", (4, 2, 1))) == ("needs_options", ["--tcp-established"])


def test_every_rule_is_declared_once_with_a_socket_code():
    codes = [rule.code for rule in sockets.RULES]
    assert len(codes) == len(set(codes))
    assert all(code.startswith("socket.") for code in codes)


# ---------------------------------------------------------------- queues, filters, link-local

def test_reading_a_queue_consumes_nothing_and_puts_the_peek_offset_back():
    receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    null = os.open("/dev/null", os.O_RDONLY)
    with receiver, sender:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        receiver.setsockopt(socket.SOL_SOCKET, queue.SO_PEEK_OFF, 3)   # the holder's own offset
        sender.send(b"first")
        socket.send_fds(sender, [b"second"], [null])
        os.close(null)
        open_before = set(os.listdir("/proc/self/fd"))
        ctx = AuditContext(root_pid=os.getpid(), tree_pids={os.getpid()})
        queued = queue.queue_of(ctx, os.getpid(), receiver.fileno(),
                                os.fstat(receiver.fileno()).st_ino)

        assert queued.control == ("SCM_CREDENTIALS (SO_PASSCRED)",)
        assert queued.in_flight == ("/dev/null",)      # found in the second message
        assert set(os.listdir("/proc/self/fd")) == open_before   # every received fd closed
        assert receiver.getsockopt(socket.SOL_SOCKET, queue.SO_PEEK_OFF) == 3
        receiver.setsockopt(socket.SOL_SOCKET, queue.SO_PEEK_OFF, -1)
        assert receiver.recv(64) == b"first"
        data, ancillary, _, _ = receiver.recvmsg(64, 1024)
        fds = [fd for _, kind, body in ancillary if kind == socket.SCM_RIGHTS
               for fd in struct.unpack(f"{len(body) // 4}i", body)]
        assert data == b"second" and len(fds) == 1     # the fd in flight is still there
        os.close(fds[0])


def test_in_flight_files_are_reported_on_the_holder_with_their_own_rule():
    ctx = AuditContext(root_pid=PID, tree_pids={PID})
    ctx.table("sockets.unix-queues", dict)[7] = queue.Queued(
        in_flight=("/dev/kvm",),
        findings=(Finding("device.chr.unsupported",
                          "fd 21: character device /dev/kvm (10:232) cannot be dumped", 1, fd=21),))
    sock = UnixSocket(7, 2, 7, None, 0, (), 5, 0, 0)
    found = list(queue.check(ctx, Proc(PID), OpenFd(Proc(PID), 4, "socket:[7]"), sock,
                             "unix dgram socket (unnamed)"))
    assert [(f.code, f.pid, f.fd) for f in found] == [("socket.unix.queue_fds", PID, 4),
                                                     ("device.chr.unsupported", PID, 4)]
    assert found[1].message == ("fd 4: in flight in the queue of unix dgram socket (unnamed): "
                                "character device /dev/kvm (10:232) cannot be dumped")
    assert found[1].remedy.startswith("have the receiver take the files in flight off the queue")


def test_a_listener_or_an_empty_socket_has_no_queue_to_read():
    assert queue.has_queue(UnixSocket(7, 2, 7, None, 0, (), 5, 0, 0))
    assert not queue.has_queue(UnixSocket(7, 2, 7, None, 0, (), 0, 0, 0))
    assert not queue.has_queue(UnixSocket(7, 1, 10, "@l", 0, (8,), 1, 128, 0))   # backlog count


@pytest.mark.root
def test_a_loaded_socket_filter_program_makes_sockets_worth_asking():
    program = load_socket_filter()
    try:
        assert bpf.socket_filters_possible()
    finally:
        os.close(program)


@pytest.mark.root
def test_each_loaded_program_is_opened_once_for_its_type(monkeypatch):
    """Asking a program's type opens an fd on it, which other crwatch services' probes
    see: a second walk of an unchanged table opens nothing, and a program loaded since
    is asked once."""
    bpf.socket_filters_possible()  # the programs loaded now (crwatch's own, others')
    asked = []
    real = bpf._program_type
    monkeypatch.setattr(bpf, "_program_type", lambda program: asked.append(program) or real(program))
    bpf.socket_filters_possible()
    assert asked == []
    program = load_socket_filter()
    try:
        assert bpf.socket_filters_possible()
        assert len(asked) == 1
        assert bpf.socket_filters_possible()   # known now: a socket filter, without asking
        assert len(asked) == 1
    finally:
        os.close(program)


@pytest.mark.root
def test_a_walk_that_found_no_socket_filter_holds_until_a_program_is_loaded(monkeypatch):
    if bpf.socket_filters_possible():
        pytest.skip("a socket filter program is loaded on this host: no walk can find none")
    questions = []
    real = bpf._next_program
    monkeypatch.setattr(bpf, "_next_program",
                        lambda ids, after: questions.append(after) or real(ids, after))
    assert not bpf.socket_filters_possible()
    assert len(questions) == 1  # is anything loaded past the last walk? no
    program = load_socket_filter()
    try:
        assert bpf.socket_filters_possible()  # loaded since: walked, and found
        assert len(questions) > 2
    finally:
        os.close(program)  # nothing else holds it: unloaded
    assert not bpf.socket_filters_possible()  # found last time: walked again
    questions.clear()
    assert not bpf.socket_filters_possible()
    assert len(questions) == 1


@pytest.mark.root
def test_so_get_filter_tells_an_ebpf_filter_from_a_classic_one_or_none():
    plain, classic, extended = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3))
    program = load_socket_filter()
    with plain, classic, extended:
        accept_all = ctypes.create_string_buffer(struct.pack("HBBI", 6, 0, 0, 0xFFFFFFFF))
        classic.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HL", 1, ctypes.addressof(accept_all)))
        extended.setsockopt(socket.SOL_SOCKET, 50, struct.pack("i", program))
        os.close(program)
        assert [fd_query.has_ebpf_filter(os.getpid(), sock.fileno(), os.fstat(sock.fileno()).st_ino)
                for sock in (plain, classic, extended)] == [False, False, True]


def test_only_link_local_ipv6_sockets_with_a_port_need_an_interface():
    def sock(local: str, port: int, version: int = 6) -> InetSocket:
        return InetSocket(1, "UDP", version, 7, local, "[::]:0", port, 0, 0)
    assert inet._link_local(sock("[fe80::1]:53", 53))
    assert inet._link_local(sock("[febf::1]:53", 53))           # all of fe80::/10
    assert not inet._link_local(sock("[fe80::1]:0", 0))
    assert not inet._link_local(sock("[fec0::1]:53", 53))
    assert not inet._link_local(sock("[ff02::1]:53", 53))       # CRIU's multicast test never matches
    assert not inet._link_local(sock("127.0.0.1:53", 53, 4))
