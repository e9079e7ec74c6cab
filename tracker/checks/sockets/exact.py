"""One socket asked of sock_diag by its own address, for a tree that holds few sockets.

A table dump lists every socket of a family in the namespace (thousands on a
busy host) to find one. When few are wanted, a copy of the fd (fd_query.borrowed)
tells the socket's family, type, protocol and addresses, and one exact request
(no NLM_F_DUMP, no cookie) returns that socket's record, decoded by the dump's
own code: by address for TCP, UDP and UDP-Lite, by inode for unix sockets.
The lookup answers None whenever it cannot vouch for its answer: a family with
no exact request (netlink, packet, raw), a socket of another namespace than the
one asked, an unbound or device-bound socket the lookup does not find, a
reuseport sibling answered in its place, an fd closed meanwhile. The caller
then reads the table, as it would have anyway.
"""
from __future__ import annotations

import os
import socket

from tracker.checks.sockets import diag, fd_query
from tracker.checks.sockets.records import InetSocket, UnixSocket
from tracker.procfs import AccessDenied, ProcessGone

# Up to this many socket fds in the tree, each is asked alone; above, one dump per
# family costs less (bench/sockets_bench.py measures the crossover).
EXACT_AT_MOST = 32
PROTOCOLS = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP", fd_query.IPPROTO_UDPLITE: "UDPLITE"}


def lookup(pid: int, fd: int, inode: int, netns: int, inside: str | None) -> InetSocket | UnixSocket | None:
    """pid's socket fd as its table would list it, asked in the namespace `inside` (a
    /proc/PID/ns/net path, None: crwatch's own), whose inode is `netns`; None: read the table."""
    return asked(pid, fd, inode, netns, inside)[0]


def asked(pid: int, fd: int, inode: int, netns: int,
          inside: str | None) -> tuple[InetSocket | UnixSocket | None, str | None]:
    """lookup()'s answer, with the one table that can list the socket (tables.SOURCES'
    name: "tcp", "udp6", "unix"...) when its fd told its family and protocol; None where
    the fd did not (it is gone, or of a family with no exact request). A socket the lookup
    does not find is looked for in that table alone: no other lists its inode."""
    source = None
    try:
        query, source = _query(pid, fd, inode, netns)
        body = diag.ask(query, inside) if query is not None else None
    except (ProcessGone, AccessDenied, OSError, diag.DiagUnavailable):
        return None, source
    if body is None or query.inode(body) != inode:     # type: ignore[union-attr]
        return None, source
    return query.decode(body), source                   # type: ignore[union-attr, return-value]


def _query(pid: int, fd: int, inode: int, netns: int) -> tuple[diag.Query | None, str | None]:
    """The exact request for the socket, and the table that lists it."""
    with fd_query.borrowed(pid, fd, inode) as sock:
        family, kind, protocol = (sock.getsockopt(socket.SOL_SOCKET, option)
                                  for option in (socket.SO_DOMAIN, socket.SO_TYPE, socket.SO_PROTOCOL))
        if fd_query.netns_of(sock.fileno()) != netns:
            return None, None   # the dump of this namespace would not list it
        if family == socket.AF_UNIX:
            return diag.unix_exact_query(inode), "unix"
        name = PROTOCOLS.get(protocol)
        if family not in fd_query.INET_FAMILIES or kind == socket.SOCK_RAW or name is None:
            return None, None
        # Re-wrap the same copy with its real family, so the addresses decode.
        with socket.socket(family, kind, protocol, fileno=sock.detach()) as inet:
            local = inet.getsockname()
            try:
                remote = inet.getpeername()
            except OSError:     # not connected: the kernel's lookup wants zeros
                remote = ("::" if family == socket.AF_INET6 else "0.0.0.0", 0)
    ifindex = local[3] if family == socket.AF_INET6 else 0    # a link-local address's scope
    source = name.lower() + ("6" if family == socket.AF_INET6 else "")
    return diag.inet_exact_query(name, family, _packed(family, local), _packed(family, remote),
                                 ifindex), source


def _packed(family: int, address: tuple) -> tuple[bytes, int]:
    return socket.inet_pton(family, address[0]), address[1]


def namespace_inode(space: str) -> int:
    """The inode in a namespace link text, "net:[4026531840]"."""
    return int(space[space.index("[") + 1:-1])


def wanted(socket_fds: int) -> bool:
    """Whether sockets are asked one by one: few of them, and crwatch may copy their fds."""
    return socket_fds <= EXACT_AT_MOST and os.geteuid() == 0
