"""memory on fixture /proc trees: how each kind of line of /proc/PID/maps is judged."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tracker.checks import memory, paths
from tracker.context import AuditContext
from tracker.procfs import Proc, mnt_id_of

PID = 100
MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
"""
RANGE = "7f0000000000-7f0000001000"


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    """A /proc with the audited process PID and the auditor (self), both in the host namespaces."""
    for name in (str(PID), "self"):
        (tmp_path / name / "ns").mkdir(parents=True)
        for kind, inode in (("mnt", 1), ("ipc", 3)):
            os.symlink(f"{kind}:[{inode}]", tmp_path / name / "ns" / kind)
    # Real files are mapped in some tests: the mounts they are on (found by
    # their real mount ids, as the checks find them) are in the table too.
    real = {mnt_id_of(str(directory)): os.stat(directory).st_dev
            for directory in (tmp_path, tempfile.gettempdir())}
    table = "".join(line + "\n" for line in MOUNTINFO.splitlines() if int(line.split()[0]) not in real)
    table += "".join(f"{mnt_id} 1 {os.major(dev)}:{os.minor(dev)} / /real{mnt_id} rw - tmpfs t rw\n"
                     for mnt_id, dev in real.items())
    for name in (str(PID), "self"):
        (tmp_path / name / "mountinfo").write_text(table)
    (tmp_path / "self" / "root").mkdir()
    (tmp_path / str(PID) / "map_files").mkdir()
    return tmp_path


@pytest.fixture
def deleted_file() -> Iterator[Path]:
    """A path whose stat is that of a deleted file (no link left), as map_files shows one."""
    with tempfile.TemporaryFile() as file:
        file.write(b"x" * 8192)
        file.flush()
        yield Path(f"/proc/self/fd/{file.fileno()}")


def judge(proc_root: Path, *lines: str, smaps: str = "") -> list[tuple[str, str]]:
    base = proc_root / str(PID)
    (base / "maps").write_text("".join(f"{line}\n" for line in lines))
    (base / "smaps").write_text(smaps)
    ctx = AuditContext(root_pid=PID, tree_pids={PID}, proc_root=proc_root)
    return [(f.code, f.message) for f in memory.check_process(ctx, Proc(PID, proc_root))]


def line(path: str, device: str = "00:00", inode: int = 0, perms: str = "rw-p") -> str:
    return f"{RANGE} {perms} 00000000 {device} {inode} {path}".rstrip()


def codes(findings: list[tuple[str, str]]) -> list[str]:
    return [code for code, _ in findings]


def test_anonymous_memory_and_the_kernel_areas_need_no_finding(proc_root: Path):
    assert judge(proc_root, line(""), line("[heap]"), line("[stack]"), line("[vdso]"),
                 line("[vvar]"), line("[vvar_vclock]"), line("[vsyscall]"),
                 line("[anon:glibc malloc]"), line("/dev/zero (deleted)", "00:01", 12, "rw-s"),
                 line("/memfd:cache (deleted)", "00:01", 13, "rw-s"),
                 line("/[aio] (deleted)", "00:13", 14, "rw-s"),
                 line("socket:[4242]", "00:08", 4242, "rw-s")) == []


def test_uprobes_area_needs_the_option_and_anon_inode_rings_are_blocked(proc_root: Path):
    assert codes(judge(proc_root, line("[uprobes]", perms="--xp"))) == ["memory.uprobes"]
    assert codes(judge(proc_root, line("anon_inode:[perf_event]", "00:10", 5, "r--s"),
                       line("/dmabuf:", "00:09", 6, "rw-s"))) == ["memory.anon_inode"] * 2


def test_areas_nobody_knows_are_blocked_with_their_name(proc_root: Path):
    assert judge(proc_root, line("[mystery]")) == [
        ("memory.unknown", f"mapping {RANGE} is an unknown area '[mystery]'")]


def test_sysv_shm_blocks_only_in_the_host_ipc_namespace(proc_root: Path):
    shm = line("/SYSV00000000 (deleted)", "00:01", 32769, "rw-s")
    assert codes(judge(proc_root, shm)) == ["memory.sysv_shm.host_ipc"]
    (proc_root / str(PID) / "ns" / "ipc").unlink()
    os.symlink("ipc:[9]", proc_root / str(PID) / "ns" / "ipc")
    assert judge(proc_root, shm) == []


def test_huge_pages_are_noted_once_per_area(proc_root: Path):
    huge = line("/anon_hugepage (deleted)", "00:11", 79447)
    assert judge(proc_root, huge, huge) == [
        ("memory.hugetlb", f"mapping {RANGE} is 4096 bytes of huge-page memory (/anon_hugepage)")]


def test_a_mapped_deleted_file_is_a_ghost(proc_root: Path, deleted_file: Path):
    os.symlink(deleted_file, proc_root / str(PID) / "map_files" / RANGE)
    assert codes(judge(proc_root, line("/tmp/data (deleted)", "fe:00", 77, "rw-s"))) == [
        "file.deleted.ghost"]


def test_pseudo_files_mapped_as_io_memory_are_blocked(proc_root: Path):
    name = "/sys/devices/pci0000:00/0000:00:02.0/resource0"
    (proc_root / "self" / "root" / name[1:]).parent.mkdir(parents=True)
    (proc_root / "self" / "root" / name[1:]).write_text("")
    os.symlink(proc_root / "self" / "root" / name[1:], proc_root / str(PID) / "map_files" / RANGE)
    resource = line(name, "00:16", 300, "rw-s")
    smaps = f"{RANGE} rw-s 00000000 00:16 300 /sys/x\nSize: 4 kB\nVmFlags: rd wr sh mr mw me ms io pf dd\n"
    assert codes(judge(proc_root, resource, smaps=smaps)) == ["memory.io"]
    assert judge(proc_root, resource, smaps=smaps.replace("io pf ", "")) == []


def test_shared_anonymous_memory_and_memfds_are_known_by_the_shmem_device(proc_root: Path):
    # Even where the process's own table lists a mount of that device, CRIU
    # takes them by their device (kdat.shmem_dev) and dumps their contents:
    # they are no files to look up (their mount id is 0).
    shmem = paths.shmem_device()
    mountinfo = proc_root / str(PID) / "mountinfo"
    mountinfo.write_text(mountinfo.read_text() + f"90 27 {os.major(shmem)}:{os.minor(shmem)} / "
                                                  f"/odd rw - tmpfs t rw\n")
    device = f"{os.major(shmem):02x}:{os.minor(shmem):02x}"
    assert judge(proc_root, line("/dev/zero (deleted)", device, 12, "rw-s"),
                 line("/memfd:cache (deleted)", device, 13, "rw-s")) == []
