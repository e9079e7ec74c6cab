"""SysV IPC objects of real processes, judged by crwatch and by the real CRIU.

SysV objects outlive their creator, so every object a subject makes in the
host's IPC namespace is removed by the test, whatever happens.
"""
from __future__ import annotations

import ctypes

import pytest

from tests.support.agreement import assert_agrees
from tests.support.subjects import subject

pytestmark = [pytest.mark.criu]

IPC_RMID = 0
SYSV_CODES = {"ipc.sysv_sem.host_ns", "ipc.sysv_msg.host_ns", "ipc.sysv_shm.host_ns"}

# A semaphore set and a message queue the subject has used, and a shared
# memory segment it created without attaching it (attached ones are the
# memory module's). ready() reports the ids so the test can remove them.
MAKE_OBJECTS = """
libc = ctypes.CDLL(None, use_errno=True)
IPC_PRIVATE, IPC_CREAT = 0, 0o1000
class Sembuf(ctypes.Structure):
    _fields_ = [("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flg", ctypes.c_short)]
semid = libc.semget(IPC_PRIVATE, 2, IPC_CREAT | 0o600)
msqid = libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600)
shmid = libc.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600)
assert min(semid, msqid, shmid) >= 0, ctypes.get_errno()
assert libc.semop(semid, ctypes.byref(Sembuf(1, 1, 0)), 1) == 0
message = ctypes.create_string_buffer(b"\\x01" + bytes(7) + b"hello")
assert libc.msgsnd(msqid, message, 5, 0) == 0
"""
IN_OWN_NAMESPACE = "assert ctypes.CDLL(None).unshare(0x08000000) == 0  # CLONE_NEWIPC\n"
REPORT = "ready(f'{semid} {msqid} {shmid}')\nhold()\n"


def _remove(ids: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    semid, msqid, shmid = (int(word) for word in ids.split())
    libc.semctl(semid, 0, IPC_RMID)
    libc.msgctl(msqid, IPC_RMID, None)
    libc.shmctl(shmid, IPC_RMID, None)


def test_sysv_objects_in_the_host_namespace_are_left_behind_silently():
    with subject(MAKE_OBJECTS + REPORT) as running:
        try:
            document = assert_agrees(running.pid, "SysV semaphore, message queue and detached shm "
                                     "in the host IPC namespace", expect="ok", codes=SYSV_CODES)
        finally:
            _remove(running.note)
    ids = running.note.split()
    messages = {r["code"]: r["message"] for r in document["reasons"]}
    assert f"semaphore set id {ids[0]} " in messages["ipc.sysv_sem.host_ns"]
    assert f"message queue id {ids[1]} " in messages["ipc.sysv_msg.host_ns"]
    assert f"shared memory id {ids[2]} " in messages["ipc.sysv_shm.host_ns"]


def test_sysv_objects_in_the_trees_own_namespace_are_dumped_with_it():
    with subject(IN_OWN_NAMESPACE + MAKE_OBJECTS + REPORT) as running:
        document = assert_agrees(running.pid, "SysV objects in the tree's own IPC namespace",
                                 expect="ok")
    assert not SYSV_CODES & {r["code"] for r in document["reasons"]}
