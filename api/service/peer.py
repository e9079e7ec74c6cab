"""Who is at the other end of a connection: for a loopback TCP connection, the uid the
kernel records for the client's socket, found by one exact sock_diag lookup of the
connection; for a unix socket, the credentials the kernel recorded when the client
connected (SO_PEERCRED).

The client's end of a connection to this host is a socket on this host too; the kernel
keeps the uid of whoever made it (its fsuid at socket()) and reports it with the
socket, so the caller is identified without trusting anything it sends. Only a socket
that a process still holds counts (its inode is not 0): a connection closed since has
left at most a time-wait record, which the kernel reports as uid 0.
"""
from __future__ import annotations

import ipaddress
import itertools
import socket
import struct
import threading
from dataclasses import dataclass

NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY = 4, 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
NO_COOKIE = (0xFFFFFFFF, 0xFFFFFFFF)
# States of a socket no process holds, or of a listener (what a lookup falls back to).
UNHELD_STATES = {3, 6, 10, 12}  # SYN_RECV, TIME_WAIT, LISTEN, NEW_SYN_RECV

_NLMSG = struct.Struct("=IHHII")
_UCRED = struct.Struct("=iII")   # struct ucred: pid, uid, gid
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid: sport, dport
# (big-endian), src, dst (16 bytes each), interface, cookie.
_REQUEST = struct.Struct("=BBBxI2s2s16s16sIII")
# inet_diag_msg: family, state, timer, retrans, the sockid as above, expires, rqueue,
# wqueue, uid, inode.
_REPLY = struct.Struct("=BBBB2s2s16s16sIIIIIIII")

Address = tuple[str, int]


@dataclass(frozen=True)
class UnixPeer:
    """The process that connected to a unix socket, as the kernel saw it at connect()."""

    pid: int
    uid: int
    gid: int


def unix_peer(connection: socket.socket) -> UnixPeer | None:
    """The credentials of the client of this unix socket connection (None: not one)."""
    try:
        raw = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    return UnixPeer(*_UCRED.unpack(raw))


def loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def tcp_peer_uid(client: Address | None, server: Address | None) -> int | None:
    """The uid owning the client's socket of this loopback connection, or None when the
    connection is not on loopback or no live socket of this host is its client end."""
    if not client or not server or not loopback(client[0]):
        return None
    try:
        family, client_address = _packed(client[0])
        _, server_address = _packed(server[0])
    except ValueError:
        return None
    request = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF,
                            client[1].to_bytes(2, "big"), server[1].to_bytes(2, "big"),
                            client_address, server_address, 0, *NO_COOKIE)
    reply = _exchange(request)
    if reply is None or len(reply) < _REPLY.size:
        return None
    (_, state, _, _, sport, dport, _, _, _, _, _, _, _, _, uid, inode) = _REPLY.unpack_from(reply)
    if (state in UNHELD_STATES or inode == 0 or int.from_bytes(sport, "big") != client[1]
            or int.from_bytes(dport, "big") != server[1]):
        return None
    return uid


def _packed(host: str) -> tuple[int, bytes]:
    """(family, the address in the 16 bytes of an inet_diag_sockid)."""
    address = ipaddress.ip_address(host)
    if address.version == 4:
        return socket.AF_INET, address.packed.ljust(16, b"\0")
    return socket.AF_INET6, address.packed


def _exchange(request: bytes) -> bytes | None:
    """The body of the one reply to a sock_diag `request`, or None (no such socket, or no
    sock_diag)."""
    sequence = next(_sequences)
    try:
        diag = _diag_socket()
        diag.sendall(_NLMSG.pack(_NLMSG.size + len(request), SOCK_DIAG_BY_FAMILY,
                                 NLM_F_REQUEST, sequence, 0) + request)
        # sock_diag answers within the send: the reply is queued when it returns
        data = diag.recv(1 << 12, socket.MSG_DONTWAIT)
    except OSError:
        _forget_diag_socket()  # a late reply may come to it: the next lookup opens another
        return None
    if len(data) < _NLMSG.size:
        return None
    length, kind, _, replied_to, _ = _NLMSG.unpack_from(data)
    if replied_to != sequence:  # not this request's reply: never trusted
        _forget_diag_socket()
        return None
    body = data[_NLMSG.size:length]
    if kind == NLMSG_ERROR:  # ENOENT: no socket has this address and port
        return None
    return body


# One sock_diag socket per thread, kept open: a lookup is then a send and a receive,
# not five system calls (each a chance for another thread to take the interpreter).
_diag = threading.local()
_sequences = itertools.cycle(range(1, 1 << 32))


def _diag_socket() -> socket.socket:
    diag = getattr(_diag, "socket", None)
    if diag is None:
        diag = _diag.socket = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    return diag


def _forget_diag_socket() -> None:
    diag = getattr(_diag, "socket", None)
    _diag.socket = None
    if diag is not None:
        diag.close()
