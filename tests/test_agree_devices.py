"""Character and block devices: every device this machine has, judged by crwatch and dumped by CRIU."""
from __future__ import annotations

import os

import pytest

from tests.agreement import assert_agrees
from tests.subjects import subject


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
