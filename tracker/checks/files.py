"""Files reached by a path (regular files, directories, symlinks, FIFOs), pipes, cwd, root
and the executable; the mount tables CRIU looks them up in.

CRIU saves such a file as its path and reopens it at restore
(files-reg.c dump_one_reg_file). It finds the file's mount by the mount id
the kernel gives (fdinfo mnt_id; for the executable, cwd, root and mapped
files, the same of an O_PATH open of the magic link: "fd=-3" in its
messages) in the mount tables of the dump (mount.c lookup_mnt_id,
collect_mnt_namespaces): never by device, since a lazily unmounted bind
mount shares its device with mounts still in place, and a file opened before
unshare(CLONE_NEWNS) keeps a mount of the old namespace. The mount must not
be hidden under another (mnt_is_overmounted), and the path must still lead
to the file from the namespace's root (check_path_remap: "Unaccessible path
opened", with --evasive-devices only for device nodes). A deleted file (no
link left) travels in the image as a "ghost", up to --ghost-limit; a linked
file whose name leads nowhere needs --link-remap, which links it into the
nearest directory left and so fails when that directory is on another mount
(an overmounted directory). memfd and namespace files have their own code in
CRIU, and pipes are dumped with their data wherever their other end is.

CRIU validates the mount tables it collects (mount.c collect_mnt_namespaces:
resolve_shared_mounts, validate_mounts) as soon as one of them is not its own:
file systems it does not know, slaves of mounts outside, and bind mounts
without their file system's own mount are judged here. A root in a mount
namespace of its own has the tree's namespaces validated and dumped (the
dump of each file system refuses FUSE and a non-empty mqueue or pstore); a
root sharing CRIU's namespace with a child in another has that child's and
CRIU's own table, the host's mounts, validated but none dumped.

Mapped files follow the same path rules, so the memory and device checks
reuse `check_path` from here; the mount tables are tracker.checks.paths'.
"""
from __future__ import annotations

import os
import re
import select
from collections import defaultdict
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISLNK
from typing import Callable, Generator, Iterable, Iterator

from tracker.checks import tree
from tracker.checks.paths import (
    DELETED,
    DumpedNamespace,
    Mount,
    Mounts,
    dumped_namespaces,
    find_mount,
    fs_magic,
    mounts,
    root_in_own_namespace,
    shmem_device,
)
from tracker.checks.sockets import fd_query, queue
from tracker.context import NOT_LOOKED_UP, AuditContext
from tracker.criu.options import ghost_limit_value
from tracker.procfs import (
    DEFAULT_PROC_ROOT,
    AccessDenied,
    MntIdUnavailable,
    OpenFd,
    Proc,
    ProcessGone,
    link_too_long,
    mnt_id_of,
    mnt_id_via_fdinfo,
)
from tracker.rules import BLOCKER, INFO, OPTION, Finding, Rule, pid_list

RULES = (
    Rule("file.deleted.ghost", "A deleted file that CRIU carries in the image", INFO,
         "nothing to do: CRIU saves the deleted file in the image and recreates it at restore"),
    Rule("file.deleted.over_ghost_limit", "A deleted file bigger than CRIU's ghost limit", OPTION,
         "dump with --ghost-limit set to at least the file's size (the image grows by as much)",
         option="--ghost-limit",
         criu_message="Can't dump ghost file %s of %lu size, increase limit"),
    Rule("file.deleted.link_remap", "An open file unlinked from its path but linked elsewhere",
         OPTION, "dump with --link-remap: CRIU links the file back under a temporary name",
         option="--link-remap",
         criu_message="Can't create link remap for %s. Use link-remap option."),
    Rule("file.mount.invisible", "An open file, mapping, cwd or executable on a mount outside "
         "the dumped mount namespace", BLOCKER,
         "close or unmap the file before checkpointing (it lives on a lazily unmounted mount, or "
         "was opened before unshare(CLONE_NEWNS) and keeps the old namespace's mount: open it "
         "again, or exec again, after the unshare); a file that must stay open can be declared "
         "with --external file[MNT_ID:INODE] and handed back with --inherit-fd at restore",
         criu_message="Can't lookup mount=%d for fd=%d path=%s"),
    Rule("file.mount.overmounted", "An open file on a mount hidden under another mount", BLOCKER,
         "close the file, or unmount what was mounted over it, before checkpointing",
         criu_message="Open files on overmounted mounts are not supported yet"),
    Rule("file.path.overmounted", "A linked file whose directory another mount now covers",
         BLOCKER, "unmount what covers the file's directory, or close the file, before "
         "checkpointing: --link-remap cannot link the file back across mounts",
         criu_message="Can't link remap to %s: Invalid cross-device link"),
    Rule("file.link_remap.read_only", "A linked file whose name leads nowhere, on a read-only "
         "mount", BLOCKER, "make the mount writable, or close the file, before checkpointing: "
         "--link-remap must create a link on it",
         criu_message="Can't link remap to %s: Read-only file system"),
    Rule("file.path.unaccessible", "An open file whose path now names another file", BLOCKER,
         "close the file, or undo what put another file (or a mount) at its path, before "
         "checkpointing", criu_message="Unaccessible path opened %u:%u, need %u:%u"),
    Rule("file.path.evasive_device", "An open device node whose path now names another node of "
         "the same device", OPTION, "dump with --evasive-devices: CRIU then reopens the device "
         "by that other node", option="--evasive-devices",
         criu_message="Unaccessible path opened %u:%u, need %u:%u"),
    Rule("mount.fs_unsupported", "A mount of a file system type CRIU does not know, in a "
         "mount namespace the dump takes", OPTION,
         "dump with --enable-fs TYPE: CRIU then mounts a new, empty file system of that type at "
         "restore (its contents are not saved); or unmount it before checkpointing",
         option="--enable-fs", criu_message="FS mnt %s dev %#x root %s unsupported id %d"),
    Rule("mount.btrfs", "A mount of a btrfs from its top-level subvolume, in a mount table the "
         "dump validates, that is no bind of the tree's root", BLOCKER,
         "unmount it before checkpointing, or make it private (mount --make-private) where CRIU's "
         "own namespace mounts it too, and dump with --ext-mount-map auto: CRIU cannot mount a "
         "btrfs anew, even with --enable-fs",
         criu_message="FS mnt %s dev %#x root %s unsupported id %d"),
    Rule("mount.fuse", "A FUSE mount in a mount namespace the dump takes", BLOCKER,
         "unmount the FUSE file system in the namespace before checkpointing: CRIU refuses every "
         "FUSE mount it would have to recreate, whatever the options",
         criu_message="failed to dump fs %s (%s): always fail"),
    Rule("mount.fs_not_empty", "A pstore or mqueue mount with entries, in a mount namespace the "
         "dump takes", BLOCKER,
         "remove what is in it (mq_unlink the queues) or unmount it before checkpointing: CRIU "
         "saves these file systems only when empty", criu_message="%s isn't empty"),
    Rule("mount.bind.no_root", "A bind mount, in a mount namespace the dump takes, whose file "
         "system is mounted nowhere else there", BLOCKER,
         "mount the file system itself in the namespace (or unmount the bind mount) before "
         "checkpointing: CRIU restores a bind mount from its file system's own mount",
         criu_message="%d:%s doesn't have a proper root mount"),
    Rule("mount.sharing.external_master", "A mount of the dumped namespace that receives mounts "
         "from a peer group outside it (a slave of the host's mounts)", OPTION,
         "dump with --enable-external-masters (and --ext-mount-map auto, which it needs to find "
         "the master among CRIU's mounts)", option="--enable-external-masters",
         criu_message="Mount %d %s (master_id: %d shared_id: %d) has unreachable sharing. "
                      "Try --enable-external-masters."),
    Rule("mount.external.auto", "A mount of the dumped namespace that CRIU can save only as "
         "external: a copy of a mount of its own namespace (an unknown file system, a bind "
         "without its file system's own mount, a slave of a mount outside)", OPTION,
         "dump with --ext-mount-map auto: CRIU then restores it as a bind of the same place on "
         "the restoring host, which must have it", option="--ext-mount-map"),
    Rule("mount.sharing.unreachable", "A mount of the dumped namespace whose master peer group "
         "neither the dump nor CRIU's own namespace has", BLOCKER,
         "make the mount private (mount --make-private) in the namespace before checkpointing",
         criu_message="Mount %d %s (master_id: %d shared_id: %d) has unreachable sharing. "
                      "Try --enable-external-masters."),
    Rule("file.secretmem", "Secret memory (memfd_secret), as an fd or a mapping", BLOCKER,
         "close and unmap the secret memory before checkpointing: no one, CRIU included, can "
         "read its contents", criu_message="Unknown shit %o (%s); Can't lookup mount=%d for "
                                          "fd=%d path=%s"),
    Rule("file.mqueue", "A POSIX message queue descriptor", BLOCKER,
         "close the queue (mq_close) before checkpointing: CRIU cannot save POSIX message queues",
         criu_message="Can't lookup mount=%d for fd=%d path=%s"),
    Rule("file.path.unsupported", "An open file whose name is not a path CRIU can reopen", BLOCKER,
         "close the file before checkpointing",
         criu_message="Can't dump file %d of that type [%o] (reg %s)"),
    Rule("file.nsfs.foreign", "An open namespace file of a namespace outside the dumped tree",
         BLOCKER, "close the namespace fd, or checkpoint a tree that has a process in that namespace",
         criu_message="No NS ID with kid %u"),
    Rule("file.pipe.packetized", "A pipe in packet mode (O_DIRECT)", BLOCKER,
         "create the pipe without O_DIRECT, or close it before checkpointing",
         criu_message="The packetized mode for pipes is not supported yet"),
    Rule("file.pipe.o_path", "A pipe or FIFO whose data CRIU would read through an O_PATH fd",
         BLOCKER, "close the O_PATH fd on the pipe or FIFO before checkpointing, or keep a read "
         "end open at a lower fd number: CRIU reads the queued data through the first fd of it "
         "that is not write-only, and an O_PATH fd refuses F_GETPIPE_SZ",
         criu_message="Can't obtain piped data size"),
    Rule("file.pipe.external", "A pipe shared with a process outside the dumped tree", INFO,
         "nothing to do at dump; at restore the pipe is recreated without the outside process "
         "unless its end is handed back with --inherit-fd fd[N]:pipe:[INODE]"),
)

# CRIU's DEFAULT_GHOST_LIMIT; it compares the blocks the file occupies, in 512-byte units.
DEFAULT_GHOST_LIMIT = 1 << 20
BLOCK_UNIT = 512
NAMESPACE_FILE = re.compile(r"(cgroup|ipc|mnt|net|pid|time|user|uts):\[\d+\]")
NAMESPACE_LINKS = ("cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time",
                   "time_for_children", "user", "uts")
# CRIU neither ghosts nor remaps files of these: their names are made by the kernel.
KERNEL_NAMED_FS = frozenset({"proc", "devpts"})
MQUEUE_MAGIC = 0x19800202
SECRETMEM_MAGIC = 0x5345434D  # "SECM": memfd_secret's internal file system


# ---------------------------------------------------------------- the mount tree

# The file systems CRIU's fstypes[] knows (filesystems.c); any other needs --enable-fs.
KNOWN_FS = frozenset({"proc", "sysfs", "devtmpfs", "binfmt_misc", "tmpfs", "devpts", "simfs",
                      "pstore", "mqueue", "securityfs", "fusectl", "debugfs", "tracefs",
                      "cgroup", "cgroup2", "aufs", "fuse", "overlay", "autofs"})
# fstypes[] names btrfs with the code of an unsupported one: CRIU finds that entry by name
# before --enable-fs could make it "auto", so nothing lets it mount one anew.
NAMED_UNSUPPORTED_FS = frozenset({"btrfs"})


# Their fstypes[] entries dump them with always_fail, or with dump_empty_fs.
ALWAYS_FAIL_FS = frozenset({"fuse"})
EMPTY_ONLY_FS = frozenset({"pstore", "mqueue"})


def check_mount_tree(ctx: AuditContext, proc: Proc) -> Iterator[Finding]:
    """What CRIU refuses in the mount namespaces it collects (collect_mnt_namespaces).

    It validates them (resolve_shared_mounts, validate_mounts) when one is
    not its own: the root's, or a child's while the root shares CRIU's, whose
    tables then come with CRIU's own, the host's mounts (its "/" is the
    root's, so what binds that passes). It dumps them, each file system by
    its own code, only when the root's is not its own (dump_mnt_namespaces).
    The findings are the root's, once an audit.
    """
    if proc.pid != ctx.root_pid:
        return
    namespaces = dumped_namespaces(ctx)
    if root_in_own_namespace(ctx, "mnt"):
        if namespaces:  # none: the root is gone, and the audit says so
            yield from _validate_mounts(ctx, proc, namespaces, dumped=True)
        return
    if len(namespaces) < 2:
        return  # CRIU's own namespace alone is neither validated nor dumped
    for finding in _validate_mounts(ctx, proc, namespaces, dumped=False):
        yield finding._replace(message=f"{finding.message}; CRIU validates the host's mounts "
                                         "too when a process of the tree has a mount namespace "
                                         "of its own")


def _validate_mounts(ctx: AuditContext, proc: Proc, namespaces: list[DumpedNamespace], *,
                     dumped: bool) -> Iterator[Finding]:
    everything = [mount for namespace in namespaces for mount in namespace.mounts]
    namespace_of = {mount.id: namespace for namespace in namespaces for mount in namespace.mounts}
    groups = {mount.shared for mount in everything if mount.shared}
    # The root's namespace comes first; its "/" is what binds are restored from.
    root = namespaces[0].mounts.namespace_root()
    # --ext-mount-map auto makes these external (resolve_external_mounts), and with them
    # every mount that shows part of one (validate_mounts: mnt_is_external_bind).
    namespace_roots = {namespace.mounts.namespace_root() for namespace in namespaces}
    auto_external = [mount for mount in everything
                     if mount not in namespace_roots and _autodetected_external(ctx, mount)]
    for mount in everything:
        if mount is root:
            continue
        root_bind = root is not None and _shows_part_of(mount, root)
        external = False
        if mount.master and mount.master not in groups and not (
                root_bind and root.master == mount.master):
            external = yield from _external_master(ctx, proc, mount)
        if root_bind or external:
            continue  # restored as a bind of the namespace's root, or of CRIU's own mount
        if mount.root == "/":
            yield from _check_file_system(proc, mount, _binds_any(mount, auto_external),
                                          namespace_of[mount.id] if dumped else None)
        elif not any(other.file_system == mount.file_system and other.root == "/"
                     for other in everything):
            if _binds_any(mount, auto_external):
                yield _external_auto(proc, mount, f"binds {mount.root} of a {mount.fstype} that "
                                                  f"no dumped mount shows whole")
            else:
                yield Finding("mount.bind.no_root",
                              f"mount {mount.id} at {mount.mountpoint} binds {mount.root} of a "
                              f"{mount.fstype} that neither a dumped mount nor CRIU's own "
                              f"mounts show whole", proc.pid)


def _check_file_system(proc: Proc, mount: Mount, external_with_auto: bool,
                       dumped_in: DumpedNamespace | None) -> Iterator[Finding]:
    """A file system CRIU mounts anew at restore: its type must be one it knows how to save,
    unless --ext-mount-map auto makes it external (`external_with_auto`).

    The file system's own dump code (fstypes[].dump: FUSE, a non-empty mqueue
    or pstore) runs only in a namespace dumped, `dumped_in`.
    """
    where = f"mount {mount.id} at {mount.mountpoint}"
    fstype = mount.fstype.partition(".")[0]  # CRIU disregards subtypes (fuse.sshfs)
    if fstype not in KNOWN_FS:
        if external_with_auto:
            yield _external_auto(proc, mount, f"is a {mount.fstype}, a file system CRIU does not "
                                              f"know how to save")
            return
        if fstype in NAMED_UNSUPPORTED_FS:
            yield Finding("mount.btrfs", f"{where} shows a {fstype} from its top-level "
                                         f"subvolume, which CRIU cannot mount anew", proc.pid)
            return
        if dumped_in is not None:
            effect = f"CRIU then mounts a new, empty {fstype} at restore (its contents are not saved)"
        else:
            effect = "CRIU then lets it pass: it dumps no mount of a namespace the root shares with it"
        yield Finding("mount.fs_unsupported",
                      f"{where} is a {mount.fstype}, a file system CRIU does not know", proc.pid,
                      remedy=f"dump with --enable-fs {fstype}: {effect}; or unmount it before "
                             f"checkpointing", option_value=fstype)
    elif dumped_in is None:
        return
    elif fstype in ALWAYS_FAIL_FS:
        yield Finding("mount.fuse", f"{where} is a FUSE file system ({mount.fstype})", proc.pid)
    elif fstype in EMPTY_ONLY_FS:
        try:
            entries = os.listdir(dumped_in.root + mount.mountpoint)
        except OSError:
            return  # not reachable by its path: CRIU reaches it otherwise, and so is not judged
        if entries:
            yield Finding("mount.fs_not_empty",
                          f"{where} is a {fstype} holding {len(entries)} entries "
                          f"({', '.join(sorted(entries)[:3])}{'...' if len(entries) > 3 else ''})",
                          proc.pid)


def _criu_mounts(ctx: AuditContext) -> Mounts:
    """CRIU's own mount table, where --ext-mount-map auto looks for what a mount shows."""
    return ctx.table("files.criu_mounts",
                     lambda: Mounts.of_text((ctx.proc_root / "self" / "mountinfo")
                                            .read_text(errors="surrogateescape")))


def _criu_mounts_of(ctx: AuditContext, dev: int) -> list[Mount]:
    """CRIU's own mounts of one file system: every mount of a dump is matched against them."""
    by_device = ctx.table("files.criu_mounts_by_device", lambda: _by_device(_criu_mounts(ctx)))
    return by_device.get(dev, [])


def _by_device(table: Mounts) -> dict[int, list[Mount]]:
    found: dict[int, list[Mount]] = defaultdict(list)
    for mount in table:
        found[mount.dev].append(mount)
    return found


def _autodetected_external(ctx: AuditContext, mount: Mount) -> bool:
    """Whether --ext-mount-map auto makes `mount` external (resolve_external_mounts): a private
    mount showing a directory of a file system CRIU's own namespace mounts too."""
    return not mount.shared and not mount.master and _binds_any(mount, _criu_mounts_of(ctx, mount.dev))


def _binds_any(mount: Mount, wholes: Iterable[Mount]) -> bool:
    return any(_shows_part_of(mount, whole) for whole in wholes)


def _external_auto(proc: Proc, mount: Mount, what: str) -> Finding:
    return Finding("mount.external.auto",
                   f"mount {mount.id} at {mount.mountpoint} {what}; CRIU's own namespace mounts "
                   f"that file system too", proc.pid, option_value="auto")


def _shows_part_of(mount: Mount, whole: Mount) -> bool:
    """A bind of `whole`: the same file system, a directory within what `whole` shows."""
    return mount.file_system == whole.file_system and (
        whole.root == "/" or mount.root == whole.root or mount.root.startswith(whole.root + "/"))


def _external_master(ctx: AuditContext, proc: Proc,
                     mount: Mount) -> Generator[Finding, None, bool]:
    """A slave whose master is outside the dump. With --enable-external-masters and
    --ext-mount-map auto CRIU takes it as external when its own namespace has the
    master's peer group on that file system (resolve_external_mounts); otherwise
    nothing helps. Returns (as the generator's value) whether it can be external."""
    reachable = any(_shows_part_of(mount, other) and mount.master in (other.shared, other.master)
                    for other in _criu_mounts_of(ctx, mount.dev))
    where = f"mount {mount.id} at {mount.mountpoint}"
    if not reachable:
        yield Finding("mount.sharing.unreachable",
                      f"{where} receives mounts from peer group {mount.master}, which neither "
                      f"the dumped namespaces nor CRIU's own mounts have", proc.pid)
        return False
    yield Finding("mount.sharing.external_master",
                  f"{where} receives mounts from peer group {mount.master}, outside the dumped "
                  f"namespaces", proc.pid)
    yield _external_auto(proc, mount, "receives mounts from a peer group of CRIU's namespace")
    return True


# ---------------------------------------------------------------- path rules

class Opened:
    """Something CRIU dumps by its path: an fd, the cwd, root or exe, a mapped file.

    A plain slotted class with its stat read on first use: every mapped file
    of every process makes one, and most are settled before their stat is needed.
    """

    __slots__ = ("label", "path", "link", "fd", "identity", "_stat", "_read_stat", "_mnt_id")

    def __init__(self, label: str, path: str, link: str, mnt_id: Callable[[], int],
                 read_stat: Callable[[], os.stat_result], *,
                 identity: tuple[int, int] | None = None, fd: int | None = None):
        self.label = label          # "fd 3", "cwd", "mapping 7f3a...-7f3b..."
        self.path = path            # the kernel's name for it (link text)
        self.link = link            # its magic link under /proc
        self.fd = fd
        self.identity = identity    # (device, inode) when known without a stat (from maps)
        self._stat: os.stat_result | None = None
        self._read_stat, self._mnt_id = read_stat, mnt_id

    @property
    def identity_only(self) -> bool:
        """Known by (device, inode) alone so far: no stat read yet."""
        return self._stat is None and self.identity is not None

    @property
    def stat(self) -> os.stat_result:
        if self._stat is None:
            self._stat = self._read_stat()
            self.identity = (self._stat.st_dev, self._stat.st_ino)
        return self._stat

    def mnt_id(self) -> int:
        """The mount it was opened through (fdinfo's mnt_id)."""
        return self._mnt_id()


def opened_fd(proc: Proc, open_fd: OpenFd) -> Opened:
    # Strings, not pathlib: this runs for every file fd.
    return Opened(f"fd {open_fd.fd}", open_fd.target, f"{proc.path}/fd/{open_fd.fd}",
                  lambda: open_fd.mnt_id, lambda: open_fd.stat, fd=open_fd.fd)


def opened_link(proc: Proc, label: str, relative: str, path: str, *,
                identity: tuple[int, int] | None = None) -> Opened:
    """A magic link of proc (cwd, root, exe, map_files/RANGE) as an Opened file."""
    return Opened(label, path, f"{proc.proc_root}/{proc.pid}/{relative}",
                  lambda: proc.mnt_id(relative), lambda: proc.stat_link(relative),
                  identity=identity)


def check_path(ctx: AuditContext, proc: Proc, opened: Opened) -> Iterator[Finding]:
    """CRIU's dump_one_reg_file checks, in its order; the first failure is the one it reports.

    The file's mount is looked up by its mnt_id, never by its device: a
    lazily unmounted bind mount shares its device with the mounts still in
    place, and a file opened before unshare(CLONE_NEWNS) keeps a mount of
    the old namespace.
    """
    if link_too_long(opened.path):
        return  # CRIU cannot even read the name: file.path.too_long or task.proc_line_too_long
    try:
        mnt_id = opened.mnt_id()
    except AccessDenied:
        if not opened.identity_only:
            raise
        # map_files asks for CAP_SYS_ADMIN: an audit without it (not root's, as
        # in a degraded `crwatch run`) cannot place a mapped file. CRIU, which
        # runs as root, can: nothing is said here rather than all being lost.
        return
    found = find_mount(ctx, mnt_id)
    if found is None:
        yield _invisible(proc, opened, mnt_id)
        return
    namespace, mount = found
    if namespace.mounts.hidden(mount):
        yield _finding("file.mount.overmounted", proc, opened,
                       f"{opened.label}: {opened.path} is on mount {mnt_id} ({mount.mountpoint}), "
                       f"which another mount hides")
        return
    if mount.fstype in KERNEL_NAMED_FS:
        return
    # The same file by the same name through the same mount is judged once an
    # audit (shared libraries are mapped by most processes): before its stat.
    fine = ctx.table("files.paths_fine", set)
    key = (opened.path, opened.identity or (opened.stat.st_dev, opened.stat.st_ino), mnt_id)
    if key in fine:
        return
    # A name without " (deleted)" is a linked dentry: a mapping (known by its
    # line of maps) needs no stat to say so.
    if (opened.identity_only and not opened.path.endswith(DELETED)) or opened.stat.st_nlink:
        if (yield from _check_linked(ctx, proc, opened, namespace, mount)):
            fine.add(key)
    else:
        yield from _check_deleted(ctx, proc, opened)


def _check_linked(ctx: AuditContext, proc: Proc, opened: Opened, namespace: DumpedNamespace,
                  mount: Mount) -> Generator[Finding, None, bool]:
    """check_path_remap for a file with links: its name must still lead to it.

    Returns (as the generator's value) whether the name leads to it.
    """
    path = opened.path
    follow = opened.identity_only or not S_ISLNK(opened.stat.st_mode)  # mappings are no symlinks
    try:
        now = os.stat(namespace.root + path, follow_symlinks=follow)
    except FileNotFoundError:
        yield from _check_link_remap(ctx, proc, opened, namespace, mount)
        return False
    except OSError as error:
        yield _finding("file.path.unaccessible", proc, opened,
                       f"{opened.label}: {path} cannot be looked up ({error.strerror})")
        return False
    if (now.st_dev, now.st_ino) == opened.identity:
        return True
    stat = opened.stat  # maps says the superblock's device, which btrfs, for one, stats otherwise
    if (now.st_dev, now.st_ino) == (stat.st_dev, stat.st_ino):
        return True
    if (S_ISCHR(stat.st_mode) or S_ISBLK(stat.st_mode)) and now.st_rdev == stat.st_rdev:
        yield _finding("file.path.evasive_device", proc, opened,
                       f"{opened.label}: {path} now names another node of the same device "
                       f"({os.major(stat.st_rdev)}:{os.minor(stat.st_rdev)})")
    else:
        yield _finding("file.path.unaccessible", proc, opened,
                       f"{opened.label}: {path} now names another file ({_inode(now)}), not the "
                       f"open one ({_inode(stat)})")
    return False


def _check_link_remap(ctx: AuditContext, proc: Proc, opened: Opened, namespace: DumpedNamespace,
                      mount: Mount) -> Iterator[Finding]:
    """A linked file whose name leads nowhere: CRIU links it back (create_link_remap)."""
    stat = opened.stat
    if not _first_sight(ctx, stat):
        return  # one finding per file, however many fds and mappings reach it
    name = opened.path.removesuffix(DELETED)
    directory = _linkable_directory(namespace.root, name)
    if directory is not None and _mnt_id_of(namespace.root + directory) == mount.id:
        if mount.read_only:
            yield _finding("file.link_remap.read_only", proc, opened,
                           f"{opened.label}: {name} was unlinked and its mount {mount.id} "
                           f"({mount.mountpoint}) is read-only, so --link-remap cannot link it back")
            return
        yield _finding("file.deleted.link_remap", proc, opened,
                       f"{opened.label}: {name} was unlinked, but the file still has "
                       f"{stat.st_nlink} other link(s)")
    else:
        where = (f"{directory}, where CRIU would link it, is on another mount" if directory
                 else "no directory of it is left")
        yield _finding("file.path.overmounted", proc, opened,
                       f"{opened.label}: {name} is not reachable by its name from where the dump "
                       f"resolves paths ({where}), so --link-remap cannot link it back")


def _first_sight(ctx: AuditContext, stat: os.stat_result) -> bool:
    """Whether this audit meets this unlinked file for the first time."""
    seen = ctx.table("files.unlinked_seen", set)
    if (stat.st_dev, stat.st_ino) in seen:
        return False
    seen.add((stat.st_dev, stat.st_ino))
    return True


def _linkable_directory(root: str, name: str) -> str | None:
    """Where create_link_remap puts its link: the nearest directory above `name` that exists."""
    directory = os.path.dirname(name)
    while True:
        try:
            if S_ISDIR(os.stat(root + directory).st_mode):
                return directory
            return None  # linkat fails with ENOTDIR, no parent is tried
        except FileNotFoundError:
            if os.path.dirname(directory) == directory:
                return None  # "/" (or a name that is no path) has no parent to try
            directory = os.path.dirname(directory)
        except OSError:
            return None


def _check_deleted(ctx: AuditContext, proc: Proc, opened: Opened) -> Iterator[Finding]:
    """A file with no link left travels in the image as a ghost (dump_ghost_remap)."""
    stat = opened.stat
    if not _first_sight(ctx, stat):
        return  # one finding per file, however many fds and mappings reach it
    name = opened.path.removesuffix(DELETED)
    size = stat.st_blocks * BLOCK_UNIT
    if size <= DEFAULT_GHOST_LIMIT:
        yield _finding("file.deleted.ghost", proc, opened,
                       f"{opened.label}: {name} was deleted; CRIU carries it ({size} bytes) "
                       f"in the image and recreates it at restore")
        return
    needed = ghost_limit_value(size)
    yield Finding("file.deleted.over_ghost_limit",
                  f"{opened.label}: deleted file {name} holds {size} bytes, more than CRIU's "
                  f"default ghost limit of 1 MiB", proc.pid, fd=opened.fd,
                  remedy=f"dump with --ghost-limit {needed} (the image grows by {size} bytes)",
                  option_value=needed)


def _invisible(proc: Proc, opened: Opened, mnt_id: int) -> Finding:
    magic = fs_magic(opened.link)
    if magic == MQUEUE_MAGIC:
        return _finding("file.mqueue", proc, opened,
                        f"{opened.label}: POSIX message queue {opened.path} (its mount {mnt_id} "
                        f"is the kernel's own, which no mount namespace shows)")
    if magic == SECRETMEM_MAGIC:
        return _finding("file.secretmem", proc, opened,
                        f"{opened.label}: memfd_secret memory {opened.path}, which no process "
                        f"but its owner can read (the kernel unmaps it from everyone else)")
    return _finding("file.mount.invisible", proc, opened,
                    f"{opened.label}: {opened.path} is on mount {mnt_id}, which the dumped mount "
                    f"namespace does not show (lazily unmounted, or a mount of a namespace "
                    f"outside the dump, such as one left by unshare)")


def _inode(status: os.stat_result) -> str:
    return f"device {os.major(status.st_dev)}:{os.minor(status.st_dev)} inode {status.st_ino}"


def _finding(code: str, proc: Proc, opened: Opened, message: str) -> Finding:
    return Finding(code, message, proc.pid, fd=opened.fd)


# ---------------------------------------------------------------- fds

def check_fd(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Iterator[Finding]:
    if open_fd.target.startswith("pipe:["):
        yield from _check_pipe_data(ctx, proc, open_fd)
        yield from _check_pipe(ctx, proc, open_fd)
    elif open_fd.target.startswith("/"):
        if open_fd.kind == "fifo":
            yield from _check_pipe_data(ctx, proc, open_fd)
        yield from check_fd_path(ctx, proc, open_fd)
    elif NAMESPACE_FILE.fullmatch(open_fd.target):
        yield from _check_namespace_file(ctx, proc, open_fd)
    else:
        yield Finding("file.path.unsupported",
                      f"fd {open_fd.fd}: {open_fd.target!r} is not a path CRIU can reopen "
                      f"(mode {open_fd.stat.st_mode:o})", proc.pid, fd=open_fd.fd)


def check_fd_path(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Iterator[Finding]:
    """The path rules for an fd whose target is a path (files, FIFOs, memory devices)."""
    if _is_memfd(ctx, proc, open_fd):
        return
    # Nearly every fd is a linked file on a mount in plain sight whose name
    # still leads to it: check_path's verdict, reached before building anything.
    status, mnt_id, target = open_fd.stat, open_fd.mnt_id, open_fd.target
    key = (target, (status.st_dev, status.st_ino), mnt_id)
    fine = ctx.table("files.paths_fine", set)
    if key in fine:
        return
    root = _plain_mount_root(ctx, mnt_id)
    if root is not None and status.st_nlink and not target.endswith(DELETED):
        try:
            now = os.stat(root + target, follow_symlinks=not S_ISLNK(status.st_mode))
            if now.st_ino == status.st_ino and now.st_dev == status.st_dev:
                fine.add(key)
                return
        except OSError:
            pass  # check_path says why
    yield from check_path(ctx, proc, opened_fd(proc, open_fd))


def _plain_mount_root(ctx: AuditContext, mnt_id: int) -> str | None:
    """Where paths resolve, for a mount in the dumped tables, unhidden, of a file system
    that is no kernel's own; None for any other mount (check_path judges those)."""
    plain = ctx.table("files.plain_mounts", dict)
    if mnt_id not in plain:
        found = find_mount(ctx, mnt_id)
        plain[mnt_id] = None if found is None or found[0].mounts.hidden(found[1]) or \
            found[1].fstype in KERNEL_NAMED_FS else found[0].root
    return plain[mnt_id]


def _is_memfd(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> bool:
    # memfds live on the kernel's internal shmem (or hugetlbfs) mount; CRIU dumps their contents.
    dev = open_fd.stat.st_dev
    return dev == shmem_device() or (open_fd.target.startswith("/memfd:")
                                     and not mounts(ctx, proc).shows_device(dev))


def _check_namespace_file(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Iterator[Finding]:
    if open_fd.target not in ctx.table("files.tree_namespaces", lambda: _tree_namespaces(ctx)):
        yield Finding("file.nsfs.foreign",
                      f"fd {open_fd.fd}: namespace file {open_fd.target} of a namespace no "
                      f"process of the dumped tree lives in", proc.pid, fd=open_fd.fd)


def _tree_namespaces(ctx: AuditContext) -> set[str]:
    """The namespaces CRIU knows while dumping: the tree's, and its own (namespaces.c
    collects both before it looks an nsfs file up)."""
    names = set()
    for pid in (*ctx.tree_pids, "self"):
        for link in NAMESPACE_LINKS:
            try:
                names.add(os.readlink(ctx.proc_root / str(pid) / "ns" / link))
            except OSError:
                continue  # a kernel without that namespace, or a process gone meanwhile
    return names


def _check_pipe(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Iterator[Finding]:
    ends = ctx.table("files.tree_pipes", lambda: _tree_pipes(ctx)).get(open_fd.target, {})
    flags = ends.get((proc.pid, open_fd.fd))
    if flags is None:
        raise ProcessGone(proc.pid)  # the fd closed while we read: the audit skips it
    if flags & os.O_DIRECT:
        yield Finding("file.pipe.packetized",
                      f"fd {open_fd.fd}: {open_fd.target} is in packet mode (O_DIRECT)",
                      proc.pid, fd=open_fd.fd)
    # Only a pipe the tree holds one end of is worth the walk over every
    # process of the host that names the outside holders.
    modes = {end & os.O_ACCMODE for end in ends.values()}
    if modes >= {os.O_RDONLY, os.O_WRONLY}:
        return
    seen = ctx.table("files.external_pipes_seen", set)
    if open_fd.target in seen:
        return
    witness = (proc.pid, open_fd.target)
    outside = ctx.holders_outside(open_fd.target, witness)
    if outside is None:
        other_end_open = _other_end_open(ctx, proc, open_fd, modes)
        if other_end_open is False:
            return  # closed everywhere
        # An end in flight in the tree's own queues is dumped with them: only the walk
        # tells whether a process outside holds one too.
        if other_end_open and open_fd.target not in queue.in_flight(ctx):
            seen.add(open_fd.target)
            yield _external_pipe(proc, open_fd, f"a process outside the dumped tree "
                                                f"({NOT_LOOKED_UP})", "the outside end")
            return
        outside = ctx.holders_outside(open_fd.target, witness, required=True)
    if outside:
        seen.add(open_fd.target)
        pids = pid_list(outside)
        yield _external_pipe(proc, open_fd, f"{pids} outside the dumped tree",
                             f"the end {pids} {'holds' if len(outside) == 1 else 'hold'}")


def _external_pipe(proc: Proc, open_fd: OpenFd, sharer: str, outside_end: str) -> Finding:
    return Finding("file.pipe.external",
                   f"fd {open_fd.fd}: {open_fd.target} is shared with {sharer}", proc.pid,
                   fd=open_fd.fd,
                   remedy=f"nothing to do at dump; at restore pass {outside_end} with "
                          f"--inherit-fd fd[N]:{open_fd.target}, or the restored pipe no longer "
                          f"reaches it")


def _other_end_open(ctx: AuditContext, proc: Proc, open_fd: OpenFd,
                    modes: set[int]) -> bool | None:
    """Whether the pipe's other end is open anywhere, asked of the kernel's own counts of a
    pipe's readers and writers: poll() on a copy of a read end says POLLHUP when no writer
    is left, on a write end POLLERR when no reader is (fs/pipe.c pipe_poll). The copy
    shares the holder's open file, so it counts nothing itself. None when only a walk of
    the host tells: a read-write end of the tree counts as both, a fixture has no kernel
    behind it, and pidfd_getfd is refused to a dumper that may not ptrace the holder."""
    if os.O_RDWR in modes or ctx.proc_root != DEFAULT_PROC_ROOT:
        return None
    try:
        copy = fd_query.getfd(proc.pid, open_fd.fd)
    except AccessDenied:
        return None
    try:
        if os.fstat(copy).st_ino != open_fd.inode:
            raise ProcessGone(proc.pid)  # the fd number now names another file
        poller = select.poll()
        poller.register(copy, 0)    # POLLHUP and POLLERR are always reported
        return not any(events & (select.POLLHUP | select.POLLERR)
                       for _, events in poller.poll(0))
    finally:
        os.close(copy)


def _tree_pipes(ctx: AuditContext) -> dict[str, dict[tuple[int, int], int]]:
    """Every pipe fd of the tree: link text -> {(pid, fd): its open flags}."""
    pipes: dict[str, dict[tuple[int, int], int]] = defaultdict(dict)
    for pid, fds in ctx.tree_fds.items():
        for open_fd in fds:
            if open_fd.target.startswith("pipe:["):
                try:
                    pipes[open_fd.target][(pid, open_fd.fd)] = open_fd.flags
                except ProcessGone:  # closed before or while we read
                    continue
    return pipes


# ---------------------------------------------------------------- pipe and FIFO data
#
# pipes.c dump_one_pipe_data: the queued data of a pipe (or FIFO: fifo.c) is read
# once, through the first fd of it in the dump's order that is not open O_WRONLY
# (an O_PATH fd's flags have no access mode, so it counts as a read end), with
# F_GETPIPE_SZ and tee(). An O_PATH fd there fails: "Can't obtain piped data size".
# CRIU dumps the processes depth first from the root (for_each_pstree_item), and
# each process's fds in ascending order. Pipes and FIFOs are told apart by inode
# number alone, each in a list of its own (pd_pipes, pd_fifo), as CRIU does.

PipeKey = tuple[str, int]


def _check_pipe_data(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Iterator[Finding]:
    readers = ctx.table("files.pipe_data_readers", lambda: _pipe_data_readers(ctx))
    if readers.get(_pipe_key(open_fd)) == (proc.pid, open_fd.fd) and open_fd.flags & os.O_PATH:
        what = open_fd.target if open_fd.kind == "pipe" else f"FIFO {open_fd.target}"
        yield Finding("file.pipe.o_path",
                      f"fd {open_fd.fd}: {what} is open with O_PATH, and it is the fd CRIU "
                      f"reads the queued data through (its first fd not open write-only)",
                      proc.pid, fd=open_fd.fd)


def _pipe_key(open_fd: OpenFd) -> PipeKey | None:
    kind = open_fd.kind
    if kind == "pipe":
        return ("pipe", open_fd.inode)
    return ("fifo", open_fd.stat.st_ino) if kind == "fifo" else None


def _pipe_data_readers(ctx: AuditContext) -> dict[PipeKey, tuple[int, int]]:
    """Each pipe and FIFO of the tree -> (pid, fd) of the fd CRIU reads its data through."""
    candidates: dict[PipeKey, dict[int, int]] = defaultdict(dict)   # key -> pid -> lowest fd
    for pid, fds in ctx.tree_fds.items():
        for open_fd in fds:
            try:
                key = _pipe_key(open_fd)
                if key is None or open_fd.flags & os.O_WRONLY:
                    continue
            except (ProcessGone, AccessDenied):
                continue    # closed before or while we read
            lowest = candidates[key].get(pid)
            if lowest is None or open_fd.fd < lowest:
                candidates[key][pid] = open_fd.fd
    readers, order = {}, None
    for key, holders in candidates.items():
        if len(holders) > 1 and order is None:
            order = {pid: place for place, pid in enumerate(tree.dump_order(ctx))}
        pid = min(holders, key=lambda holder: order.get(holder, len(order))) if order else \
            next(iter(holders))
        readers[key] = (pid, holders[pid])
    return readers




# ---------------------------------------------------------------- cwd, root and exe

def check_process(ctx: AuditContext, proc: Proc) -> Iterator[Finding]:
    """dump_task_fs and dump_task_exe_link: cwd, root and the executable go through the path rules."""
    if proc.stat.state == "Z":
        return  # a zombie has given its cwd, root and mm up, and CRIU saves none of them
    for name in ("cwd", "root"):
        yield from check_path(ctx, proc, opened_link(proc, name, name, proc.readlink(name)))
    yield from _check_exe(ctx, proc)
    yield from check_mount_tree(ctx, proc)


def _check_exe(ctx: AuditContext, proc: Proc) -> Iterator[Finding]:
    exe = opened_link(proc, "exe", "exe", proc.readlink("exe"))
    # CRIU dumps a file it saw through the same mount once (fd_id_generate_special): the
    # executable is mapped too, and its mapping has been judged by the memory checks.
    mapped = {(os.makedev(m.major, m.minor), m.inode) for m in proc.maps}
    if (exe.stat.st_dev, exe.stat.st_ino) not in mapped:
        yield from check_path(ctx, proc, exe)


# ---------------------------------------------------------------- helpers

def _mnt_id_of(path: str) -> int:
    """The mount id of what `path` leads to, or -1 when it leads nowhere."""
    try:
        try:
            return mnt_id_of(path)
        except MntIdUnavailable:
            return mnt_id_via_fdinfo(path)
    except OSError:
        return -1
