"""The links of a network namespace, read with rtnetlink, and which of them CRIU dumps.

CRIU dumps a tree's own network namespace link by link (net.c dump_one_link):
by the link's ARPHRD type, then its rtnetlink kind (IFLA_INFO_KIND). It knows
loopback, veth, tun/tap, bridge and macvlan (and venet); it skips the fallback
devices gretap0, gre0 and sit0 that the kernel puts in every namespace; it
dumps sit links from their IFLA_INFO_DATA. Any other link goes to the
DUMP_EXT_LINK plugins, and without one the dump fails (dump_unknown_device:
`Unsupported link %d (type %d kind %s)`). A macvlan or sit link whose data
lacks what CRIU reads fails too (dump_macvlan, dump_sit).
"""
from __future__ import annotations

import socket
import struct
from typing import NamedTuple

from tracker.checks.sockets.diag import DiagUnavailable, attributes, netlink_socket_in, replies

NETLINK_ROUTE = 0
RTM_GETLINK = 18
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
TIMEOUT = 5.0
IFLA_IFNAME, IFLA_LINKINFO = 3, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_MACVLAN_MODE = 1
IFLA_IPTUN_6RD_PREFIX, IFLA_IPTUN_6RD_RELAY_PREFIX = 11, 12
IFLA_IPTUN_6RD_PREFIXLEN, IFLA_IPTUN_6RD_RELAY_PREFIXLEN = 13, 14
ARPHRD_ETHER, ARPHRD_LOOPBACK, ARPHRD_SIT, ARPHRD_IPGRE = 1, 772, 776, 778
ARPHRD_NONE, ARPHRD_VOID = 0xFFFE, 0xFFFF

_NLMSG = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")   # family, type, index, flags, change
_U16 = struct.Struct("=H")

# dump_one_link's dispatch: the kinds each ARPHRD type dumps natively
NATIVE_KINDS = {
    ARPHRD_ETHER: {"veth", "tun", "bridge", "macvlan"},
    ARPHRD_NONE: {"tun"},
    ARPHRD_VOID: {"venet"},
    ARPHRD_SIT: {"sit"},
}
# the kernel's fallback devices CRIU passes over (present in every new namespace)
FALLBACK = {(ARPHRD_ETHER, "gretap", "gretap0"), (ARPHRD_IPGRE, "gre", "gre0"),
            (ARPHRD_SIT, "sit", "sit0")}


class Link(NamedTuple):
    index: int
    type: int                       # ARPHRD_*
    name: str
    kind: str | None                # IFLA_INFO_KIND; None when the link has no linkinfo
    data: dict[int, bytes] | None   # IFLA_INFO_DATA's attributes; None when absent


class LinksUnavailable(Exception):
    """rtnetlink could not list a namespace's links (namespace gone, no permission)."""


def refusal(link: Link) -> str | None:
    """Why CRIU cannot dump this link, in its own words; None when it dumps it."""
    if link.type == ARPHRD_LOOPBACK:
        return None
    if link.kind is None:
        return f"No linkinfo for eth link {link.index}"
    if (link.type, link.kind, link.name) in FALLBACK:
        return None
    if link.type == ARPHRD_SIT and link.kind != "sit":
        return f"SIT device with {link.kind} kind"
    if link.kind not in NATIVE_KINDS.get(link.type, ()):
        return f"Unsupported link {link.index} (type {link.type} kind {link.kind})"
    if link.kind == "macvlan":
        return _macvlan_refusal(link)
    if link.kind == "sit":
        return _sit_refusal(link)
    return None


def _macvlan_refusal(link: Link) -> str | None:
    if link.data is None:
        return "no data for macvlan"
    if IFLA_MACVLAN_MODE not in link.data:
        return f"macvlan mode required for {link.name}"
    return None


def _sit_refusal(link: Link) -> str | None:
    data = link.data
    if data is None:
        return "no data for sit"
    # a 6rd prefix length with no prefix, then a relay prefix length with no relay prefix
    if not _u16(data.get(IFLA_IPTUN_6RD_PREFIXLEN)):
        return None
    if IFLA_IPTUN_6RD_PREFIX not in data:
        return "No 6rd prefix for sit device"
    if _u16(data.get(IFLA_IPTUN_6RD_RELAY_PREFIXLEN)) and IFLA_IPTUN_6RD_RELAY_PREFIX not in data:
        return "No 6rd relay prefix for sit device"
    return None


def _u16(value: bytes | None) -> int:
    return _U16.unpack_from(value)[0] if value and len(value) >= 2 else 0


# ---------------------------------------------------------------- reading

def links(netns: str) -> list[Link]:
    """Every link of the network namespace at `netns` (a /proc/PID/ns/net path)."""
    try:
        with netlink_socket_in(netns, NETLINK_ROUTE) as route:
            route.settimeout(TIMEOUT)
            route.sendall(_REQUEST)
            return [decode(body) for body in replies(route)]
    except OSError as error:
        raise LinksUnavailable(error.strerror or str(error)) from None
    except DiagUnavailable as error:    # the reply's own error, or a reply cut short
        raise LinksUnavailable(str(error)) from None


def decode(body: bytes) -> Link:
    _, kind, index, _, _ = _IFINFOMSG.unpack_from(body)
    found = attributes(body, _IFINFOMSG.size)
    name = found.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
    info = attributes(found[IFLA_LINKINFO], 0) if IFLA_LINKINFO in found else {}
    link_kind = info[IFLA_INFO_KIND].split(b"\0", 1)[0].decode(errors="replace") \
        if IFLA_INFO_KIND in info else None
    data = attributes(info[IFLA_INFO_DATA], 0) if IFLA_INFO_DATA in info else None
    return Link(index, kind, name, link_kind, data)


_REQUEST = _NLMSG.pack(_NLMSG.size + _IFINFOMSG.size, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP,
                       1, 0) + _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)


