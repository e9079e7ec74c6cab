"""TCP, UDP, UDP-Lite, ICMP (ping) and raw sockets, IPv4 and IPv6 (CRIU's sk-inet.c).

CRIU dumps listening and closed TCP sockets, connected ones only with
--tcp-established, and a listener with connections waiting for accept()
only with --skip-in-flight. Datagram sockets are dumped unless corked;
raw sockets of any protocol are fine. SCTP, MPTCP, DCCP... are refused.
An IPv6 socket with a link-local local address (fe80::/10) and a port is
bound again on restore through the interface it is bound to
(SO_BINDTODEVICE, set by a bind or connect with a scope id): with none,
CRIU refuses it (needs_scope_id in do_dump_one_inet_fd).
"""
from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Iterator

from tracker.checks.sockets import fd_query
from tracker.checks.sockets.common import OLDER_CRIU, finding
from tracker.checks.sockets.records import TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, TCP_STATES, InetSocket
from tracker.procfs import OpenFd, Proc
from tracker.rules import BLOCKER, INFO, OPTION, Finding, Rule

RULES = (
    Rule("socket.tcp.listen", "A listening TCP socket", INFO,
         "nothing to do; the port must be free where the process is restored",
         older_criu=OLDER_CRIU),
    Rule("socket.tcp.in_flight", "A TCP listener with connections not yet accepted", OPTION,
         "dump with --skip-in-flight (the pending connections are dropped and their clients "
         "must reconnect), or accept them first",
         option="--skip-in-flight", criu_message="In-flight connection (l) for %x",
         older_criu=OLDER_CRIU),
    Rule("socket.tcp.established", "A connected TCP socket", OPTION,
         "dump with --tcp-established (and restore on a host that owns the address)",
         option="--tcp-established",
         criu_message="Connected TCP socket, consider using --tcp-established option.",
         older_criu=OLDER_CRIU),
    Rule("socket.tcp.closed", "A TCP socket that is neither listening nor connected", INFO,
         "nothing to do; CRIU recreates it (and its bound address)", older_criu=OLDER_CRIU),
    Rule("socket.tcp.unknown_state", "A TCP socket in a state CRIU does not know", BLOCKER,
         "let the connection leave this transient state (or close it) before checkpointing",
         criu_message="Unknown inet socket %x state %d"),
    Rule("socket.udp.open", "A UDP or UDP-Lite socket", INFO,
         "nothing to do; datagrams queued at dump time are dropped",
         criu_message="Read queue is dropped for socket %x", older_criu=OLDER_CRIU),
    Rule("socket.udp.corked", "A corked UDP socket (UDP_CORK set)", BLOCKER,
         "clear UDP_CORK (which sends the pending datagram) before checkpointing",
         criu_message="Can't dump corked dgram socket %x"),
    Rule("socket.icmp.open", "An ICMP echo (ping) socket", INFO, "nothing to do",
         older_criu=OLDER_CRIU),
    Rule("socket.raw.open", "A raw IP socket", INFO, "nothing to do", older_criu=OLDER_CRIU),
    Rule("socket.inet.link_local_no_device",
         "An IPv6 socket with a link-local address but bound to no interface", BLOCKER,
         "bind the socket to its interface again (SO_BINDTODEVICE) or use a global address "
         "before checkpointing: CRIU binds a link-local address through the socket's interface",
         criu_message="couldn't find ifname for %d, can't bind"),
    Rule("socket.inet.link_local_device_gone",
         "An IPv6 socket with a link-local address, bound to an interface since deleted", BLOCKER,
         "close the socket before checkpointing (its interface is gone: no restore could bind "
         "it again)", criu_message="can't get ifname"),
    Rule("socket.inet.unsupported", "An inet socket of a protocol or type CRIU cannot dump "
         "(SCTP, MPTCP, DCCP, ...)", BLOCKER,
         "use plain TCP or UDP, or close the socket before checkpointing (Go programs: "
         "GODEBUG=multipathtcp=0 turns MPTCP off)",
         criu_message="Unsupported proto %d for socket %x"),
)

# The states CRIU dumps only with --tcp-established.
CONNECTED_STATES = frozenset(state for state, name in TCP_STATES.items() if name in (
    "ESTABLISHED", "SYN_SENT", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSING"))
IPPROTO_UDPLITE, IPPROTO_MPTCP = 136, 262
# What CRIU's can_dump_ipproto() accepts (raw sockets pass with any protocol).
DUMPABLE_PROTOCOLS = frozenset({0, socket.IPPROTO_TCP, socket.IPPROTO_UDP, IPPROTO_UDPLITE,
                                socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6})
KNOWN_PROTOCOLS = {132: "SCTP", 33: "DCCP", IPPROTO_MPTCP: "MPTCP", 115: "L2TP"}


LINK_LOCAL = ipaddress.IPv6Network("fe80::/10")


def check(proc: Proc, open_fd: OpenFd, sock: InetSocket) -> Iterator[Finding]:
    """A socket listed in its namespace's socket tables."""
    label = sock.protocol + ("v6" if sock.version == 6 else "")
    if _link_local(sock):
        yield from _check_link_local(proc, open_fd, sock, label)
    if sock.protocol == "TCP":
        yield _tcp(proc, open_fd, sock, label)
    elif sock.protocol in ("UDP", "UDPLITE"):
        yield _udp(proc, open_fd, sock, label)
    elif sock.protocol == "ICMP":
        yield finding("socket.icmp.open", proc, open_fd, f"{label} ping socket {_endpoints(sock)}")
    else:
        yield finding("socket.raw.open", proc, open_fd,
                      f"raw IPv{sock.version} socket for IP protocol {sock.port}")


def _check_link_local(proc: Proc, open_fd: OpenFd, sock: InetSocket,
                      label: str) -> Iterator[Finding]:
    """CRIU binds a link-local address again through the socket's interface, which it reads
    with SO_BINDTODEVICE (sk-inet.c do_dump_one_inet_fd)."""
    try:
        device = fd_query.bound_device(proc.pid, open_fd.fd, sock.inode)
    except OSError as error:
        if error.errno != errno.ENODEV:
            raise
        yield finding("socket.inet.link_local_device_gone", proc, open_fd,
                      f"{label} socket {sock.local} has a link-local address and was bound to "
                      f"an interface that no longer exists")
        return
    if not device:
        yield finding("socket.inet.link_local_no_device", proc, open_fd,
                      f"{label} socket {sock.local} has a link-local address but is bound to "
                      f"no interface (SO_BINDTODEVICE)")


def _tcp(proc: Proc, open_fd: OpenFd, sock: InetSocket, label: str) -> Finding:
    if sock.state == TCP_LISTEN:
        if sock.rx_queue:
            return finding("socket.tcp.in_flight", proc, open_fd,
                           f"{label} listener on {sock.local} has {sock.rx_queue} "
                           f"connection(s) not yet accepted")
        return finding("socket.tcp.listen", proc, open_fd, f"{label} listener on {sock.local}")
    if sock.state in CONNECTED_STATES:
        state = "established" if sock.state == TCP_ESTABLISHED else f"in {sock.state_name}"
        return finding("socket.tcp.established", proc, open_fd,
                       f"{label} connection {sock.local} -> {sock.remote} is {state}")
    if sock.state == TCP_CLOSE:
        return finding("socket.tcp.closed", proc, open_fd, f"{label} socket {sock.local} is closed")
    return finding("socket.tcp.unknown_state", proc, open_fd,
                   f"{label} socket {sock.local} -> {sock.remote} is in {sock.state_name}")


def _udp(proc: Proc, open_fd: OpenFd, sock: InetSocket, label: str) -> Finding:
    where = _endpoints(sock)
    if fd_query.udp_corked(proc.pid, open_fd.fd, sock.inode):
        return finding("socket.udp.corked", proc, open_fd,
                       f"{label} socket {where} is corked (UDP_CORK)")
    queued = [f"{size} bytes {what}" for size, what in ((sock.rx_queue, "unread"), (sock.tx_queue, "unsent"))
              if size]
    dropped = f"; its queued datagrams ({', '.join(queued)}) are dropped by the dump" if queued else ""
    return finding("socket.udp.open", proc, open_fd, f"{label} socket {where}{dropped}")


def _link_local(sock: InetSocket) -> bool:
    """A local link-local IPv6 address with a port, the case CRIU's needs_scope_id takes."""
    if sock.version != 6 or not sock.port:
        return False
    address = sock.local.rpartition("]")[0].lstrip("[")
    return ipaddress.IPv6Address(address) in LINK_LOCAL


def _endpoints(sock: InetSocket) -> str:
    if sock.state == TCP_ESTABLISHED:     # a datagram socket after connect()
        return f"{sock.local} connected to {sock.remote}"
    return f"bound to {sock.local}"


def check_unlisted(proc: Proc, open_fd: OpenFd, found: fd_query.Probe) -> Iterator[Finding]:
    """An inet socket in no table: unbound, or of another namespace, or of a protocol with no table."""
    label = "IPv6" if found.family == socket.AF_INET6 else "IPv4"
    where = f"bound to {found.local}" if found.local else "not bound"
    if found.type != socket.SOCK_RAW and found.protocol not in DUMPABLE_PROTOCOLS:
        name = KNOWN_PROTOCOLS.get(found.protocol, f"protocol {found.protocol}")
        hint = (" (Go enables MPTCP by default: GODEBUG=multipathtcp=0)"
                if found.protocol == IPPROTO_MPTCP else "")
        yield finding("socket.inet.unsupported", proc, open_fd,
                      f"{label} {name} socket ({where}): CRIU cannot dump protocol {found.protocol}{hint}")
    elif found.type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW):
        yield finding("socket.inet.unsupported", proc, open_fd,
                      f"{label} socket of type {found.type}: CRIU dumps only stream, dgram and raw")
    elif found.type == socket.SOCK_RAW:
        yield finding("socket.raw.open", proc, open_fd,
                      f"raw {label} socket for IP protocol {found.protocol}")
    elif found.protocol == socket.IPPROTO_TCP:
        yield _unlisted_tcp(proc, open_fd, found, label, where)
    elif found.protocol in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6):
        yield finding("socket.icmp.open", proc, open_fd, f"{label} ping socket, {where}")
    elif found.corked:
        yield finding("socket.udp.corked", proc, open_fd,
                      f"{label} UDP socket ({where}) is corked (UDP_CORK)")
    else:
        yield finding("socket.udp.open", proc, open_fd, f"{label} UDP socket, {where}")


def _unlisted_tcp(proc: Proc, open_fd: OpenFd, found: fd_query.Probe, label: str, where: str) -> Finding:
    if found.tcp_state == TCP_CLOSE:
        state = f"{where}, not listening or connected" if found.local else where
        return finding("socket.tcp.closed", proc, open_fd, f"{label} TCP socket, {state}")
    # A listening or connected socket missing from the tables lives in another namespace.
    state = TCP_STATES.get(found.tcp_state or 0, f"state {found.tcp_state}")
    return finding("socket.foreign_netns", proc, open_fd,
                   f"{label} TCP socket ({where}) in {state} belongs to a network namespace "
                   f"other than pid {proc.pid}'s, whose sockets CRIU does not collect")
