"""Sockets of every family and state (tracker/checks/sockets; CRIU sockets.c, sk-unix.c,
sk-inet.c, sk-tcp.c, sk-packet.c, sk-netlink.c)."""
from __future__ import annotations

import ctypes
import os
import select
import socket
import struct

from bench.fuzz import generator
from bench.fuzz.runtime import CLONE, libc, syscall

UNIX_KINDS = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM,
              "seqpacket": socket.SOCK_SEQPACKET}
SO_PASSCRED, SCM_CREDENTIALS, SO_ATTACH_FILTER, SO_ATTACH_BPF = 16, 2, 26, 50
SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_RX_RING, PACKET_FANOUT = 263, 1, 5, 18


def unix_name(ctx, abstract: bool) -> str:
    return f"\0crwatch-fuzz-{os.getpid()}-{ctx.path('u').rsplit('/', 1)[1]}" if abstract \
        else ctx.path("sock")


def ping_socket(family):
    """A ping socket: the caller's group must be in ping_group_range while it is made."""
    path = "/proc/sys/net/ipv4/ping_group_range"
    with open(path) as file:
        saved = file.read()
    with open(path, "w") as file:
        file.write("0 0")
    try:
        return socket.socket(family, socket.SOCK_DGRAM,
                             socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6)
    finally:
        with open(path, "w") as file:
            file.write(saved)


def loopback(family):
    return "127.0.0.1" if family == socket.AF_INET else "::1"


def draw_family(rng):
    return rng.choice(("inet", "inet6"))


FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}


# ---- unix ----------------------------------------------------------------------------

@generator("sockets", weight=2, draw=lambda rng, place: {
    "kind": rng.choice(tuple(UNIX_KINDS)), "data": rng.random() < 0.5, "close_one": rng.random() < 0.3})
def unix_socketpair(ctx, kind, data, close_one):
    """a unix socketpair (stream, dgram or seqpacket), with data queued, maybe one end closed"""
    a, b = ctx.keep(*socket.socketpair(socket.AF_UNIX, UNIX_KINDS[kind]))
    if data:
        a.send(b"queued")
    if close_one:
        b.close()


@generator("sockets", draw=lambda rng, place: {"kind": rng.choice(tuple(UNIX_KINDS)),
                                               "data": rng.random() < 0.5})
def unix_socketpair_across_fork(ctx, kind, data):
    """a unix socketpair whose one end this process keeps and whose other end its children keep"""
    a, b = ctx.keep(*socket.socketpair(socket.AF_UNIX, UNIX_KINDS[kind]))
    if data:
        b.send(b"to the parent")
    ctx.shared_fds.add(b.fileno())
    ctx.in_children.append(lambda: os.close(a.fileno()))
    ctx.after_children.append(lambda children: os.close(b.fileno()) if children else None)


@generator("sockets", weight=1.5, draw=lambda rng, place: {
    "kind": rng.choice(("stream", "seqpacket")), "abstract": rng.random() < 0.5,
    "pending": rng.choice(("none", "none", "connected", "with_data", "closed", "accepted"))})
def unix_listener(ctx, kind, abstract, pending):
    """a unix listener (named or abstract) with a connection pending, with data, closed, or accepted"""
    name = unix_name(ctx, abstract)
    listener = ctx.keep(socket.socket(socket.AF_UNIX, UNIX_KINDS[kind]))
    listener.bind(name)
    listener.listen(8)
    if pending == "none":
        return
    client = ctx.keep(socket.socket(socket.AF_UNIX, UNIX_KINDS[kind]))
    client.connect(name)
    if pending == "with_data":
        client.send(b"in flight")
    elif pending == "closed":
        client.close()
    elif pending == "accepted":
        ctx.keep(listener.accept()[0])


@generator("sockets", draw=lambda rng, place: {"abstract": rng.random() < 0.5,
                                               "queued": rng.randint(0, 3)})
def unix_dgram_bound(ctx, abstract, queued):
    """a bound unix datagram socket with datagrams queued from another socket of the process"""
    name = unix_name(ctx, abstract)
    server = ctx.keep(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    server.bind(name)
    sender = ctx.keep(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    for _ in range(queued):
        sender.sendto(b"datagram", name)


@generator("sockets", draw=lambda rng, place: {
    "passed": rng.choice(("pipe", "file", "socket", "eventfd", "itself")),
    "kind": rng.choice(("stream", "dgram"))})
def unix_scm_rights(ctx, passed, kind):
    """a unix socket with an SCM_RIGHTS message queued, carrying a pipe, file, socket or eventfd"""
    a, b = ctx.keep(*socket.socketpair(socket.AF_UNIX, UNIX_KINDS[kind]))
    fd = {"pipe": lambda: os.pipe()[0], "file": lambda: os.open("/etc/hostname", os.O_RDONLY),
          "socket": lambda: socket.socket().detach(), "eventfd": lambda: os.eventfd(0),
          "itself": lambda: os.dup(b.fileno())}[passed]()
    socket.send_fds(a, [b"fd"], [fd])
    os.close(fd)


@generator("sockets", draw=lambda rng, place: {"explicit": rng.random() < 0.5,
                                               "kind": rng.choice(("stream", "dgram"))})
def unix_scm_credentials(ctx, explicit, kind):
    """a unix socket with SO_PASSCRED and an SCM_CREDENTIALS message queued"""
    a, b = ctx.keep(*socket.socketpair(socket.AF_UNIX, UNIX_KINDS[kind]))
    b.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)
    ancillary = [(socket.SOL_SOCKET, SCM_CREDENTIALS,
                  struct.pack("iII", os.getpid(), os.getuid(), os.getgid()))] if explicit else []
    a.sendmsg([b"credentials"], ancillary)


@generator("sockets", draw=lambda rng, place: {"kind": rng.choice(tuple(UNIX_KINDS))})
def unix_passcred(ctx, kind):
    """a unix socket with SO_PASSCRED set and nothing queued"""
    a, b = ctx.keep(*socket.socketpair(socket.AF_UNIX, UNIX_KINDS[kind]))
    a.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)


@generator("sockets", draw=lambda rng, place: {"kind": rng.choice(tuple(UNIX_KINDS) + ("named_dgram",))})
def unix_peer_outside(ctx, kind):
    """a unix socket whose peer a process outside the tree holds (socketpair end or named dgram server)"""
    if kind == "named_dgram":
        name = unix_name(ctx, True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(name)
        ctx.outside(server.fileno())
        server.close()
        client = ctx.keep(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        client.connect(name)
        return
    a, b = socket.socketpair(socket.AF_UNIX, UNIX_KINDS[kind])
    ctx.outside(b.fileno())
    b.close()
    ctx.keep(a)


# ---- inet ----------------------------------------------------------------------------

@generator("sockets", weight=1.5, draw=lambda rng, place: {
    "family": draw_family(rng), "pending": rng.choice(("none", "none", "self", "outside"))})
def tcp_listener(ctx, family, pending):
    """a TCP listener, maybe with a connection not yet accepted (from the process or from outside)"""
    listener = ctx.keep(socket.socket(FAMILIES[family]))
    listener.bind((loopback(FAMILIES[family]), 0))
    listener.listen(8)
    address = listener.getsockname()[:2]
    if pending == "self":
        ctx.keep(socket.create_connection(address))
    elif pending == "outside":
        ctx.outside(setup=lambda: ctx.kept.append(socket.create_connection(address)))


@generator("sockets", weight=1.5, draw=lambda rng, place: {"family": draw_family(rng),
                                                           "data": rng.random() < 0.5})
def tcp_connection(ctx, family, data):
    """an established TCP connection with both ends in the process, data queued or not"""
    connect_tcp(ctx, family, "none", data, False)


@generator("sockets", draw=lambda rng, place: {
    "family": draw_family(rng), "shutdown": rng.choice(("none", "write", "read", "both")),
    "data": rng.random() < 0.5, "peer_closed": rng.random() < 0.5})
def tcp_connection_closing(ctx, family, shutdown, data, peer_closed):
    """a TCP connection of the process shut down (read, write, both) or whose peer closed"""
    connect_tcp(ctx, family, shutdown, data, peer_closed or shutdown == "none")


def connect_tcp(ctx, family, shutdown, data, peer_closed):
    listener = socket.socket(FAMILIES[family])
    listener.bind((loopback(FAMILIES[family]), 0))
    listener.listen(1)
    client = ctx.keep(socket.create_connection(listener.getsockname()[:2]))
    server = ctx.keep(listener.accept()[0])
    listener.close()
    if data:
        client.send(b"queued")
    if shutdown != "none":
        client.shutdown({"write": socket.SHUT_WR, "read": socket.SHUT_RD, "both": socket.SHUT_RDWR}[shutdown])
    if peer_closed:
        server.close()
        select.select([client], [], [], 5)   # the peer's FIN has arrived


@generator("sockets", draw=lambda rng, place: {"family": draw_family(rng),
                                               "bound": rng.random() < 0.5})
def tcp_unconnected(ctx, family, bound):
    """a TCP socket never connected, bound to a port or not"""
    sock = ctx.keep(socket.socket(FAMILIES[family]))
    if bound:
        sock.bind((loopback(FAMILIES[family]), 0))


@generator("sockets", draw=lambda rng, place: {
    "family": draw_family(rng), "state": rng.choice(("unbound", "bound", "connected")),
    "queued": rng.randint(0, 2), "lite": rng.random() < 0.2})
def udp_socket(ctx, family, state, queued, lite):
    """a UDP (or UDP-Lite) socket, unbound, bound or connected, with datagrams queued"""
    af = FAMILIES[family]
    sock = ctx.keep(socket.socket(af, socket.SOCK_DGRAM, 136 if lite else 0))
    if state != "unbound" or queued:
        sock.bind((loopback(af), 0))
    if state == "connected":
        sock.connect((loopback(af), 9))
    sender = socket.socket(af, socket.SOCK_DGRAM)
    for _ in range(queued):
        sender.sendto(b"datagram", sock.getsockname()[:2])
    sender.close()


@generator("sockets", weight=0.5, draw=lambda rng, place: {"bound": rng.random() < 0.5})
def udp_corked(ctx, bound):
    """a UDP socket with UDP_CORK set"""
    sock = ctx.keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    if bound:
        sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.IPPROTO_UDP, 1, 1)


@generator("sockets", draw=lambda rng, place: {"family": draw_family(rng), "bound": rng.random() < 0.5})
def icmp_socket(ctx, family, bound):
    """an ICMP (ping) socket, bound or not"""
    sock = ctx.keep(ping_socket(FAMILIES[family]))
    if bound:
        sock.bind((loopback(FAMILIES[family]), 0))


@generator("sockets", draw=lambda rng, place: {"family": draw_family(rng),
                                               "protocol": rng.choice((1, 6, 17, 132, 255))})
def raw_socket(ctx, family, protocol):
    """a raw IP socket of some protocol"""
    ctx.keep(socket.socket(FAMILIES[family], socket.SOCK_RAW, protocol))


@generator("sockets", draw=lambda rng, place: {
    "kind": rng.choice(("plain", "bound", "membership", "membership_twice", "rx_ring", "fanout"))})
def packet_socket(ctx, kind):
    """a packet socket: plain, bound to lo, with a membership (once or twice), an rx ring, fanout"""
    sock = ctx.keep(socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)))
    if kind == "plain":
        return
    sock.bind(("lo", 3))
    membership = struct.pack("iHH8s", socket.if_nametoindex("lo"), 1, 0, b"")
    if kind.startswith("membership"):
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, membership)
        if kind == "membership_twice":
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, membership)
    elif kind == "rx_ring":
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("IIII", 4096, 1, 2048, 2))
    elif kind == "fanout":
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("I", os.getpid() & 0xffff))


@generator("sockets", draw=lambda rng, place: {
    "state": rng.choice(("unbound", "bound", "group", "queued", "group_33", "group_unbound")),
    "protocol": rng.choice((0, 15))})
def netlink_socket(ctx, state, protocol):
    """a netlink socket (route or uevent): unbound, bound, in a group, with a reply queued, in
    group 33 (route only), grouped unbound"""
    if state == "group_33":
        protocol = 0   # uevent has 32 groups
    sock = ctx.keep(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol))
    if state == "group_unbound":
        sock.setsockopt(270, 1, 1)
        return
    if state != "unbound":
        sock.bind((0, 1 if state == "group" else 0))
    if state == "group_33":
        sock.setsockopt(270, 1, 33)
    elif state == "queued" and protocol == 0:
        sock.send(struct.pack("=IHHIIBxxx", 20, 18, 0x301, 1, 0, 0))   # RTM_GETLINK dump
        select.select([sock], [], [], 5)


SOCKET_OPTIONS = {
    "keepalive": (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    "reuseaddr": (socket.SOL_SOCKET, socket.SO_REUSEADDR, 1),
    "reuseport": (socket.SOL_SOCKET, socket.SO_REUSEPORT, 1),
    "rcvbuf": (socket.SOL_SOCKET, socket.SO_RCVBUF, 65536),
    "sndbuf": (socket.SOL_SOCKET, socket.SO_SNDBUF, 32768),
    "priority": (socket.SOL_SOCKET, socket.SO_PRIORITY, 3),
    "mark": (socket.SOL_SOCKET, socket.SO_MARK, 7),
    "bindtodevice": (socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo"),
    "linger": (socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 5)),
    "timestamp": (socket.SOL_SOCKET, 29, 1),   # SO_TIMESTAMP
    "rcvlowat": (socket.SOL_SOCKET, socket.SO_RCVLOWAT, 4),
    "tos": (socket.IPPROTO_IP, socket.IP_TOS, 0x10),
    "freebind": (socket.IPPROTO_IP, 15, 1),
    "nodelay": (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
    "keepidle": (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30),
}


@generator("sockets", weight=1.5, draw=lambda rng, place: {
    "kind": rng.choice(("tcp_listener", "udp", "unix")),
    "options": rng.sample(sorted(SOCKET_OPTIONS), rng.randint(1, 4))})
def socket_with_options(ctx, kind, options):
    """a TCP listener, UDP or unix socket with socket options set (buffers, marks, device, linger...)"""
    family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
    sock = ctx.keep(socket.socket(family, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM))
    for name in options:
        level, option, value = SOCKET_OPTIONS[name]
        if family == socket.AF_UNIX and (level != socket.SOL_SOCKET or name == "reuseport"):
            continue
        if kind == "udp" and level == socket.IPPROTO_TCP:
            continue
        sock.setsockopt(level, option, value)
    if kind == "tcp_listener":
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)


def classic_filter(ctx):
    """struct sock_fprog with one instruction: accept the whole packet."""
    program = ctx.keep(ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0xffffffff)))
    return struct.pack("HxxxxxxQ", 1, ctypes.addressof(program))


def ebpf_socket_filter(ctx) -> int:
    code = ctx.keep(ctypes.create_string_buffer(struct.pack("<BBhiBBhi", 0xb7, 0, 0, 0, 0x95, 0, 0, 0)))
    license = ctx.keep(ctypes.create_string_buffer(b"GPL"))
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("IIQQ", attr, 0, 1, 2, ctypes.addressof(code), ctypes.addressof(license))
    return syscall(321, 5, attr, len(attr))


FILTERED = {"udp": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
            "tcp_listener": lambda: socket.socket(),
            "unix": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM),
            "packet": lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))}


def filtered_socket(ctx, kind):
    sock = ctx.keep(FILTERED[kind]())
    if kind == "tcp_listener":
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
    return sock


@generator("sockets", draw=lambda rng, place: {"kind": rng.choice(tuple(FILTERED))})
def socket_with_classic_filter(ctx, kind):
    """a socket with a classic BPF filter attached (SO_ATTACH_FILTER)"""
    filtered_socket(ctx, kind).setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, classic_filter(ctx))


@generator("sockets", draw=lambda rng, place: {"kind": rng.choice(tuple(FILTERED)),
                                               "keep_program": rng.random() < 0.3})
def socket_with_ebpf_filter(ctx, kind, keep_program):
    """a socket with an eBPF program attached as its filter (SO_ATTACH_BPF), the program fd kept or not"""
    program = ebpf_socket_filter(ctx)
    filtered_socket(ctx, kind).setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, program)
    if keep_program:
        ctx.keep(program)
    else:
        os.close(program)


@generator("sockets", weight=0.7, draw=lambda rng, place: {
    "kind": rng.choice(("vsock", "xdp", "mptcp"))})
def unsupported_socket(ctx, kind):
    """a socket CRIU has no code for: AF_VSOCK, AF_XDP, MPTCP (the others this kernel lacks)"""
    make = {"vsock": lambda: socket.socket(40, socket.SOCK_STREAM),
            "xdp": lambda: socket.socket(44, socket.SOCK_RAW),
            "mptcp": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)}[kind]
    ctx.keep(make())


@generator("sockets", draw=lambda rng, place: {"kind": rng.choice(("tcp_listener", "socketpair", "udp"))})
def socket_of_another_netns(ctx, kind):
    """a socket made in a network namespace the process then left"""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE["net"]) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        if kind == "socketpair":
            ctx.keep(*socket.socketpair())
        else:
            kind_of = socket.SOCK_STREAM if kind == "tcp_listener" else socket.SOCK_DGRAM
            sock = ctx.keep(socket.socket(socket.AF_INET, kind_of))
            if kind == "tcp_listener":
                sock.bind(("127.0.0.1", 0))
                sock.listen(1)
    finally:
        libc.setns(own, CLONE["net"])
        os.close(own)
