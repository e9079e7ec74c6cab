"""/dev/net/tun and the links of the tree's own network namespace, judged by crwatch and
by the real CRIU.

The subjects unshare their network namespace themselves, so CRIU dumps it; on a host
without iptables-restore that needs --network-lock (namespace.net_lock), which
assert_agrees passes to CRIU.
- A tun file of a third network namespace (opened in one netns, the process then moved
  to another): CRIU knows only the tree's netns and its own (tun.c dump_tunfile:
  `No net_ns for tun device`).
- A tap with a socket filter (TUNATTACHFILTER): CRIU cannot read the program back
  (tun.c __dump_tun_link_fd: `Can't dump %s with filter on-board`). A TX filter
  (TUNSETTXFILTER, a MAC list) is no such filter: it dumps.
- Links of the tree's own netns that CRIU cannot dump (net.c dump_unknown_device:
  `Unsupported link %d (type %d kind %s)`): of the kinds this kernel has, ifb and
  vxlan; veth, bridge and tap dump.
"""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.agreement import assert_agrees, namespace_lock_codes
from tests.support.subjects import subject
from tracker.criu.options import arguments_for
from tracker.criu.runner import find_criu

pytestmark = [pytest.mark.criu]

NET_LOCK = namespace_lock_codes()


def refused_for(pid: int, document: dict, message: str) -> None:
    """CRIU's refusal names the state when given the options the reasons name (without
    them, a missing network lock can fail the dump first)."""
    result = find_criu().dump(pid, arguments_for(document["reasons"]))
    assert not result.ok and message in result.log, result.errors

PLAIN = "needs_options" if NET_LOCK else "ok"

TUN = """
import struct
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
TUNSETIFF, TUNATTACHFILTER, TUNSETTXFILTER = 0x400454CA, 0x401054D5, 0x400454D1
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
def unshare_net():
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
def tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd
"""

# a classic BPF program of one instruction: ret #0xffff (accept)
ATTACH_FILTER = """
program = (ctypes.c_uint64 * 1)(0x0000FFFF00000006)
fcntl.ioctl(fd, TUNATTACHFILTER, struct.pack("H6xQ", 1, ctypes.addressof(program)))
"""

# one MAC address to let through
TX_FILTER = """
fcntl.ioctl(fd, TUNSETTXFILTER, struct.pack("HH6s", 0, 1, bytes.fromhex("020000000001")))
"""


def test_a_tun_file_of_a_third_network_namespace_is_blocked():
    code = TUN + """
unshare_net()
fd = os.open("/dev/net/tun", os.O_RDWR)
unshare_net()                   # the fd keeps the first namespace alive
ready(str(fd)); hold()
"""
    with subject(code) as s:
        document = assert_agrees(s.pid, "a tun file of a network namespace the tree left",
                                 expect="blocked", codes={"device.tun.foreign_netns"},
                                 may_also=NET_LOCK)
        refused_for(s.pid, document, "No net_ns for tun device")
    reason = next(r for r in document["reasons"] if r["code"] == "device.tun.foreign_netns")
    assert reason["fd"] == int(s.note)


def test_a_tap_with_a_socket_filter_is_blocked():
    code = TUN + "unshare_net()\nfd = tap('crwf0')\n" + ATTACH_FILTER + "ready(str(fd)); hold()\n"
    with subject(code) as s:
        document = assert_agrees(s.pid, "a tap with a socket filter (TUNATTACHFILTER)",
                                 expect="blocked", codes={"device.tun.filter"}, may_also=NET_LOCK)
        refused_for(s.pid, document, "Can't dump crwf0 with filter on-board")
    reason = next(r for r in document["reasons"] if r["code"] == "device.tun.filter")
    assert reason["fd"] == int(s.note) and "tap crwf0" in reason["message"]


@pytest.mark.parametrize("setup", ["", TX_FILTER], ids=["plain", "tx-filter"])
def test_a_tap_of_the_trees_own_namespace_dumps(setup):
    code = TUN + "unshare_net()\nfd = tap('crwt0')\n" + setup + "ready(); hold()\n"
    with subject(code) as s:
        assert_agrees(s.pid, f"a tap in the tree's own netns{' with a TX filter' if setup else ''}",
                      expect=PLAIN, codes=NET_LOCK)


# ---------------------------------------------------------------- links of the tree's netns

def with_links(*commands: str) -> str:
    runs = "".join(f"subprocess.run({('ip', 'link', 'add', *command.split())!r}, check=True)\n"
                   for command in commands)
    return TUN + "import subprocess\nunshare_net()\n" + runs


@pytest.mark.parametrize(("command", "kind"), [
    ("crwi0 type ifb", "ifb"),
    ("crwx0 type vxlan id 42 dstport 4789", "vxlan"),
], ids=["ifb", "vxlan"])
def test_a_link_crius_cannot_dump_is_blocked(command, kind):
    name = command.split()[0]
    with subject(with_links(command) + "ready(); hold()\n") as s:
        document = assert_agrees(s.pid, f"a {kind} link in the tree's own netns", expect="blocked",
                                 codes={"namespace.net_link"}, may_also=NET_LOCK)
        index = _ifindex(s.pid, name)
        refused_for(s.pid, document, f"Unsupported link {index} (type 1 kind {kind})")
    reason = next(r for r in document["reasons"] if r["code"] == "namespace.net_link")
    assert f"link {index} {name} ({kind}, type 1)" in reason["message"]
    assert f"ip link del {name}" in reason["remedy"]


def test_veth_bridge_and_tap_links_dump():
    code = with_links("crwv0 type veth peer name crwv1", "crwb0 type bridge")
    with subject(code + "fd = tap('crwt1')\nready(); hold()\n") as s:
        assert_agrees(s.pid, "veth, bridge and tap links in the tree's own netns", expect=PLAIN,
                      codes=NET_LOCK)


def _ifindex(pid: int, name: str) -> int:
    """The link's index, as ip reads it inside the subject's namespace."""
    output = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-j", "link", "show",
                             "dev", name], capture_output=True, text=True, check=True).stdout
    return json.loads(output)[0]["ifindex"]
