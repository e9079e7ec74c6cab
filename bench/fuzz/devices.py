"""Character and block devices (tracker/checks/devices.py; CRIU files.c dump_chrdev, tun.c)."""
from __future__ import annotations

import os

from bench.fuzz import generator

DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom", "/dev/random", "/dev/kmsg",
           "/dev/kvm", "/dev/fuse", "/dev/net/tun", "/dev/loop-control", "/dev/tty0", "/dev/loop0",
           "/dev/ptmx", "/dev/console", "/dev/tty1", "/dev/ttyS0", "/dev/vcs", "/dev/vcsa",
           "/dev/vsock", "/dev/vga_arbiter", "/dev/userfaultfd", "/dev/cpu_dma_latency",
           "/dev/btrfs-control")


@generator("devices", weight=2, draw=lambda rng, place: {"path": rng.choice(DEVICES),
                                                         "o_path": rng.random() < 0.15})
def device(ctx, path, o_path):
    """an fd on a device node (memory devices, kvm, fuse, tun, misc devices, consoles, serial,
    vcs, a block device)"""
    flags = os.O_PATH if o_path else (os.O_WRONLY if path == "/dev/kmsg" else
                                      os.O_RDONLY if path == "/dev/loop0" else
                                      os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    ctx.keep(os.open(path, flags))
