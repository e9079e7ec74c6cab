"""Path and mount helpers the checks share: the mount tables CRIU looks files up in.

CRIU finds a file's mount by the mount id the kernel gives, in the mount tables
of the dump (mount.c lookup_mnt_id, collect_mnt_namespaces), and resolves its
path from the root of that namespace's process (mntns_get_root_fd). The file,
device, memory and anon checks all ask these questions: which mount, which
namespace, whether the tree's root has a namespace of its own, and which device
the kernel's internal shmem mount is.

May import: tracker.context and tracker.procfs.
"""
from __future__ import annotations

import ctypes
import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator, NamedTuple

from tracker.context import AuditContext
from tracker.procfs import DEFAULT_PROC_ROOT, AccessDenied, Proc, ProcessGone

# What the kernel appends to the link of a file with no name left.
DELETED = " (deleted)"
# btrfs names the subvolume a mount shows in its super options.
BTRFS_SUBVOLUME = re.compile(r"(?:^|,)subvolid=(\d+)")


# ---------------------------------------------------------------- mounts

class Mount(NamedTuple):
    id: int
    parent: int
    dev: int
    mountpoint: str
    fstype: str
    root: str = "/"                 # the directory of its file system it shows
    shared: int = 0                 # its peer group (shared:N), 0 when private
    master: int = 0                 # the peer group it receives mounts from (master:N)
    read_only: bool = False         # the mount, or its file system, is read-only
    subvolume: int = 0              # a btrfs mount's subvolume (subvolid=N), 0 for other types

    @property
    def file_system(self) -> tuple[int, int]:
        """What CRIU's mounts_sb_equal tells mounts apart by: the device, and for btrfs, whose
        subvolumes share one, the subvolume too (btrfs_sb_equal)."""
        return self.dev, self.subvolume


class Mounts:
    """One mount namespace's table (/proc/PID/mountinfo), as CRIU's mount tree holds it."""

    def __init__(self, mounts: list[Mount]):
        self._by_id = {mount.id: mount for mount in mounts}
        self._devices = {mount.dev for mount in mounts}
        self._mountpoints_under: dict[int, Counter[str]] = defaultdict(Counter)
        for mount in mounts:
            self._mountpoints_under[mount.parent][mount.mountpoint] += 1
        self._hidden: dict[int, bool] = {}

    @classmethod
    def parse(cls, text: str) -> "Mounts":
        mounts = []
        for line in text.splitlines():
            fields = line.split()
            major, _, minor = fields[2].partition(":")
            separator = fields.index("-", 6)
            tags = dict(tag.partition(":")[::2] for tag in fields[6:separator])
            super_options = fields[separator + 3]
            read_only = "ro" in (fields[5].split(",")[0], super_options.split(",")[0])
            fstype = fields[separator + 1]
            subvolume = BTRFS_SUBVOLUME.search(super_options) if fstype == "btrfs" else None
            mounts.append(Mount(int(fields[0]), int(fields[1]), os.makedev(int(major), int(minor)),
                                _unescape(fields[4]), fstype, _unescape(fields[3]),
                                int(tags.get("shared") or 0), int(tags.get("master") or 0),
                                read_only, int(subvolume[1]) if subvolume else 0))
        return cls(mounts)

    @classmethod
    def of_text(cls, text: str) -> "Mounts":
        """parse(), kept for a text seen before: a table is read every audit, but seldom changes."""
        table = _PARSED.get(text)
        if table is None:
            if len(_PARSED) >= PARSED_TABLES_KEPT:
                _PARSED.clear()
            table = _PARSED[text] = cls.parse(text)
        return table

    def namespace_root(self) -> Mount | None:
        """The namespace's "/": the mount whose parent is not in the table."""
        return next((mount for mount in self if mount.parent not in self._by_id), None)

    def __iter__(self) -> Iterator[Mount]:
        return iter(self._by_id.values())

    def __contains__(self, mnt_id: int) -> bool:
        return mnt_id in self._by_id

    def get(self, mnt_id: int) -> Mount | None:
        return self._by_id.get(mnt_id)

    def shows_device(self, dev: int) -> bool:
        """Whether any mount here is of this device: the kernel's internal mounts (shared
        memory, memfd, hugetlb, aio) never are."""
        return dev in self._devices

    def hidden(self, mount: Mount) -> bool:
        """Overmounted, as CRIU's mnt_is_overmounted sees it."""
        if mount.id not in self._hidden:
            self._hidden[mount.id] = self._covered(mount)
        return self._hidden[mount.id]

    def _covered(self, mount: Mount) -> bool:
        # Something mounted right on top of it...
        if self._mountpoints_under[mount.id][mount.mountpoint]:
            return True
        # ...or, at any level up, a sibling mounted over the path that leads to it.
        node = mount
        while node.parent != node.id and node.parent in self._by_id:
            siblings = self._mountpoints_under[node.parent]
            if siblings[node.mountpoint] > 1 or any(siblings[p] for p in _parents(node.mountpoint)):
                return True
            node = self._by_id[node.parent]
        return False


PARSED_TABLES_KEPT = 64
_PARSED: dict[str, Mounts] = {}


def _parents(path: str) -> Iterator[str]:
    # Ends at "/" for an absolute path, and at once for a name that is no path at all.
    while (parent := os.path.dirname(path)) != path:
        path = parent
        yield path


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in paths as octal escapes
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def mounts(ctx: AuditContext, proc: Proc) -> Mounts:
    """The mount table of proc's mount namespace, read once per namespace and audit."""
    def of_namespace() -> Mounts:
        return ctx.table(("files.mounts", proc.namespace("mnt")),
                         lambda: Mounts.of_text(proc.read("mountinfo")))

    return ctx.table(("files.mounts_of", proc.pid), of_namespace)


class DumpedNamespace(NamedTuple):
    """A mount namespace CRIU looks files up in: its table, and the directory
    its paths resolve from (CRIU's mntns_get_root_fd)."""

    mounts: Mounts
    root: str


def dumped_namespaces(ctx: AuditContext) -> list[DumpedNamespace]:
    """The mount tables CRIU's lookup_mnt_id searches (collect_mnt_namespaces), root's first.

    Every mount namespace of the tree but CRIU's own, each read through the
    first process living in it; CRIU's own too when the root shares it (then
    with nested namespaces of children, if any). Paths resolve from the root
    of the namespace's process, or from CRIU's own root for every namespace
    when the root shares CRIU's (mntns_get_root_fd).
    """
    return ctx.table("files.dumped_namespaces", lambda: _dumped_namespaces(ctx))


def _dumped_namespaces(ctx: AuditContext) -> list[DumpedNamespace]:
    auditor = ctx.proc_root / "self"
    own = os.readlink(auditor / "ns" / "mnt")
    shared = not root_in_own_namespace(ctx, "mnt")
    # The auditor's root is "/" itself: going through /proc/self/root would cost
    # a lookup of three more names for every path (only a fixture /proc needs it).
    own_root = "" if ctx.proc_root == DEFAULT_PROC_ROOT else f"{auditor}/root"
    found: dict[str, DumpedNamespace] = {}
    if shared:
        own_table = (auditor / "mountinfo").read_text(errors="surrogateescape")  # any bytes
        found[own] = DumpedNamespace(Mounts.of_text(own_table), own_root)
    for pid in sorted(ctx.tree_pids, key=lambda pid: (pid != ctx.root_pid, pid)):
        proc = ctx.proc(pid)
        try:
            namespace = proc.namespace("mnt")
            if namespace not in found and namespace != own:
                root = own_root if shared else f"{proc.path}/root"
                found[namespace] = DumpedNamespace(mounts(ctx, proc), root)
        except (ProcessGone, AccessDenied):
            continue  # the audit reports it for that process
    return list(found.values())


def find_mount(ctx: AuditContext, mnt_id: int) -> tuple[DumpedNamespace, Mount] | None:
    """lookup_mnt_id: the mount of that id in the dumped namespaces, with its namespace."""
    for namespace in dumped_namespaces(ctx):
        mount = namespace.mounts.get(mnt_id)
        if mount is not None:
            return namespace, mount
    return None


def root_in_own_namespace(ctx: AuditContext, kind: str) -> bool:
    """Whether the tree's root lives in a namespace of this kind apart from the auditor's.

    CRIU runs where crwatch runs; it takes a namespace into the image (and
    can then dump tun devices, SysV shm...) only when the root's differs.
    """
    def own() -> str:
        return os.readlink(ctx.proc_root / "self" / "ns" / kind)

    def root() -> str:
        return ctx.proc(ctx.root_pid).namespace(kind)

    return ctx.table(("files.root_ns", kind), root) != ctx.table(("files.own_ns", kind), own)


# ---------------------------------------------------------------- devices and file systems

_shmem_device: list[int] = []


def shmem_device() -> int:
    """The device of the kernel's shmem mount (shared anonymous memory, memfds), found as
    CRIU's kerndat finds it: by making one and looking at its device."""
    if not _shmem_device:
        fd = os.memfd_create("crwatch-kerndat", os.MFD_CLOEXEC)
        try:
            _shmem_device.append(os.fstat(fd).st_dev)
        finally:
            os.close(fd)
    return _shmem_device[0]


_libc = ctypes.CDLL(None, use_errno=True)


def fs_magic(path: str | Path) -> int | None:
    """statfs(2) f_type (the first field of struct statfs) of what path leads to."""
    buffer = ctypes.create_string_buffer(256)
    if _libc.statfs(os.fsencode(path), buffer) != 0:
        return None
    return ctypes.c_long.from_buffer(buffer).value
