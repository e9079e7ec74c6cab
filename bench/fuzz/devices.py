"""Character and block devices (tracker/checks/devices.py; CRIU files.c dump_chrdev, tun.c)."""
from __future__ import annotations

import fcntl
import os
import struct

from bench.fuzz import generator
from bench.fuzz.namespaces import loopback_up
from bench.fuzz.runtime import CLONE, unshare

DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom", "/dev/random", "/dev/kmsg",
           "/dev/kvm", "/dev/fuse", "/dev/net/tun", "/dev/loop-control", "/dev/tty0", "/dev/loop0",
           "/dev/ptmx", "/dev/console", "/dev/tty1", "/dev/ttyS0", "/dev/vcs", "/dev/vcsa",
           "/dev/vsock", "/dev/vga_arbiter", "/dev/userfaultfd", "/dev/cpu_dma_latency",
           "/dev/btrfs-control")


@generator("devices", weight=2, draw=lambda rng, place: {
    "path": rng.choice(DEVICES), "mode": rng.choice(("rdwr", "rdwr", "rdonly", "wronly", "o_path"))})
def device(ctx, path, mode):
    """an fd on a device node (memory devices, kvm, fuse, tun, misc devices, consoles, serial,
    vcs, a block device), open for reading, writing, both, or O_PATH"""
    if path == "/dev/loop0" and mode in ("rdwr", "wronly"):
        mode = "rdonly"   # the loop device has no backing file to write to
    flags = {"rdwr": os.O_RDWR, "rdonly": os.O_RDONLY, "wronly": os.O_WRONLY, "o_path": os.O_PATH}[mode]
    ctx.keep(os.open(path, flags | (0 if mode == "o_path" else os.O_NOCTTY | os.O_NONBLOCK)))


@generator("devices", draw=lambda rng, place: {"own_netns": rng.random() < 0.5,
                                               "interface": rng.choice(("none", "tun", "tap")),
                                               "persist": rng.random() < 0.3})
def tun_device(ctx, own_netns, interface, persist):
    """/dev/net/tun, in the process's own network namespace or not, attached to a tun or tap
    interface (persistent or not, in its own namespace only: nothing outlives the tree) or none"""
    if own_netns:
        unshare(CLONE["net"])
        loopback_up()
    fd = ctx.keep(os.open("/dev/net/tun", os.O_RDWR))
    if interface == "none":
        return
    name = f"crwfz{os.getpid() % 100000}{len(ctx.kept)}".encode()[:15]
    flags = (1 if interface == "tun" else 2) | 0x1000   # IFF_TUN or IFF_TAP, IFF_NO_PI
    fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH22x", name, flags))   # TUNSETIFF
    if persist and own_netns:
        fcntl.ioctl(fd, 0x400454cb, 1)   # TUNSETPERSIST
