"""What the socket tables say about one socket, per family (tuples: thousands are made per audit)."""
from __future__ import annotations

from typing import NamedTuple

TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
    12: "NEW_SYN_RECV", 13: "BOUND_INACTIVE",
}
TCP_ESTABLISHED, TCP_SYN_RECV, TCP_TIME_WAIT, TCP_CLOSE, TCP_LISTEN, TCP_NEW_SYN_RECV = 1, 3, 6, 7, 10, 12


class InetSocket(NamedTuple):
    inode: int
    protocol: str     # TCP, UDP, UDPLITE, RAW, ICMP
    version: int      # 4 or 6
    state: int        # a TCP state number (datagram sockets: ESTABLISHED once connected, else CLOSE)
    local: str        # "127.0.0.1:8080", "[::1]:8080"
    remote: str
    port: int         # the local port; a raw socket's IP protocol number
    rx_queue: int     # bytes; a listener's connections waiting for accept()
    tx_queue: int     # bytes; a listener's backlog limit

    @property
    def state_name(self) -> str:
        return TCP_STATES.get(self.state, f"state {self.state}")


class UnixSocket(NamedTuple):
    inode: int
    type: int
    state: int
    name: str | None          # None: unbound; "@..." an abstract name
    peer: int                 # 0: no peer
    icons: tuple[int, ...]    # a listener's pending connections: the clients' inodes (0: closed)
    rqlen: int
    wqlen: int
    shutdown: int


class NetlinkSocket(NamedTuple):
    inode: int
    protocol: int
    portid: int
    groups: tuple[int, ...] | None   # the group bitmap as 32-bit words; None: never joined a group
    rmem: int                        # bytes queued for reading


class Membership(NamedTuple):
    ifindex: int
    count: int
    type: int


class PacketSocket(NamedTuple):
    inode: int
    type: int
    protocol: int
    ifindex: int
    memberships: tuple[Membership, ...]


def endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
