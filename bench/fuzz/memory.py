"""Memory mappings (tracker/checks/memory.py; CRIU proc_parse.c handle_vma, shmem.c, aio.c)."""
from __future__ import annotations

import ctypes
import mmap
import os

from bench.fuzz import generator
from bench.fuzz.runtime import check, libc, map_memory

SHARED, PRIVATE, ANONYMOUS = mmap.MAP_SHARED, mmap.MAP_PRIVATE, mmap.MAP_ANONYMOUS
MAP_HUGETLB, MAP_POPULATE = 0x40000, 0x8000


@generator("memory", draw=lambda rng, place: {
    "shared": rng.random() < 0.5, "pages": rng.choice((1, 16, 256)), "touched": rng.random() < 0.5,
    "prot": rng.choice((0, 1, 3, 7))})
def anonymous_mapping(ctx, shared, pages, touched, prot):
    """an anonymous mapping, shared or private, touched or not, of some protection"""
    flags = (SHARED if shared else PRIVATE) | ANONYMOUS | (MAP_POPULATE if touched else 0)
    map_memory(-1, pages * 4096, flags, prot)


@generator("memory", draw=lambda rng, place: {"shared": rng.random() < 0.5, "keep_fd": rng.random() < 0.3,
                                              "tmpfs": rng.random() < 0.3, "deleted": rng.random() < 0.3})
def file_mapping(ctx, shared, keep_fd, tmpfs, deleted):
    """a shared or private mapping of a file (ext4 or tmpfs), its fd closed or kept, the file deleted"""
    path = os.path.join(ctx.mount("tmpfs"), "mapped") if tmpfs else ctx.path("mapped")
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"x" * 8192)
    map_memory(fd, 8192, SHARED if shared else PRIVATE)
    if deleted:
        os.unlink(path)
    if keep_fd:
        ctx.keep(fd)
    else:
        os.close(fd)


@generator("memory", draw=lambda rng, place: {"shared": rng.random() < 0.7, "keep_fd": rng.random() < 0.3})
def memfd_mapping(ctx, shared, keep_fd):
    """a mapping of a memfd, its fd closed or kept"""
    fd = os.memfd_create("crwatch-fuzz-map")
    os.ftruncate(fd, 16384)
    map_memory(fd, 16384, SHARED if shared else PRIVATE)
    if keep_fd:
        ctx.keep(fd)
    else:
        os.close(fd)


@generator("memory", weight=0.7, draw=lambda rng, place: {"memfd": rng.random() < 0.5,
                                                          "shared": rng.random() < 0.5})
def hugetlb_mapping(ctx, memfd, shared):
    """a 2 MiB hugetlb mapping, anonymous or of a hugetlb memfd (the fuzzer reserves huge pages)"""
    if memfd:
        fd = os.memfd_create("crwatch-fuzz-huge", os.MFD_HUGETLB)
        os.ftruncate(fd, 2 << 20)
        map_memory(fd, 2 << 20, SHARED if shared else PRIVATE)
        os.close(fd)
    else:
        map_memory(-1, 2 << 20, (SHARED if shared else PRIVATE) | ANONYMOUS | MAP_HUGETLB)


@generator("memory", draw=lambda rng, place: {"shared": rng.random() < 0.5})
def dev_zero_mapping(ctx, shared):
    """a mapping of /dev/zero"""
    fd = os.open("/dev/zero", os.O_RDWR)
    map_memory(fd, 8192, SHARED if shared else PRIVATE)
    os.close(fd)


@generator("memory", weight=0.5, draw=lambda rng, place: {"shared": rng.random() < 0.5})
def device_mapping(ctx, shared):
    """a shared or private mapping of a block device (/dev/loop0)"""
    fd = os.open("/dev/loop0", os.O_RDONLY)
    try:
        map_memory(fd, 4096, SHARED if shared else PRIVATE, mmap.PROT_READ)
    finally:
        os.close(fd)


@generator("memory", weight=0.5)
def remapped_file_pages(ctx):
    """a shared file mapping rearranged with remap_file_pages"""
    fd = os.open(ctx.path("remapped"), os.O_RDWR | os.O_CREAT)
    os.write(fd, b"x" * 16384)
    address = map_memory(fd, 16384, SHARED)
    os.close(fd)
    check(libc.syscall(216, ctypes.c_void_p(address), 4096, 0, 2, 0), "remap_file_pages")


@generator("memory", draw=lambda rng, place: {"events": rng.choice((1, 128))})
def aio_ring(ctx, events):
    """an AIO context (the /[aio] ring mapping)"""
    context = ctypes.c_ulong(0)
    check(libc.syscall(206, events, ctypes.byref(context)), "io_setup")


@generator("memory", draw=lambda rng, place: {"advice": rng.choice(("dontfork", "dontdump", "wipeonfork",
                                                                    "mergeable", "hugepage"))})
def advised_mapping(ctx, advice):
    """an anonymous mapping with madvise flags (MADV_DONTFORK, DONTDUMP, WIPEONFORK, ...)"""
    number = {"dontfork": 10, "dontdump": 16, "wipeonfork": 18, "mergeable": 12, "hugepage": 14}[advice]
    address = map_memory(-1, 1 << 21, PRIVATE | ANONYMOUS)
    check(libc.madvise(ctypes.c_void_p(address), 1 << 21, number), f"madvise {advice}")


TRACEFS = "/sys/kernel/tracing"


@generator("memory", weight=0.3)
def uprobes_area(ctx):
    """an [uprobes] area: a uprobe on a private copy of libz fired once in the process, then removed"""
    import shutil
    ctypes.CDLL("libz.so.1")
    libz = next(line.split()[-1] for line in open("/proc/self/maps") if "/libz.so" in line)
    copy = ctx.path("libz.so")
    shutil.copy(libz, copy)
    lib = ctypes.CDLL(copy)
    address = ctypes.cast(lib.zlibVersion, ctypes.c_void_p).value
    for line in open("/proc/self/maps"):
        fields = line.split()
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= address < high and fields[-1] == copy:
            offset = address - low + int(fields[2], 16)
    event = f"crwfz/z{os.getpid()}"
    tracefs("uprobe_events", f"p:{event} {copy}:{offset:#x}\n")
    try:
        tracefs(f"events/{event}/enable", "1")
        lib.zlibVersion()   # the uprobe fires: the kernel adds the [uprobes] area for good
        tracefs(f"events/{event}/enable", "0")
    finally:
        tracefs("uprobe_events", f"-:{event}\n")


def tracefs(name: str, text: str) -> None:
    fd = os.open(f"{TRACEFS}/{name}", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
