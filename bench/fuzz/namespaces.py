"""Namespaces: the tree's own and nested ones, pid-namespace inits, user maps
(tracker/checks/namespaces.py; CRIU namespaces.c, pid-ns handling in pstree.c)."""
from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess

from bench.fuzz import generator
from bench.fuzz.runtime import CLONE, hold, unshare


@generator("namespaces", weight=2, draw=lambda rng, place: {
    "kind": rng.choice(("net", "uts", "ipc", "cgroup", "time"))})
def unshare_namespace(ctx, kind):
    """the process in a new net (its loopback up), uts, ipc or cgroup namespace (time: for its
    later children)"""
    unshare(CLONE[kind])
    if kind == "net":
        loopback_up()


def loopback_up() -> None:
    """Bring `lo` of the current network namespace up (SIOCGIFFLAGS, SIOCSIFFLAGS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, 0x8913, request))[1]
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))   # IFF_UP


@generator("namespaces", draw=lambda rng, place: {"private": rng.random() < 0.5})
def mount_namespace(ctx, private):
    """the process in a new mount namespace, its mounts made private or left as they were"""
    unshare(CLONE["mnt"])
    if private:
        subprocess.run(["mount", "--make-rprivate", "/"], check=True)


@generator("namespaces", stage="privileges", single_threaded=True, draw=lambda rng, place: {
    "mapping": rng.choice(("identity", "identity", "shifted", "none")),
    "then": rng.choice(("nothing", "nothing", "uts", "ipc", "net"))})
def user_namespace(ctx, mapping, then):
    """the process in a new user namespace, its ids mapped by a helper (0 to 0, or 0 to 100000)
    or not at all, then maybe in a uts, ipc or net namespace that user namespace owns"""
    read_end, write_end = os.pipe()
    done_read, done_write = os.pipe()
    parent = os.getpid()
    helper = ctx.fork()
    if helper == 0:
        os.read(read_end, 1)
        if mapping != "none":
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{parent}/{name}", "w") as id_map:
                    id_map.write("0 0 4294967295" if mapping == "identity" else "0 100000 65536")
        os.write(done_write, b"x")
        os._exit(0)
    os.close(read_end)
    os.close(done_write)
    try:
        unshare(CLONE["user"])
    finally:
        os.write(write_end, b"x")
        os.close(write_end)
        os.read(done_read, 1)
        os.close(done_read)
        os.waitpid(helper, 0)
    if then != "nothing":
        unshare(CLONE[then])
        if then == "net":
            loopback_up()


@generator("namespaces", once=True, single_threaded=True, draw=lambda rng, place: {
    "setsid": rng.random() < 0.7, "second": rng.random() < 0.3})
def pid_namespace_init(ctx, setsid, second):
    """a child that is init of a new pid namespace (leading its own session or not, with a second member);
    the process's later children are members of that namespace too (and it can start no thread)"""
    unshare(CLONE["pid"])
    read_end, write_end = os.pipe()
    init = ctx.fork()
    if init == 0:
        os.close(read_end)
        if setsid:
            os.setsid()
        if second and ctx.fork() == 0:
            os.close(write_end)
            hold()
        os.write(write_end, b"x")
        os.close(write_end)
        hold()
    os.close(write_end)
    os.read(read_end, 1)
    os.close(read_end)
