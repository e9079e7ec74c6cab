"""SysV IPC objects (semaphore sets, message queues, shared memory) the process uses.

CRIU dumps the contents of an IPC namespace only when the tree has its own;
a tree in the host's IPC namespace (the one CRIU itself runs in) leaves its
objects behind, silently. SysV objects are not fds, so the only traces of
who uses them are the pids the kernel records: last semop (GETPID), last
msgsnd/msgrcv, creator and last shmat/shmdt. Attached shared memory is the
memory module's (CRIU refuses those mappings); POSIX mqueue fds are the
files module's.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Iterator

from tracker.context import AuditContext
from tracker.procfs import DEFAULT_PROC_ROOT, AccessDenied, Proc, ProcessGone
from tracker.rules import INFO, Finding, Rule

_REMEDY = ("run the application in its own IPC namespace (e.g. `unshare --ipc`) so that CRIU "
           "carries its SysV objects, or recreate the object after restore")

RULES = (
    Rule("ipc.sysv_sem.host_ns", "A SysV semaphore set in the host IPC namespace is not dumped",
         INFO, _REMEDY),
    Rule("ipc.sysv_msg.host_ns", "A SysV message queue in the host IPC namespace is not dumped",
         INFO, _REMEDY),
    Rule("ipc.sysv_shm.host_ns", "A detached SysV shared memory segment in the host IPC namespace "
         "is not dumped", INFO, _REMEDY),
)

GETPID = 11  # semctl: pid of the last semop on one semaphore


def parse_sysvipc(text: str) -> list[dict[str, str]]:
    """A /proc/sysvipc table: one dict per object, keyed by the header's column names."""
    lines = text.splitlines()
    if not lines:
        return []
    header = lines[0].split()
    return [dict(zip(header, line.split())) for line in lines[1:] if line.strip()]


def check_process(ctx: AuditContext, proc: Proc) -> Iterator[Finding]:
    if not _in_host_ipc_namespace(ctx, proc):
        return  # CRIU dumps the tree's own IPC namespace with everything in it
    tables = ctx.table("ipc.sysvipc", lambda: _read_tables(ctx.proc_root))
    yield from _semaphores(ctx, proc, tables["sem"])
    yield from _message_queues(proc, tables["msg"])
    yield from _detached_segments(proc, tables["shm"])


def _in_host_ipc_namespace(ctx: AuditContext, proc: Proc) -> bool:
    own = ctx.table("ipc.own_namespace", lambda: _own_namespace(ctx.proc_root))
    try:
        return own is not None and proc.namespace("ipc") == own
    except (AccessDenied, ProcessGone):
        return False  # a zombie has no namespaces left (and uses no IPC object)


def _own_namespace(proc_root: Path) -> str | None:
    """The IPC namespace of the auditor, which is the one CRIU runs in and calls the host's."""
    try:
        return os.readlink(proc_root / "self" / "ns" / "ipc")
    except OSError:
        return None


def _read_tables(proc_root: Path) -> dict[str, list[dict[str, str]]]:
    tables = {}
    for name in ("sem", "msg", "shm"):
        try:
            tables[name] = parse_sysvipc((proc_root / "sysvipc" / name).read_text())
        except OSError:
            tables[name] = []  # kernel without CONFIG_SYSVIPC
    return tables


def _semaphores(ctx: AuditContext, proc: Proc, sets: list[dict[str, str]]) -> Iterator[Finding]:
    users = ctx.table("ipc.semaphore_users", lambda: _semaphore_users(ctx.proc_root, sets))
    for entry in sets:
        if proc.pid in users.get(int(entry["semid"]), set()):
            yield Finding("ipc.sysv_sem.host_ns",
                          f"SysV semaphore set id {entry['semid']} (key {_key(entry)}, "
                          f"{entry['nsems']} semaphores) used by pid {proc.pid} is not carried "
                          "in the image (host IPC namespace)", proc.pid)


_libc = ctypes.CDLL(None, use_errno=True)


def _semaphore_users(proc_root: Path, sets: list[dict[str, str]]) -> dict[int, set[int]]:
    """semid -> pids of the last semop on each of its semaphores (asked of the live kernel)."""
    if proc_root != DEFAULT_PROC_ROOT:
        return {}  # semctl describes the running system, not this /proc tree
    users: dict[int, set[int]] = {}
    for entry in sets:
        semid = int(entry["semid"])
        pids = {_libc.semctl(semid, number, GETPID) for number in range(int(entry["nsems"]))}
        users[semid] = {pid for pid in pids if pid > 0}
    return users


def _message_queues(proc: Proc, queues: list[dict[str, str]]) -> Iterator[Finding]:
    for entry in queues:
        if proc.pid in (int(entry["lspid"]), int(entry["lrpid"])):
            yield Finding("ipc.sysv_msg.host_ns",
                          f"SysV message queue id {entry['msqid']} (key {_key(entry)}, "
                          f"{entry['qnum']} message(s) queued) used by pid {proc.pid} is not "
                          "carried in the image (host IPC namespace)", proc.pid)


def _detached_segments(proc: Proc, segments: list[dict[str, str]]) -> Iterator[Finding]:
    mine = [entry for entry in segments if proc.pid in (int(entry["cpid"]), int(entry["lpid"]))]
    attached = _attached_segments(proc) if mine else set()
    for entry in mine:
        shmid = int(entry["shmid"])
        if shmid not in attached:
            yield Finding("ipc.sysv_shm.host_ns",
                          f"SysV shared memory id {shmid} (key {_key(entry)}, {entry['size']} "
                          f"bytes) created or last attached by pid {proc.pid} is not carried in "
                          "the image (host IPC namespace)", proc.pid)


def _attached_segments(proc: Proc) -> set[int]:
    """shmids mapped by the process: their mappings are named /SYSV<key> with the shmid as inode."""
    return {mapping.inode for mapping in proc.maps if mapping.path.startswith("/SYSV")}


def _key(entry: dict[str, str]) -> str:
    return f"{int(entry['key']) & 0xFFFFFFFF:#010x}"  # printed as a signed int
