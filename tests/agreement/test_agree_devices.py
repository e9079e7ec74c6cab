"""Character and block devices: every device this machine has, judged by crwatch and dumped by CRIU."""
from __future__ import annotations

import os

import pytest

from tests.support.agreement import assert_agrees, namespace_lock_codes
from tests.support.subjects import subject
from tracker.criu.runner import find_criu

pytestmark = [pytest.mark.criu]


def test_memory_devices_are_ok():
    code = """
    kept = [os.open(p, os.O_RDWR) for p in ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")]
    kept.append(os.open("/dev/kmsg", os.O_WRONLY))
    ready(); hold()
    """
    with subject(code) as s:
        document = assert_agrees(s.pid, "/dev/null, zero, full, urandom, kmsg", expect="ok")
    assert [r for r in document["reasons"] if r["code"].startswith("device.")] == []


def test_tun_in_the_host_network_namespace_is_blocked():
    with subject("fd = os.open('/dev/net/tun', os.O_RDWR); ready(); hold()") as s:
        document = assert_agrees(s.pid, "/dev/net/tun in the host netns", expect="blocked",
                                 codes={"device.tun.host_netns"},
                                 criu_error="Net namespace is required to dump tun link")
    assert "(10:200)" in document["reasons"][0]["message"]


@pytest.mark.parametrize("device, number, flags", [
    ("/dev/kvm", "10:232", "os.O_RDWR"),
    ("/dev/fuse", "10:229", "os.O_RDWR"),
    ("/dev/loop-control", "10:237", "os.O_RDWR"),
    ("/dev/tty0", "4:0", "os.O_RDWR | os.O_NOCTTY"),
    ("/dev/kvm", "10:232", "os.O_PATH"),
])
def test_other_character_devices_are_blocked(device: str, number: str, flags: str):
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist on this machine")
    with subject(f"fd = os.open({device!r}, {flags}); ready(); hold()") as s:
        document = assert_agrees(s.pid, f"{device} ({number}) opened with {flags}", expect="blocked",
                                 codes={"device.chr.unsupported"},
                                 criu_error=f"(chr {number})")
    reason = next(r for r in document["reasons"] if r["code"] == "device.chr.unsupported")
    assert device in reason["message"] and f"({number})" in reason["message"]


def test_block_device_is_blocked():
    if not os.path.exists("/dev/loop0"):
        pytest.skip("/dev/loop0 does not exist on this machine")
    with subject("fd = os.open('/dev/loop0', os.O_RDONLY); ready(); hold()") as s:
        assert_agrees(s.pid, "block device /dev/loop0", expect="blocked", codes={"device.blk"},
                      criu_error="(unknown /dev/loop0)")


@pytest.mark.parametrize("device, criu_error", [
    ("/dev/tty1", "tty: Can't fetch params: err = -9"),
    ("/dev/console", "tty: Can't fetch params: err = -9"),
    ("/dev/tty", "tty: Can't fetch params: err = -9"),
    ("/dev/ptmx", "tty: Can't obtain ptmx index: Bad file descriptor"),
    ("pty slave", "tty: Can't fetch params: err = -9"),
])
def test_terminal_open_with_o_path_is_blocked(device: str, criu_error: str):
    if device.startswith("/") and not os.path.exists(device):
        pytest.skip(f"{device} does not exist on this machine")
    # (the pty's slave is closed: the O_PATH fd is the only one on it)
    open_it = ("master, slave = os.openpty(); fd = os.open(os.ttyname(slave), os.O_PATH); "
               "os.close(slave)" if device == "pty slave" else f"fd = os.open({device!r}, os.O_PATH)")
    with subject(f"{open_it}\nready(str(fd)); hold()") as s:
        # /dev/tty with no pty of its session in the tree is refused later on as well.
        document = assert_agrees(s.pid, f"{device} open with O_PATH", expect="blocked",
                                 codes={"device.tty.o_path"}, criu_error=criu_error,
                                 may_also={"terminal.ctty_without_pty"} if device == "/dev/tty"
                                 else set())
    reason = next(r for r in document["reasons"] if r["code"] == "device.tty.o_path")
    assert reason["fd"] == int(s.note) and "O_PATH" in reason["message"]


def test_o_path_fd_on_a_pty_slave_after_an_ordinary_one_dumps():
    # CRIU asks a terminal's parameters once, through the first fd it dumps on it
    code = """
master, slave = os.openpty()
fd = os.open(os.ttyname(slave), os.O_PATH)
ready(); hold()
"""
    with subject(code) as s:
        document = assert_agrees(s.pid, "pty slave open with O_PATH after an ordinary fd",
                                 expect="ok")
    assert not [r for r in document["reasons"] if r["code"] == "device.tty.o_path"]


@pytest.mark.parametrize("parent_flags, child_flags, expect", [
    ("os.O_PATH", "os.O_RDWR | os.O_NOCTTY", "blocked"),
    ("os.O_RDWR | os.O_NOCTTY", "os.O_PATH", "ok"),
], ids=["O_PATH in the parent", "O_PATH in the child"])
def test_o_path_fd_on_a_pty_slave_counts_in_criu_task_order(parent_flags, child_flags, expect):
    # CRIU dumps the root's fds before its child's
    code = f"""
master, slave = os.openpty()
name = os.ttyname(slave); os.close(slave)
r, w = os.pipe()
if os.fork() == 0:
    kept = os.open(name, {child_flags}); os.write(w, b"x"); hold()
os.read(r, 1); os.close(r); os.close(w)
fd = os.open(name, {parent_flags})
ready(); hold()
"""
    with subject(code) as s:
        assert_agrees(s.pid, f"pty slave: parent {parent_flags}, child {child_flags}", expect=expect,
                      tree=True, codes={"device.tty.o_path"} if expect == "blocked" else set(),
                      criu_error="tty: Can't fetch params" if expect == "blocked" else None)


TUN_IN_NETNS = """
libc = ctypes.CDLL(None, use_errno=True)
def unshare_net():
    assert libc.unshare(0x40000000) == 0, ctypes.get_errno()
"""


@pytest.mark.parametrize("opened_in, expect", [
    ("the host's network namespace", "needs_options"),
    ("a network namespace the process left", "blocked"),
    ("the tree's network namespace", "needs_options"),
])
def test_tun_file_judged_by_the_network_namespace_it_belongs_to(opened_in: str, expect: str):
    steps = {"the host's network namespace": "fd = os.open('/dev/net/tun', os.O_RDWR); unshare_net()",
             "a network namespace the process left":
                 "unshare_net(); fd = os.open('/dev/net/tun', os.O_RDWR); unshare_net()",
             "the tree's network namespace": "unshare_net(); fd = os.open('/dev/net/tun', os.O_RDWR)"}
    lock = namespace_lock_codes()  # the root's own network namespace, locked as a whole
    if expect == "needs_options" and not lock:
        expect = "ok"
    with subject(TUN_IN_NETNS + steps[opened_in] + "\nready(); hold()") as s:
        if expect == "blocked":
            assert_agrees(s.pid, f"/dev/net/tun opened in {opened_in}", expect="blocked",
                          codes={"device.tun.foreign_netns"} | lock)
            locked = find_criu().dump(s.pid, ["--network-lock", "nftables"])
            assert "Unable to dump a socket from an external network namespace" in locked.log
        else:
            document = assert_agrees(s.pid, f"/dev/net/tun opened in {opened_in}", expect=expect,
                                     codes=lock)
            assert not [r for r in document["reasons"] if r["code"].startswith("device.")]


def test_tun_open_with_o_path_is_blocked():
    code = TUN_IN_NETNS + "unshare_net(); fd = os.open('/dev/net/tun', os.O_PATH)\nready(); hold()"
    with subject(code) as s:
        assert_agrees(s.pid, "/dev/net/tun open with O_PATH in the tree's network namespace",
                      expect="blocked", codes={"device.tun.o_path"} | namespace_lock_codes())
        locked = find_criu().dump(s.pid, ["--network-lock", "nftables"])
        assert "tun: Can't dump tun-file device: Bad file descriptor" in locked.log
