"""Packet (AF_PACKET) sockets (CRIU's sk-packet.c): dumped with rings and fanout, each membership once."""
from __future__ import annotations

from typing import Iterator

from tracker.checks.sockets.common import OLDER_CRIU, finding
from tracker.checks.sockets.records import PacketSocket
from tracker.procfs import OpenFd, Proc
from tracker.rules import BLOCKER, INFO, Finding, Rule

RULES = (
    Rule("socket.packet.open", "A packet (AF_PACKET) socket", INFO,
         "nothing to do; the interface must exist where the process is restored",
         older_criu=OLDER_CRIU),
    Rule("socket.packet.repeated_membership", "A packet socket that joined one membership twice",
         BLOCKER, "add each PACKET_ADD_MEMBERSHIP once before checkpointing",
         criu_message="Multiple MC membership not supported (but can be)"),
    Rule("socket.packet.unknown_membership", "A packet socket membership of an unknown type",
         BLOCKER, "drop the membership before checkpointing",
         criu_message="Unknown mc membership type %d"),
)

TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 10: "SOCK_PACKET"}
ETHERTYPES = {0x0003: "ETH_P_ALL", 0x0800: "ETH_P_IP", 0x0806: "ETH_P_ARP", 0x86DD: "ETH_P_IPV6"}
MEMBERSHIP_TYPES = {0: "multicast", 1: "promisc", 2: "allmulti", 3: "unicast"}


def check(proc: Proc, open_fd: OpenFd, sock: PacketSocket) -> Iterator[Finding]:
    protocol = ETHERTYPES.get(sock.protocol, f"0x{sock.protocol:04x}")
    text = (f"packet socket ({TYPES.get(sock.type, sock.type)}, protocol {protocol}) "
            + (f"bound to ifindex {sock.ifindex}" if sock.ifindex else "on every interface"))
    blocked = False
    for membership in sock.memberships:
        kind = MEMBERSHIP_TYPES.get(membership.type)
        if kind is None:
            blocked = True
            yield finding("socket.packet.unknown_membership", proc, open_fd,
                          f"{text}: membership of type {membership.type} on ifindex {membership.ifindex}")
        elif membership.count != 1:
            blocked = True
            yield finding("socket.packet.repeated_membership", proc, open_fd,
                          f"{text}: {kind} membership on ifindex {membership.ifindex} "
                          f"added {membership.count} times")
    if not blocked:
        yield finding("socket.packet.open", proc, open_fd, text)
