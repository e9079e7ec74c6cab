"""A sock_diag client: the unix, netlink, packet, TCP, UDP and UDP-Lite sockets of one network namespace.

Unix, netlink and packet sockets keep what CRIU needs out of /proc (a unix
socket's peer and pending connections, netlink groups above 32, packet
memberships), and inet_diag lists TCP several times faster than
/proc/net/tcp, so these are read the way CRIU reads them: one
NETLINK_SOCK_DIAG dump per family. A dump sees only the namespace of its
diag socket, so for another namespace the socket is opened by a short-lived
thread that first joins it (setns changes only the calling thread).
Replies are kept undecoded, by inode, until a socket is asked about: a
busy host has many more sockets than the audited tree. One unix, TCP, UDP or
UDP-Lite socket can also be asked alone (`ask`: an exact request, no dump),
its reply decoded by the same code.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading
from typing import Callable, Iterator, NamedTuple

from tracker.checks.sockets.records import (
    TCP_NEW_SYN_RECV,
    TCP_SYN_RECV,
    TCP_TIME_WAIT,
    InetSocket,
    Membership,
    NetlinkSocket,
    PacketSocket,
    UnixSocket,
    endpoint,
)

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
CLONE_NEWNET = 0x40000000
TIMEOUT = 10.0
NO_COOKIE = (0xFFFFFFFF, 0xFFFFFFFF)

_NLMSG = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_ERRNO = struct.Struct("=i")
_U32 = struct.Struct("=I")
_RQLEN = struct.Struct("=II")

# Requests (linux/unix_diag.h, netlink_diag.h, packet_diag.h, inet_diag.h) and their replies' fixed parts.
_UNIX_REQ = struct.Struct("=BBHIIIII")        # family, protocol, pad, states, ino, show, cookie
_UNIX_MSG = struct.Struct("=BBBxIII")         # family, type, state, ino, cookie
_NETLINK_REQ = struct.Struct("=BBHIIII")      # family, protocol, pad, ino, show, cookie
_NETLINK_MSG = struct.Struct("=BBBBIIIIII")   # family, type, protocol, state, portid, dst_portid,
#                                               dst_group, ino, cookie
_PACKET_REQ = struct.Struct("=BBHIIII")       # family, protocol, pad, ino, show, cookie
_PACKET_MSG = struct.Struct("=BBHIII")        # family, type, num (the ethertype), ino, cookie
_PACKET_INFO = struct.Struct("=IIIIII")       # index, version, reserve, copy_thresh, tstamp, flags
_PACKET_MCLIST = struct.Struct("=IIHH32s")    # index, count, type, alen, addr
_INET_REQ = struct.Struct("=BBBxI48x")        # family, protocol, ext, pad, states, socket id (any)
_INET_EXACT_REQ = struct.Struct("=BBBxI2s2s16s16sIII")  # ... states, sport, dport, src, dst, if, cookie
_INET_MSG = struct.Struct("=BBxx2s2s16s16s12xIIIII")  # family, state, sport, dport, src, dst,
#                                             (if, cookie), expires, rqueue, wqueue, uid, inode

UDIAG_SHOW_NAME, UDIAG_SHOW_PEER, UDIAG_SHOW_ICONS, UDIAG_SHOW_RQLEN = 0x1, 0x4, 0x8, 0x10
UNIX_DIAG_NAME, UNIX_DIAG_PEER, UNIX_DIAG_ICONS, UNIX_DIAG_RQLEN, UNIX_DIAG_SHUTDOWN = 0, 2, 3, 4, 6
UNIX_STATE_OFFSET = 2                         # in a unix reply: the byte to find listeners without decoding
NDIAG_SHOW_MEMINFO, NDIAG_SHOW_GROUPS = 0x1, 0x2
NDIAG_PROTO_ALL = 255
NETLINK_DIAG_MEMINFO, NETLINK_DIAG_GROUPS = 0, 1
PACKET_SHOW_INFO, PACKET_SHOW_MCLIST = 0x1, 0x2
PACKET_DIAG_INFO, PACKET_DIAG_MCLIST = 0, 1
# No fd holds a socket in these states: leave them out of the dump.
INET_STATES = 0xFFFFFFFF & ~(1 << TCP_SYN_RECV | 1 << TCP_TIME_WAIT | 1 << TCP_NEW_SYN_RECV)
INET_PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "UDPLITE": 136}


class DiagUnavailable(Exception):
    """sock_diag could not list a family (module missing, no permission, namespace gone)."""


class Query(NamedTuple):
    """One dump request, where each reply keeps its inode, and how to decode a reply."""

    request: bytes
    inode_offset: int
    decode: Callable[[bytes], object]

    def inode(self, body: bytes) -> int:
        return _U32.unpack_from(body, self.inode_offset)[0]


def unix_query() -> Query:
    show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN
    return Query(_message(_UNIX_REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, show, *NO_COOKIE)),
                 4, decode_unix)


def netlink_query() -> Query:
    show = NDIAG_SHOW_MEMINFO | NDIAG_SHOW_GROUPS
    request = _NETLINK_REQ.pack(socket.AF_NETLINK, NDIAG_PROTO_ALL, 0, 0, show, *NO_COOKIE)
    return Query(_message(request), 16, decode_netlink)


def packet_query() -> Query:
    show = PACKET_SHOW_INFO | PACKET_SHOW_MCLIST
    return Query(_message(_PACKET_REQ.pack(socket.AF_PACKET, 0, 0, 0, show, *NO_COOKIE)),
                 4, decode_packet)


def inet_query(protocol: str, version: int) -> Query:
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    request = _INET_REQ.pack(family, INET_PROTOCOLS[protocol], 0, INET_STATES)

    def decode(body: bytes) -> InetSocket:
        return decode_inet(body, protocol)
    return Query(_message(request), _INET_MSG.size - 4, decode)


def unix_exact_query(inode: int) -> Query:
    """The unix socket with this inode alone (unix_diag_get_exact), shown as the dump shows it."""
    show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN
    request = _UNIX_REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, inode, show, *NO_COOKIE)
    return Query(_message(request, dump=False), 4, decode_unix)


def inet_exact_query(protocol: str, family: int, local: tuple[bytes, int], remote: tuple[bytes, int],
                     ifindex: int) -> Query:
    """The one inet socket at these addresses (inet_diag_find_one_icsk, udp_dump_one); an
    address is (packed address, port), as the socket's own getsockname/getpeername say."""
    (src, sport), (dst, dport) = local, remote
    if protocol != "TCP":
        # udp_dump_one looks the socket up with src and dst swapped ("for historical reasons").
        (src, sport), (dst, dport) = (dst, dport), (src, sport)
    request = _INET_EXACT_REQ.pack(family, INET_PROTOCOLS[protocol], 0, INET_STATES,
                                   sport.to_bytes(2, "big"), dport.to_bytes(2, "big"),
                                   src.ljust(16, b"\0"), dst.ljust(16, b"\0"), ifindex, *NO_COOKIE)

    def decode(body: bytes) -> InetSocket:
        return decode_inet(body, protocol)
    return Query(_message(request, dump=False), _INET_MSG.size - 4, decode)


def _message(body: bytes, dump: bool = True) -> bytes:
    flags = NLM_F_REQUEST | NLM_F_DUMP if dump else NLM_F_REQUEST
    return _NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, flags, 1, 0) + body


# ---------------------------------------------------------------- replies

def decode_unix(body: bytes) -> UnixSocket:
    _, kind, state, inode, _, _ = _UNIX_MSG.unpack_from(body)
    name, peer, icons, rqlen, wqlen, shutdown = None, 0, (), 0, 0, 0
    # The attributes are read in place: a host lists thousands of unix sockets.
    offset, end = _UNIX_MSG.size, len(body)
    while offset + _NLATTR.size <= end:
        length, attr = _NLATTR.unpack_from(body, offset)
        if length < _NLATTR.size:
            break
        start, stop = offset + _NLATTR.size, offset + length
        if attr == UNIX_DIAG_PEER:
            peer = _U32.unpack_from(body, start)[0]
        elif attr == UNIX_DIAG_NAME:
            name = _unix_name(body[start:stop])
        elif attr == UNIX_DIAG_ICONS:
            icons = struct.unpack_from(f"={(stop - start) // 4}I", body, start)
        elif attr == UNIX_DIAG_RQLEN:
            rqlen, wqlen = _RQLEN.unpack_from(body, start)
        elif attr == UNIX_DIAG_SHUTDOWN:
            shutdown = body[start]
        offset += (length + 3) & ~3
    return UnixSocket(inode, kind, state, name, peer, icons, rqlen, wqlen, shutdown)


def _unix_name(raw: bytes) -> str:
    # Decoded as procfs decodes /proc (lossless); tracker.safe_text decides how it is shown.
    if raw.startswith(b"\0"):
        return "@" + raw[1:].decode(errors="surrogateescape")
    # A path name is a C string: binders may count its terminating NUL in the address.
    return raw.split(b"\0", 1)[0].decode(errors="surrogateescape")


def decode_netlink(body: bytes) -> NetlinkSocket:
    _, _, protocol, _, portid, _, _, inode, _, _ = _NETLINK_MSG.unpack_from(body)
    attrs = attributes(body, _NETLINK_MSG.size)
    groups = attrs.get(NETLINK_DIAG_GROUPS)
    meminfo = attrs.get(NETLINK_DIAG_MEMINFO, b"\0\0\0\0")
    return NetlinkSocket(
        inode=inode, protocol=protocol, portid=portid,
        groups=struct.unpack(f"={len(groups) // 4}I", groups) if groups is not None else None,
        rmem=_U32.unpack_from(meminfo)[0],   # SK_MEMINFO_RMEM_ALLOC comes first
    )


def decode_packet(body: bytes) -> PacketSocket:
    _, kind, protocol, inode, _, _ = _PACKET_MSG.unpack_from(body)
    attrs = attributes(body, _PACKET_MSG.size)
    ifindex = _PACKET_INFO.unpack(attrs[PACKET_DIAG_INFO])[0] if PACKET_DIAG_INFO in attrs else 0
    mclist = attrs.get(PACKET_DIAG_MCLIST, b"")
    memberships = tuple(Membership(index, count, kind_)
                        for index, count, kind_, _, _ in _PACKET_MCLIST.iter_unpack(mclist))
    return PacketSocket(inode=inode, type=kind, protocol=protocol, ifindex=ifindex,
                        memberships=memberships)


def decode_inet(body: bytes, protocol: str) -> InetSocket:
    family, state, sport, dport, src, dst, _, rqueue, wqueue, _, inode = _INET_MSG.unpack_from(body)
    length = 4 if family == socket.AF_INET else 16
    port = int.from_bytes(sport, "big")
    return InetSocket(
        inode=inode, protocol=protocol, version=4 if family == socket.AF_INET else 6, state=state,
        local=endpoint(socket.inet_ntop(family, src[:length]), port),
        remote=endpoint(socket.inet_ntop(family, dst[:length]), int.from_bytes(dport, "big")),
        port=port, rx_queue=rqueue, tx_queue=wqueue,
    )


def attributes(body: bytes, offset: int) -> dict[int, bytes]:
    """The netlink attributes after a reply's fixed part, by type."""
    found = {}
    while offset + _NLATTR.size <= len(body):
        length, kind = _NLATTR.unpack_from(body, offset)
        if length < _NLATTR.size:
            break
        found[kind & 0x3FFF] = body[offset + _NLATTR.size:offset + length]
        offset += (length + 3) & ~3
    return found


# ---------------------------------------------------------------- the exchange

def dump(query: Query, netns: str | None) -> dict[int, bytes]:
    """Every reply to `query`, undecoded, by inode; run inside `netns` (a /proc/PID/ns/net path) if given."""
    try:
        with _open(netns) as diag:
            diag.settimeout(TIMEOUT)
            diag.sendall(query.request)
            return {query.inode(body): body for body in replies(diag)}
    except OSError as error:
        raise DiagUnavailable(error.strerror or str(error)) from None


def ask(query: Query, netns: str | None) -> bytes | None:
    """The one reply to an exact query, undecoded; None when no such socket exists (ENOENT)."""
    try:
        with _open(netns) as diag:
            diag.settimeout(TIMEOUT)
            diag.sendall(query.request)
            data = diag.recv(1 << 16)
    except OSError as error:
        raise DiagUnavailable(error.strerror or str(error)) from None
    if len(data) < _NLMSG.size:
        raise DiagUnavailable("malformed sock_diag reply")
    length, kind, _, _, _ = _NLMSG.unpack_from(data)
    if not _NLMSG.size <= length <= len(data):
        raise DiagUnavailable("truncated sock_diag reply")   # larger than one read holds
    body = data[_NLMSG.size:length]
    if kind != NLMSG_ERROR:
        return body
    code = _ERRNO.unpack_from(body)[0] if len(body) >= _ERRNO.size else 0
    if code == -errno.ENOENT:
        return None
    raise DiagUnavailable(os.strerror(-code))


def replies(diag: socket.socket) -> Iterator[bytes]:
    """The bodies of one dump's replies, up to NLMSG_DONE."""
    while True:
        data = diag.recv(1 << 16)
        if not data:
            raise DiagUnavailable("sock_diag closed the dump early")
        offset = 0
        while offset + _NLMSG.size <= len(data):
            length, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
            if length < _NLMSG.size:
                raise DiagUnavailable("malformed sock_diag reply")
            body = data[offset + _NLMSG.size:offset + length]
            if kind in (NLMSG_DONE, NLMSG_ERROR):
                code = _ERRNO.unpack_from(body)[0] if len(body) >= _ERRNO.size else 0
                if code < 0:
                    raise DiagUnavailable(os.strerror(-code))
                return
            yield body
            offset += (length + 3) & ~3


_libc = ctypes.CDLL(None, use_errno=True)


def _open(netns: str | None) -> socket.socket:
    if netns is None:
        return _diag_socket()
    return netlink_socket_in(netns, NETLINK_SOCK_DIAG)


def netlink_socket_in(netns: str, protocol: int) -> socket.socket:
    """A netlink socket of the network namespace `netns` (its nsfs path): made by a thread
    that joins it first (setns changes only the calling thread; the socket stays there)."""
    opened: list[socket.socket] = []
    failed: list[OSError] = []

    def join_and_open() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns {netns}: {os.strerror(code)}")
            finally:
                os.close(fd)
            opened.append(socket.socket(socket.AF_NETLINK,
                                        socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol))
        except OSError as error:
            failed.append(error)

    thread = threading.Thread(target=join_and_open, name="crwatch-netns-socket")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return opened[0]


def _diag_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
