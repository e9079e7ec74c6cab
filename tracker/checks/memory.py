"""Memory mappings (/proc/PID/maps), as CRIU's parse_smaps/handle_vma sort them.

Anonymous memory, file mappings, /dev/zero, shared anonymous memory, memfd,
hugetlb, AIO rings and the vDSO are all dumped. Shared anonymous memory and
memfds are known by the device of the kernel's shmem mount (kdat.shmem_dev),
never looked up as files. Every other mapped file is reopened by its path
(dump_filemap), so the path rules of `files` apply to it, its mount looked
up by id: a deleted one is saved like a deleted open file. What CRIU refuses:
mappings of devices other than /dev/zero, of anonymous inodes (io_uring,
perf, BPF rings...), I/O or PFN-mapped memory, SysV shm while the tree
shares the host's IPC namespace, and (without --allow-uprobes, CRIU 4.2) the
[uprobes] area the kernel adds once a uprobe has fired in the process.
A socket mapping is taken for a packet socket's ring (sk-packet.c,
dump_socket_map): it is dumped with the socket's fd, so the tree must hold
that fd, and any other socket mapped (a TCP zerocopy receive area) is
refused.
"""
from __future__ import annotations

import os
import stat
from typing import Iterator

from tracker.checks import files, paths
from tracker.checks.sockets import tables
from tracker.checks.sockets.records import InetSocket, PacketSocket
from tracker.context import AuditContext
from tracker.procfs import DEFAULT_PROC_ROOT, Mapping, Proc
from tracker.rules import BLOCKER, INFO, OPTION, Finding, Rule, VersionNote

RULES = (
    Rule("memory.device", "A mapping of a device other than /dev/zero", BLOCKER,
         "unmap the device (and close it) before checkpointing: CRIU cannot save device memory",
         criu_message="Can't handle non-regular mapping on %d's map %lx"),
    Rule("memory.anon_inode", "A mapping of an anonymous inode (io_uring, perf, BPF, dma-buf...)",
         BLOCKER, "unmap it (tear the ring or buffer down) before checkpointing",
         criu_message="Unknown shit %o (%s)"),
    Rule("memory.io", "An I/O or PFN mapping (VM_IO / VM_PFNMAP)", BLOCKER,
         "unmap it before checkpointing: its pages are not ordinary memory",
         criu_message="Unsupported mapping found %016lx-%016lx"),
    Rule("memory.socket", "A mapping of a socket that is not a packet socket (a TCP zerocopy "
         "receive area, ...)", BLOCKER,
         "unmap it before checkpointing: CRIU dumps only packet socket rings",
         criu_message="Can't find packet socket %u to mmap; BUG at criu/sockets.c"),
    Rule("memory.socket_ring_closed", "A packet socket ring mapped after its socket was closed",
         BLOCKER, "keep the packet socket open while its ring is mapped, or unmap the ring, "
                  "before checkpointing: CRIU restores the ring through the socket's fd",
         criu_message="Mmap-ed socket %u not open"),
    Rule("memory.unknown", "A mapping of a kind crwatch does not know", BLOCKER,
         "unmap it before checkpointing, or check by hand whether CRIU can dump it"),
    Rule("memory.sysv_shm.host_ipc", "SysV shared memory attached in the host's IPC namespace",
         BLOCKER, "run the tree in its own IPC namespace (CRIU then dumps the segments with it), "
         "or detach the segment (shmdt) before checkpointing",
         criu_message="Task %d with SysVIPC shmem map @%lx doesn't live in IPC ns"),
    Rule("memory.uprobes", "A [uprobes] area, left by a uprobe that fired in the process", OPTION,
         "dump and restore with --allow-uprobes (the area stays even after the uprobe is removed)",
         option="--allow-uprobes",
         criu_message="PID %d has uprobes vma. Consider using --allow-uprobes.",
         older_criu=(VersionNote((4, 2, 0), BLOCKER, "CRIU before 4.2 has no --allow-uprobes and "
                                 "refuses the area: Unsupported mapping found (criu#1961)"),)),
    Rule("memory.hugetlb", "Huge-page (hugetlb) memory", INFO,
         "nothing to do at dump; the host that restores needs as many free huge pages "
         "(vm.nr_hugepages)",
         older_criu=(VersionNote((3, 17, 0), BLOCKER, "CRIU before 3.17 cannot dump hugetlb memory"),)),
    # Seen only by the probes: since Linux 4.0 remap_file_pages() is emulated with
    # ordinary mappings, so /proc shows nothing and CRIU dumps the result.
    Rule("memory.nonlinear", "A nonlinear mapping requested with remap_file_pages()", INFO,
         "nothing to do for CRIU (the kernel emulates it with ordinary mappings); for the strict "
         "profile unmap the range before checkpointing", strict=BLOCKER),
)

# Areas the kernel names in brackets that CRIU dumps (or remaps) as anonymous memory.
KERNEL_AREAS = frozenset({"[heap]", "[stack]", "[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]",
                          "[vectors]", "[sigpage]"})
NAMED_ANONYMOUS = ("[anon:", "[anon_shmem:", "[stack:")
# Objects on the kernel's internal mounts (shmem, hugetlbfs, aio), always " (deleted)".
SHARED_ANONYMOUS = ("/dev/zero", "/memfd:", "/[aio]")
SYSV_SHM = "/SYSV"
ANON_HUGEPAGE = "/anon_hugepage"
DEV_ZERO = os.makedev(1, 5)
HUGETLBFS_MAGIC = 0x958458F6
IO_FLAGS = frozenset({"io", "pf"})            # VM_IO, VM_PFNMAP


def check_process(ctx: AuditContext, proc: Proc) -> Iterator[Finding]:
    seen: set[tuple] = set()
    for mapping in proc.maps:
        # A file (or area) mapped in several pieces is judged once.
        key = (mapping.major, mapping.minor, mapping.inode, mapping.path)
        if key not in seen:
            seen.add(key)
            yield from _check_mapping(ctx, proc, mapping)


def _check_mapping(ctx: AuditContext, proc: Proc, mapping: Mapping) -> Iterator[Finding]:
    path = mapping.path
    if not path or path in KERNEL_AREAS or path.startswith(NAMED_ANONYMOUS):
        return
    if path == "[uprobes]":
        yield _finding("memory.uprobes", proc, mapping, "is the [uprobes] area")
    elif path.startswith(("anon_inode:", "/dmabuf:")):
        yield _finding("memory.anon_inode", proc, mapping, f"maps {path}")
    elif path.startswith("socket:"):
        yield from _check_socket(ctx, proc, mapping)
    elif not path.startswith("/"):
        yield _finding("memory.unknown", proc, mapping, f"is an unknown area {path!r}")
    elif mapping.deleted:
        yield from _check_deleted(ctx, proc, mapping)
    else:
        yield from _check_file(ctx, proc, mapping)


def _check_socket(ctx: AuditContext, proc: Proc, mapping: Mapping) -> Iterator[Finding]:
    if ctx.proc_root != DEFAULT_PROC_ROOT:
        return      # the socket tables are the live kernel's: a fixture tree's sockets are in none
    sock = tables.find(ctx, proc, mapping.inode)
    if isinstance(sock, PacketSocket):
        if not ctx.tree_holders.get(mapping.path):
            yield _finding("memory.socket_ring_closed", proc, mapping,
                           f"maps the ring of packet {mapping.path}, which no process of the tree "
                           f"holds open")
        return      # a packet socket's ring: CRIU dumps it with the socket
    if isinstance(sock, InetSocket):
        kind = f"{sock.protocol} socket {sock.local}"
    elif sock is not None:
        kind = f"{type(sock).__name__.removesuffix('Socket').lower()} socket"
    else:
        kind = "socket in no table of its network namespace"
    yield _finding("memory.socket", proc, mapping, f"maps {mapping.path}, a {kind}, "
                   f"not a packet socket ring")


def _check_deleted(ctx: AuditContext, proc: Proc, mapping: Mapping) -> Iterator[Finding]:
    name = mapping.path.removesuffix(paths.DELETED)
    device = os.makedev(mapping.major, mapping.minor)
    # Shared anonymous memory and memfds live on the kernel's shmem mount, which
    # CRIU knows by its device (kdat.shmem_dev), not by any mount: mount id 0.
    shmem = device == paths.shmem_device()
    internal = shmem or not paths.mounts(ctx, proc).shows_device(device)
    if internal and name.startswith(SYSV_SHM):
        if not paths.root_in_own_namespace(ctx, "ipc"):
            yield _finding("memory.sysv_shm.host_ipc", proc, mapping,
                           f"attaches SysV shm segment {mapping.inode} in the host's IPC namespace")
    elif internal and (name == ANON_HUGEPAGE or _is_hugetlb_memfd(proc, mapping, name)):
        yield _finding("memory.hugetlb", proc, mapping,
                       f"is {mapping.end - mapping.start} bytes of huge-page memory ({name})")
    elif not (shmem or (internal and name.startswith(SHARED_ANONYMOUS))):
        # A deleted file: saved as a ghost, like a deleted open file.
        yield from files.check_path(ctx, proc, _opened(proc, mapping))


def _check_file(ctx: AuditContext, proc: Proc, mapping: Mapping) -> Iterator[Finding]:
    # Device nodes live on /dev or on pseudo file systems (major 0): only
    # those mappings are worth a stat before the path rules.
    if "/dev/" not in mapping.path and mapping.major != 0:
        yield from files.check_path(ctx, proc, _opened(proc, mapping))
        return
    opened = _opened(proc, mapping)
    status = opened.stat
    if stat.S_ISBLK(status.st_mode) or (stat.S_ISCHR(status.st_mode) and status.st_rdev != DEV_ZERO):
        device = f"{os.major(status.st_rdev)}:{os.minor(status.st_rdev)}"
        yield _finding("memory.device", proc, mapping, f"maps device {mapping.path} ({device})")
        return
    if mapping.path.startswith(("/sys/", "/proc/")):
        # smaps is slow to read: only pseudo-file mappings (PCI resources...) ask for it.
        flags = proc.smaps_flags.get(mapping.start, set()) & IO_FLAGS
        if flags:
            yield _finding("memory.io", proc, mapping,
                           f"maps {mapping.path} as I/O memory (VmFlags {' '.join(sorted(flags))})")
            return
    # /dev/zero and ordinary files: CRIU reopens them by path (parse_smaps, dump_filemap).
    yield from files.check_path(ctx, proc, opened)


def _is_hugetlb_memfd(proc: Proc, mapping: Mapping, name: str) -> bool:
    return (name.startswith("/memfd:")
            and paths.fs_magic(proc.path / "map_files" / mapping.address) == HUGETLBFS_MAGIC)


def _opened(proc: Proc, mapping: Mapping) -> files.Opened:
    return files.opened_link(proc, f"mapping {mapping.address}", f"map_files/{mapping.address}",
                             mapping.path,
                             identity=(os.makedev(mapping.major, mapping.minor), mapping.inode))


def _finding(code: str, proc: Proc, mapping: Mapping, what: str) -> Finding:
    return Finding(code, f"mapping {mapping.address} {what}", proc.pid)
