"""A link-local IPv6 socket whose interface was deleted, judged by crwatch and by the real CRIU.

CRIU reads the interface of a socket with a link-local address (SO_BINDTODEVICE) to bind it
again at restore; once the interface is gone the kernel answers ENODEV and CRIU refuses
(sk-inet.c do_dump_one_inet_fd: "can't get ifname").
"""
from __future__ import annotations

import pytest

from tests.support.agreement import assert_agrees, namespace_lock_codes
from tests.support.subjects import subject
from tracker.criu.options import arguments_for
from tracker.criu.runner import find_criu

pytestmark = [pytest.mark.criu]

# The subject makes a tap in a network namespace of its own, binds to its link-local address,
# and deletes the tap.
DEVICE_GONE = """
import subprocess
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x40000000) == 0, os.strerror(ctypes.get_errno())   # CLONE_NEWNET
def ip(*words):
    subprocess.run(["ip", *words], check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
ip("link", "set", "lo", "up")
ip("tuntap", "add", "dev", "crw0", "mode", "tap")
ip("link", "set", "crw0", "up")
ip("addr", "add", "fe80::1/64", "dev", "crw0", "nodad")
index = socket.if_nametoindex("crw0")
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("fe80::1", 5000, 0, index))
ip("link", "del", "crw0")
ready(); hold()
"""


def test_link_local_socket_whose_interface_was_deleted_is_blocked():
    with subject(DEVICE_GONE) as s:
        document = assert_agrees(s.pid, "UDPv6 socket on fe80::1 of a deleted interface",
                                 expect="blocked",
                                 codes={"socket.inet.link_local_device_gone"}
                                 | namespace_lock_codes())
        # Past the network lock (the namespace's, here without iptables), CRIU names the cause.
        locked = find_criu().dump(s.pid, arguments_for(document["reasons"]))
        assert not locked.ok and "can't get ifname: No such device" in locked.log, locked.errors
    reason = next(r for r in document["reasons"]
                  if r["code"] == "socket.inet.link_local_device_gone")
    assert "no longer exists" in reason["message"] and reason["fd"] is not None
