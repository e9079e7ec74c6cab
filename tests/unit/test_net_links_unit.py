"""Which links CRIU dumps (tracker.checks.net_links.refusal), on link records.

The agreement tests (test_agree_gaps_net.py) prove the rule on the kinds this kernel
can create (ifb, vxlan refused; veth, bridge, tap dumped). This kernel has no macvlan,
sit, gre or wireguard support (`ip link add` fails for them), so their cases, CRIU's
checks of macvlan and sit data (net.c dump_macvlan, dump_sit) included, are checked
here on records shaped as rtnetlink gives them.
"""
from __future__ import annotations

import socket
import struct

import pytest

from tracker.checks.net_links import (
    ARPHRD_ETHER,
    ARPHRD_IPGRE,
    ARPHRD_LOOPBACK,
    ARPHRD_NONE,
    ARPHRD_SIT,
    IFLA_IPTUN_6RD_PREFIX,
    IFLA_IPTUN_6RD_PREFIXLEN,
    IFLA_IPTUN_6RD_RELAY_PREFIXLEN,
    IFLA_MACVLAN_MODE,
    Link,
    decode,
    refusal,
)

U16_48 = struct.pack("=H", 48)


@pytest.mark.parametrize(("link", "why"), [
    (Link(1, ARPHRD_LOOPBACK, "lo", None, None), None),
    (Link(2, ARPHRD_ETHER, "v0", "veth", None), None),
    (Link(3, ARPHRD_NONE, "t0", "tun", None), None),
    (Link(4, ARPHRD_ETHER, "gretap0", "gretap", None), None),
    (Link(5, ARPHRD_IPGRE, "gre0", "gre", None), None),
    (Link(6, ARPHRD_SIT, "sit0", "sit", None), None),
    (Link(7, ARPHRD_ETHER, "m0", "macvlan", {IFLA_MACVLAN_MODE: b"\4\0\0\0"}), None),
    (Link(8, ARPHRD_SIT, "s1", "sit", {}), None),
    (Link(9, ARPHRD_NONE, "wg0", "wireguard", None),
     "Unsupported link 9 (type 65534 kind wireguard)"),
    (Link(10, ARPHRD_ETHER, "gt1", "gretap", None), "Unsupported link 10 (type 1 kind gretap)"),
    (Link(11, ARPHRD_IPGRE, "gre1", "gre", None), "Unsupported link 11 (type 778 kind gre)"),
    (Link(12, 768, "tunl0", "ipip", None), "Unsupported link 12 (type 768 kind ipip)"),
    (Link(13, ARPHRD_ETHER, "e0", None, None), "No linkinfo for eth link 13"),
    (Link(14, ARPHRD_ETHER, "m1", "macvlan", None), "no data for macvlan"),
    (Link(15, ARPHRD_ETHER, "m2", "macvlan", {}), "macvlan mode required for m2"),
    (Link(16, ARPHRD_SIT, "s2", "sit", None), "no data for sit"),
    (Link(17, ARPHRD_SIT, "s3", "sit", {IFLA_IPTUN_6RD_PREFIXLEN: U16_48}),
     "No 6rd prefix for sit device"),
    (Link(18, ARPHRD_SIT, "s4", "sit", {IFLA_IPTUN_6RD_PREFIXLEN: U16_48,
                                        IFLA_IPTUN_6RD_PREFIX: bytes(16),
                                        IFLA_IPTUN_6RD_RELAY_PREFIXLEN: U16_48}),
     "No 6rd relay prefix for sit device"),
    (Link(19, ARPHRD_SIT, "s5", "ip6tnl", None), "SIT device with ip6tnl kind"),
])
def test_refusal_mirrors_dump_one_link(link, why):
    assert refusal(link) == why


def attribute(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + bytes(-length % 4)


def test_decode_reads_type_name_kind_and_data():
    data = attribute(2, attribute(IFLA_MACVLAN_MODE, struct.pack("=I", 4)))
    linkinfo = attribute(18, attribute(1, b"macvlan\0") + data)
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, ARPHRD_ETHER, 7, 0, 0) \
        + attribute(3, b"mv0\0") + linkinfo
    assert decode(body) == Link(7, ARPHRD_ETHER, "mv0", "macvlan",
                                {IFLA_MACVLAN_MODE: struct.pack("=I", 4)})
