"""File locks and leases (tracker/checks/locks.py; CRIU file-lock.c)."""
from __future__ import annotations

import fcntl
import os
import struct
import threading
import time

from bench.fuzz import generator

F_OFD_SETLK, F_OFD_SETLKW = 37, 38


def locked_file(ctx) -> str:
    path = ctx.path("locked")
    with open(path, "w") as file:
        file.write("0123456789" * 10)
    return path


def ofd_lock(fd: int, kind: int, *, wait: bool = False) -> None:
    fcntl.fcntl(fd, F_OFD_SETLKW if wait else F_OFD_SETLK, struct.pack("hhqqi4x", kind, 0, 0, 0, 0))


@generator("locks", weight=2, draw=lambda rng, place: {
    "kind": rng.choice(("flock_sh", "flock_ex", "posix_read", "posix_write_range", "ofd", "lease_read",
                        "lease_write"))})
def file_lock(ctx, kind):
    """a flock, POSIX (whole or range), OFD lock or a read/write lease held on a file"""
    path = locked_file(ctx)
    fd = ctx.keep(os.open(path, os.O_RDONLY if kind == "lease_read" else os.O_RDWR))
    if kind.startswith("flock"):
        fcntl.flock(fd, fcntl.LOCK_SH if kind == "flock_sh" else fcntl.LOCK_EX)
    elif kind == "posix_read":
        fcntl.lockf(fd, fcntl.LOCK_SH)
    elif kind == "posix_write_range":
        fcntl.lockf(fd, fcntl.LOCK_EX, 10, 5)
    elif kind == "ofd":
        ofd_lock(fd, fcntl.F_WRLCK)
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK if kind == "lease_read" else fcntl.F_WRLCK)


@generator("locks", draw=lambda rng, place: {"also_inside": rng.random() < 0.5})
def lock_held_outside(ctx, also_inside):
    """a file the process has open that a process outside the tree holds a read lock on"""
    path = locked_file(ctx)
    fd = ctx.keep(os.open(path, os.O_RDWR))

    def lock_outside():
        ctx.kept.append(other := os.open(path, os.O_RDWR))
        fcntl.lockf(other, fcntl.LOCK_SH)
    ctx.outside(setup=lock_outside)
    if also_inside:
        fcntl.lockf(fd, fcntl.LOCK_SH)


@generator("locks", threaded=True, draw=lambda rng, place: {
    "holder": rng.choice(("posix", "flock_in_ofd"))})
def lock_contended(ctx, holder):
    """a POSIX lock held by this process, waited for (F_OFD_SETLKW) by a thread of each child, or of
    itself when it has none"""
    path = locked_file(ctx)
    fd = ctx.keep(os.open(path, os.O_RDWR))
    if holder == "posix":
        fcntl.lockf(fd, fcntl.LOCK_EX)
    else:
        ofd_lock(fd, fcntl.F_WRLCK)
    inode = os.fstat(fd).st_ino
    ctx.in_children.append(lambda: wait_for_lock(ctx, path, inode))
    ctx.after_children.append(lambda children: None if children else wait_for_lock(ctx, path, inode))


def wait_for_lock(ctx, path: str, inode: int) -> None:
    """A thread blocks on the lock; return once /proc/locks lists it as a waiter."""
    fd = ctx.keep(os.open(path, os.O_RDWR))
    threading.Thread(target=ofd_lock, args=(fd, fcntl.F_WRLCK), kwargs={"wait": True},
                     daemon=True).start()
    deadline = time.monotonic() + 10
    while not any("->" in line and f":{inode} " in line for line in open("/proc/locks")):
        if time.monotonic() > deadline:
            raise OSError(0, "the lock waiter never blocked")
        time.sleep(0.001)
