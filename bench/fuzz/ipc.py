"""SysV IPC and POSIX message queues (tracker/checks/ipc.py, memory.py; CRIU ipc_ns.c, shmem.c,
files-reg.c for the mqueue fd)."""
from __future__ import annotations

import ctypes
import os

from bench.fuzz import generator
from bench.fuzz.runtime import CLONE, check, libc, unshare

IPC_PRIVATE, IPC_CREAT, IPC_RMID = 0, 0o1000, 0
libc.shmat.restype = ctypes.c_void_p


class Sembuf(ctypes.Structure):
    _fields_ = [("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flg", ctypes.c_short)]


@generator("ipc", draw=lambda rng, place: {"kind": rng.choice(("sem", "msg", "shm")),
                                           "used": rng.random() < 0.7,
                                           "own_namespace": rng.random() < 0.3})
def sysv_object(ctx, kind, used, own_namespace):
    """a SysV semaphore set, message queue or detached shm segment in the process's IPC namespace
    (a new one of its own, or the one it has)"""
    if own_namespace:
        unshare(CLONE["ipc"])
    if kind == "sem":
        ident = check(libc.semget(IPC_PRIVATE, 2, IPC_CREAT | 0o600), "semget")
        if used:
            check(libc.semop(ident, ctypes.byref(Sembuf(1, 1, 0)), 1), "semop")
    elif kind == "msg":
        ident = check(libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600), "msgget")
        if used:
            check(libc.msgsnd(ident, ctypes.create_string_buffer(b"\x01" + bytes(7) + b"hello"), 5, 0),
                  "msgsnd")
    else:
        ident = check(libc.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600), "shmget")
    ctx.sysv.append((kind, ident, ctx.ipc_namespace()))


@generator("ipc", draw=lambda rng, place: {"removed": rng.random() < 0.5})
def sysv_shm_attached(ctx, removed):
    """a SysV shm segment attached to the process (marked for removal or not)"""
    ident = check(libc.shmget(IPC_PRIVATE, 65536, IPC_CREAT | 0o600), "shmget")
    address = libc.shmat(ident, None, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "shmat")
    if removed:
        libc.shmctl(ident, IPC_RMID, None)
    else:
        ctx.sysv.append(("shm", ident, ctx.ipc_namespace()))


@generator("ipc", weight=0.7, draw=lambda rng, place: {"unlinked": rng.random() < 0.5})
def posix_mqueue(ctx, unlinked):
    """a POSIX message queue fd (mq_open), its name unlinked or not"""
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    rt.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    name = f"/crwatch-fuzz-{os.getpid()}-{len(ctx.kept)}".encode()
    ctx.keep(check(rt.mq_open(name, os.O_RDWR | os.O_CREAT, 0o600, None), "mq_open"))
    if unlinked:
        rt.mq_unlink(name)
    else:
        ctx.sysv.append(("mqueue", name.decode(), ctx.ipc_namespace()))
