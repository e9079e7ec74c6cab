"""Memory mappings: every kind this machine can create, judged by crwatch and dumped by CRIU.

Subjects map with libc's mmap through ctypes and close the fd afterwards,
so the mapping alone is judged (Python's mmap module keeps a duplicate fd).
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.agreement import assert_agrees
from tests.support.subjects import subject

pytestmark = [pytest.mark.criu]

MAP = """
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
def map_fd(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE):
    address = libc.mmap(None, size, prot, flags, fd, 0)
    assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    return address
"""
TRACEFS = Path("/sys/kernel/tracing")


def with_map(code: str) -> str:
    return MAP + textwrap.dedent(code)


def memory_reasons(document: dict) -> list[dict]:
    return [r for r in document["reasons"] if r["code"].startswith(("memory.", "file."))]


@pytest.fixture
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="crwatch-memory-") as directory:
        yield Path(directory)


@pytest.fixture
def huge_pages() -> Iterator[None]:
    """A few free 2 MiB huge pages for the test; vm.nr_hugepages is put back afterwards."""
    setting = Path("/proc/sys/vm/nr_hugepages")
    if not setting.exists():
        pytest.skip("this kernel has no hugetlb support")
    before = setting.read_text()
    setting.write_text(str(int(before) + 4))
    try:
        free = int(re.search(r"HugePages_Free:\s+(\d+)", Path("/proc/meminfo").read_text())[1])
        if free < 2:
            pytest.skip("the kernel could not reserve huge pages")
        yield
    finally:
        setting.write_text(before)


@pytest.fixture
def uprobe_library(scratch: Path) -> Iterator[Path]:
    """A private copy of libz to put a uprobe on, so no other process ever hits it."""
    if not (TRACEFS / "uprobe_events").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=False)
    if not (TRACEFS / "uprobe_events").exists():
        pytest.skip("tracefs with uprobe_events is not available")
    ctypes.CDLL("libz.so.1")
    libz = next(line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                if "/libz.so" in line)
    copy = scratch / "libz-copy.so"
    shutil.copy(libz, copy)
    yield copy


def test_anonymous_shared_and_dev_zero_mappings_are_ok():
    code = with_map("""
    map_fd(-1, 1 << 20, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    zero = os.open("/dev/zero", os.O_RDWR)
    map_fd(zero, 8192, mmap.MAP_SHARED); map_fd(zero, 8192, mmap.MAP_PRIVATE); os.close(zero)
    ready(); hold()
    """)
    with subject(code) as s:
        document = assert_agrees(s.pid, "shared anonymous and /dev/zero mappings", expect="ok")
    assert memory_reasons(document) == []


def test_mapped_deleted_file_travels_as_a_ghost(scratch: Path):
    code = with_map(f"""
    fd = os.open({str(scratch / "mapped")!r}, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"x" * 8192); map_fd(fd, 8192); os.close(fd); os.unlink({str(scratch / "mapped")!r})
    ready(); hold()
    """)
    with subject(code) as s:
        document = assert_agrees(s.pid, "mapping of a deleted 8 KiB file", expect="ok",
                                 codes={"file.deleted.ghost"})
    assert memory_reasons(document)[0]["message"].startswith("mapping ")


def test_mapped_deleted_file_over_the_ghost_limit_needs_ghost_limit(scratch: Path):
    code = with_map(f"""
    fd = os.open({str(scratch / "mapped")!r}, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"x" * (3 << 20)); os.fsync(fd)
    map_fd(fd, 3 << 20); os.close(fd); os.unlink({str(scratch / "mapped")!r})
    ready(); hold()
    """)
    with subject(code) as s:
        document = assert_agrees(s.pid, "mapping of a deleted 3 MiB file", expect="needs_options",
                                 codes={"file.deleted.over_ghost_limit"},
                                 criu_error="Can't dump ghost file")
    assert "--ghost-limit 3M" in memory_reasons(document)[0]["remedy"]


def test_mapping_of_a_block_device_is_blocked():
    if not os.path.exists("/dev/loop0"):
        pytest.skip("/dev/loop0 does not exist on this machine")
    code = with_map("""
    fd = os.open("/dev/loop0", os.O_RDONLY); map_fd(fd, 4096, prot=mmap.PROT_READ); os.close(fd)
    ready(); hold()
    """)
    with subject(code) as s:
        assert_agrees(s.pid, "mapping of block device /dev/loop0", expect="blocked",
                      codes={"memory.device"}, criu_error="Can't handle non-regular mapping")


def test_sysv_shm_in_the_host_ipc_namespace_is_blocked():
    code = """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    shmid = libc.shmget(0, 65536, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
    assert shmid >= 0, os.strerror(ctypes.get_errno())
    libc.shmat(shmid, None, 0)
    libc.shmctl(shmid, 0, None)  # IPC_RMID: the segment goes when the subject does
    ready(); hold()
    """
    with subject(code) as s:
        assert_agrees(s.pid, "SysV shm attached, host IPC namespace", expect="blocked",
                      codes={"memory.sysv_shm.host_ipc"}, criu_error="doesn't live in IPC ns")


def test_hugetlb_mappings_and_hugetlb_memfd_are_ok(huge_pages: None):
    code = with_map("""
    MAP_HUGETLB = 0x40000
    map_fd(-1, 2 << 20, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_HUGETLB)
    fd = os.memfd_create("crwatch-huge", os.MFD_HUGETLB); os.ftruncate(fd, 2 << 20)
    map_fd(fd, 2 << 20); os.close(fd)
    ready(); hold()
    """)
    with subject(code) as s:
        document = assert_agrees(s.pid, "hugetlb anonymous mapping and hugetlb memfd mapping",
                                 expect="ok", codes={"memory.hugetlb"})
    assert len(memory_reasons(document)) == 2


def test_memfd_mapping_and_aio_ring_are_ok():
    code = with_map("""
    fd = os.memfd_create("crwatch"); os.ftruncate(fd, 8192); map_fd(fd, 8192); os.close(fd)
    aio = ctypes.c_ulong(0)
    assert libc.syscall(206, 128, ctypes.byref(aio)) == 0, os.strerror(ctypes.get_errno())  # io_setup
    ready(); hold()
    """)
    with subject(code) as s:
        document = assert_agrees(s.pid, "memfd mapping and AIO ring", expect="ok")
    assert memory_reasons(document) == []


def test_io_uring_ring_mapping_is_blocked():
    code = with_map("""
    params = (ctypes.c_uint8 * 120)()
    ring = libc.syscall(425, 8, params)  # io_uring_setup
    assert ring >= 0, os.strerror(ctypes.get_errno())
    map_fd(ring, 4096, mmap.MAP_SHARED | 0x8000); os.close(ring)  # MAP_POPULATE
    ready(); hold()
    """)
    with subject(code) as s:
        assert_agrees(s.pid, "io_uring ring mapped, its fd closed", expect="blocked",
                      codes={"memory.anon_inode"}, criu_error="anon_inode:[io_uring]")


def test_uprobes_area_needs_allow_uprobes(uprobe_library: Path):
    event = f"crwatch/zlib{os.getpid()}"
    code = f"""
    lib = ctypes.CDLL({str(uprobe_library)!r})
    address = ctypes.cast(lib.zlibVersion, ctypes.c_void_p).value
    for line in open("/proc/self/maps"):
        fields = line.split()
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= address < high:
            offset = address - low + int(fields[2], 16)
    def tracefs(name, text):
        fd = os.open({str(TRACEFS)!r} + "/" + name, os.O_WRONLY | os.O_APPEND)
        os.write(fd, text.encode()); os.close(fd)
    tracefs("uprobe_events", f"p:{event} {uprobe_library}:{{offset:#x}}\\n")
    tracefs("events/{event}/enable", "1")
    lib.zlibVersion()  # the uprobe fires: the kernel adds the [uprobes] area
    tracefs("events/{event}/enable", "0")
    tracefs("uprobe_events", "-:{event}\\n")
    ready(); hold()
    """
    try:
        with subject(code) as s:
            assert_agrees(s.pid, "[uprobes] area (uprobe fired, then removed)",
                          expect="needs_options", codes={"memory.uprobes"},
                          criu_error="Consider using --allow-uprobes")
    finally:
        _remove_uprobe(event)


def _remove_uprobe(event: str) -> None:
    """Take the test's uprobe away if the subject died before it could."""
    if event.split("/")[1] in (TRACEFS / "uprobe_events").read_text():
        (TRACEFS / "events" / event / "enable").write_text("0")
        fd = os.open(TRACEFS / "uprobe_events", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, f"-:{event}\n".encode())
        finally:
            os.close(fd)
