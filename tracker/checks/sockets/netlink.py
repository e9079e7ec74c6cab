"""Netlink sockets (CRIU's sk-netlink.c): dumped with their port id and up to 32 groups, never with data."""
from __future__ import annotations

from typing import Iterator

from tracker.checks.sockets.common import finding
from tracker.checks.sockets.records import NetlinkSocket
from tracker.procfs import OpenFd, Proc
from tracker.rules import BLOCKER, INFO, Finding, Rule

RULES = (
    Rule("socket.netlink.open", "A netlink socket", INFO,
         "nothing to do; CRIU binds the port id and groups again on restore"),
    Rule("socket.netlink.queued", "A netlink socket with messages not read yet", BLOCKER,
         "read the pending messages (finish the request in progress) before checkpointing",
         criu_message="The socket has data to read"),
    Rule("socket.netlink.many_groups", "A netlink socket subscribed to groups above 32", BLOCKER,
         "subscribe only to groups 1-32 (or close the socket) before checkpointing",
         criu_message="The netlink socket 0x%x has more than 32 groups"),
    Rule("socket.netlink.groups_unbound", "A netlink socket in multicast groups but without a port id",
         BLOCKER, "bind() the socket before joining groups (port id 0 lets the kernel choose one)",
         criu_message="The netlink socket 0x%x is bound to groups but not to portid"),
)

PROTOCOLS = {
    0: "NETLINK_ROUTE", 2: "NETLINK_USERSOCK", 4: "NETLINK_SOCK_DIAG", 5: "NETLINK_NFLOG",
    6: "NETLINK_XFRM", 7: "NETLINK_SELINUX", 8: "NETLINK_ISCSI", 9: "NETLINK_AUDIT",
    10: "NETLINK_FIB_LOOKUP", 11: "NETLINK_CONNECTOR", 12: "NETLINK_NETFILTER",
    14: "NETLINK_DNRTMSG", 15: "NETLINK_KOBJECT_UEVENT", 16: "NETLINK_GENERIC",
    18: "NETLINK_SCSITRANSPORT", 19: "NETLINK_ECRYPTFS", 20: "NETLINK_RDMA", 21: "NETLINK_CRYPTO",
    22: "NETLINK_SMC",
}


def protocol_name(protocol: int) -> str:
    return PROTOCOLS.get(protocol, f"protocol {protocol}")


def check(proc: Proc, open_fd: OpenFd, sock: NetlinkSocket) -> Iterator[Finding]:
    text = f"netlink {protocol_name(sock.protocol)} socket, port id {sock.portid}"
    groups = joined_groups(sock.groups or ())
    if groups:
        text += f", groups {','.join(map(str, groups))}"
    blocked = False
    if sock.rmem:
        blocked = True
        yield finding("socket.netlink.queued", proc, open_fd,
                      f"{text}: {sock.rmem} bytes of messages not read yet")
    if group_words(sock.groups or ()) > 1:
        blocked = True
        yield finding("socket.netlink.many_groups", proc, open_fd, f"{text}: groups above 32")
    if sock.groups is not None and not sock.portid:
        blocked = True
        yield finding("socket.netlink.groups_unbound", proc, open_fd, f"{text}: in groups but not bound")
    if not blocked:
        yield finding("socket.netlink.open", proc, open_fd, text)


def check_unbound(proc: Proc, open_fd: OpenFd, protocol: int) -> Finding:
    return finding("socket.netlink.open", proc, open_fd,
                   f"netlink {protocol_name(protocol)} socket, not bound")


def joined_groups(words: tuple[int, ...]) -> list[int]:
    """Group numbers (1-based) set in the bitmap."""
    return [index * 32 + bit + 1 for index, word in enumerate(words) for bit in range(32)
            if word >> bit & 1]


def group_words(words: tuple[int, ...]) -> int:
    """How many 32-bit words CRIU keeps: all but one trailing zero word (its >32-groups test)."""
    return len(words) - 1 if words and words[-1] == 0 else len(words)
