"""ipc: /proc/sysvipc tables and the host-namespace judgement, on fixture /proc trees."""
from __future__ import annotations

from pathlib import Path

from tracker.checks import ipc
from tracker.context import AuditContext
from tracker.procfs import Proc

SUBJECT, OTHER = 100, 300
HOST_NS = "ipc:[4026531839]"

MSG = ("       key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid"
       "      stime      rtime      ctime\n"
       f"         0          4   600           5          1   {SUBJECT}     0     0     0     0"
       "     0 1796284341          0 1796284341\n"
       f"        -1          5   600           0          0   {OTHER}   {SUBJECT}     0     0     0"
       "     0 1796284341          0 1796284341\n")
SHM = ("       key      shmid perms                  size  cpid  lpid nattch   uid   gid"
       "  cuid  cgid      atime      dtime      ctime                   rss                  swap\n"
       f"         0          7   600                  4096   {SUBJECT}     0      0     0     0"
       "     0     0          0          0 1796284341                     0                     0\n"
       f"      1234          8   600                  4096   {SUBJECT}   {SUBJECT}      1     0"
       "     0     0     0          0          0 1796284341                  4096"
       "                     0\n")
SEM = "       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime\n"


def fixture(root: Path, subject_ns: str = HOST_NS) -> list:
    for pid, namespace in (("self", HOST_NS), (str(SUBJECT), subject_ns)):
        (root / pid / "ns").mkdir(parents=True)
        (root / pid / "ns" / "ipc").symlink_to(namespace)
    (root / str(SUBJECT) / "maps").write_text(
        "7f0000000000-7f0000001000 rw-s 00000000 00:01 8                 /SYSV000004d2 (deleted)\n")
    (root / "sysvipc").mkdir()
    (root / "sysvipc" / "msg").write_text(MSG)
    (root / "sysvipc" / "shm").write_text(SHM)
    (root / "sysvipc" / "sem").write_text(SEM)
    ctx = AuditContext(root_pid=SUBJECT, tree_pids={SUBJECT}, proc_root=root)
    return list(ipc.check_process(ctx, Proc(SUBJECT, root)))


def test_sysvipc_tables_parse_by_their_header():
    rows = ipc.parse_sysvipc(MSG)
    assert [(row["msqid"], row["lspid"], row["key"]) for row in rows] == [
        ("4", str(SUBJECT), "0"), ("5", str(OTHER), "-1")]
    assert ipc.parse_sysvipc("") == []


def test_objects_the_process_used_in_the_host_namespace_are_noted(tmp_path: Path):
    found = fixture(tmp_path)
    assert [f.code for f in found] == ["ipc.sysv_msg.host_ns"] * 2 + ["ipc.sysv_shm.host_ns"]
    assert "message queue id 4 (key 0x00000000, 1 message(s) queued)" in found[0].message
    assert "message queue id 5 (key 0xffffffff, 0 message(s) queued)" in found[1].message
    # segment 8 is attached (mapped as /SYSV000004d2): the memory module judges that one
    assert "shared memory id 7 " in found[2].message and all(f.pid == SUBJECT for f in found)


def test_a_tree_with_its_own_ipc_namespace_carries_its_objects(tmp_path: Path):
    assert fixture(tmp_path, subject_ns="ipc:[4026532999]") == []

