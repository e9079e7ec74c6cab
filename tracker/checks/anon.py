"""Anonymous-inode fds: eventfd, epoll, inotify, fanotify, signalfd, timerfd, pidfd, BPF, ...

CRIU tells these apart by the fd's link text (`anon_inode:[eventfd]`,
`anon_inode:inotify`, ...): the kinds it knows are dumped, every other one
ends in "Can't dump file ... (anon <link>)". Most supported kinds need no
finding; epoll, pidfd, timerfd and the notify groups carry conditions read
from fdinfo (a timerfd's clock must be one CRIU restores: include/timerfd.h
verify_timerfd takes realtime, monotonic and boottime, not the alarm clocks).
An O_PATH fd reopened through /proc/PID/fd on an eventfd, timerfd, signalfd,
fanotify or pidfd shows no such records, and CRIU refuses it.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
from typing import Iterator, NamedTuple

from tracker.checks import paths, tree
from tracker.context import AuditContext
from tracker.procfs import DEFAULT_PROC_ROOT, OpenFd, Proc, ProcessGone
from tracker.rules import BLOCKER, INFO, Finding, Rule, VersionNote

RULES = (
    Rule("anon.unsupported", "An anonymous-inode fd of a kind CRIU cannot dump", BLOCKER,
         "close the fd before checkpointing (CRIU has no support for this kind of file)",
         criu_message="Can't dump file %d of that type [%o] (anon %s)"),
    Rule("anon.io_uring", "An io_uring instance", BLOCKER,
         "tear the ring down (close the fd) before checkpointing; CRIU cannot dump io_uring",
         criu_message="send_fds failed (-22) / Can't retrieve FDs from socket"),
    Rule("anon.bpf_map", "A BPF map fd", BLOCKER,
         "close the map fd before checkpointing; only CRIU built with libbpf dumps BPF maps, "
         "and then only HASH and ARRAY maps",
         criu_message="Can't dump file %d of that type [%o] (anon anon_inode:bpf-map)"),
    Rule("anon.epoll.escaped_target", "An epoll watches a file CRIU cannot find among the fds of "
         "the epoll's process",
         BLOCKER, "remove the watch (EPOLL_CTL_DEL) before closing or replacing the watched fd",
         criu_message="kid_lookup_epoll: no match pid %d efd %d tfd %d toff %u; "
                      "Dump eventpoll (pid: %d) failed with -1"),
    Rule("anon.pidfd", "A pidfd of a process in the dumped tree", INFO,
         "nothing to do: CRIU 4.1 and later restore pidfds",
         older_criu=(VersionNote((4, 1, 0), BLOCKER, "CRIU before 4.1 cannot dump pidfds"),)),
    Rule("anon.pidfd.outside_tree", "A pidfd of a process outside the dumped tree", BLOCKER,
         "close the pidfd, or checkpoint a tree that contains the process it refers to",
         criu_message="pidfd pid %d is not a part of process tree.."),
    Rule("anon.pidfd.thread", "A pidfd opened with PIDFD_THREAD", BLOCKER,
         "open the pidfd without PIDFD_THREAD, or close it before checkpointing",
         criu_message="PIDFD_THREAD flag is currently not supported"),
    Rule("anon.o_path", "An O_PATH fd on an eventfd, timerfd, signalfd, fanotify or pidfd",
         BLOCKER, "close the O_PATH fd (opened through /proc/PID/fd) before checkpointing: CRIU "
         "reads the object's state from the fd's fdinfo, which an O_PATH fd does not show",
         criu_message="No records of type %d found in fdinfo file / "
                      "pidfd pid %d is not a part of process tree"),
    Rule("anon.timerfd.clock", "A timerfd on a clock CRIU does not restore (an alarm clock)",
         BLOCKER, "use a timerfd on CLOCK_REALTIME, CLOCK_MONOTONIC or CLOCK_BOOTTIME, or close "
         "it before checkpointing", criu_message="Unknown clock type %d for %#x"),
    Rule("anon.notify.events_dropped", "Events queued on an inotify/fanotify fd are dropped", INFO,
         "expect to miss the events queued at dump time; rescan what the watches cover",
         criu_message="The %#08x inotify events will be dropped"),
    Rule("anon.notify.unopenable_watch", "An inotify/fanotify watch on a file CRIU cannot reopen",
         BLOCKER, "remove watches on files without usable file handles (/proc, /sys and other "
         "pseudo-filesystems) before checkpointing",
         criu_message="Can't dump that handle"),
    Rule("anon.fanotify.mount_unreachable", "A fanotify mount mark on a mount the dump does not "
         "take", BLOCKER, "remove the mark (FAN_MARK_REMOVE), or mark a mount of the tree's own "
         "mount namespace, before checkpointing: CRIU saves a mount mark by the mount's id",
         criu_message="Can't find mnt_id 0x%x"),
    Rule("anon.fanotify.filesystem_mark", "A fanotify filesystem mark is not carried", INFO,
         "add the FAN_MARK_FILESYSTEM mark again after restore: CRIU's image holds only inode "
         "and mount marks"),
)

# Link names (anon_inode:<name>, brackets stripped) that CRIU 4.2 dumps.
SUPPORTED = frozenset({"eventfd", "eventpoll", "inotify", "fanotify", "signalfd", "timerfd",
                       "pidfd"})
PIDFD_THREAD = os.O_EXCL
# Kinds whose fdinfo CRIU needs records of (proc_parse.c parse_fdinfo_pid_s, or the pidfd's
# Pid line): an O_PATH fd shows none. An epoll or inotify with no records dumps as empty.
FDINFO_KINDS = frozenset({"eventfd", "timerfd", "signalfd", "fanotify", "pidfd"})
BPF_MAP_TYPES = {1: "HASH", 2: "ARRAY"}
TIMERFD_CLOCKS = {0: "CLOCK_REALTIME", 1: "CLOCK_MONOTONIC", 7: "CLOCK_BOOTTIME"}
OTHER_CLOCKS = {8: "CLOCK_REALTIME_ALARM", 9: "CLOCK_BOOTTIME_ALARM"}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
SYS_KCMP, KCMP_FILE, KCMP_EPOLL_TFD, SYS_OPEN_BY_HANDLE_AT = 312, 0, 7, 304


def check_fd(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Iterator[Finding]:
    name = open_fd.anon_name
    if name in FDINFO_KINDS and open_fd.flags & os.O_PATH:
        yield Finding("anon.o_path", f"fd {open_fd.fd}: {open_fd.target} is open with O_PATH: its "
                      "fdinfo shows none of the state CRIU reads", proc.pid, fd=open_fd.fd)
    elif name == "eventpoll":
        yield from _check_epoll(ctx, proc, open_fd)
    elif name == "pidfd":
        yield _check_pidfd(ctx, proc, open_fd)
    elif name in ("inotify", "fanotify"):
        yield from _check_notify(ctx, proc, open_fd, name)
    elif name == "timerfd":
        yield from _check_timerfd(proc, open_fd)
    elif name == "bpf-map":
        yield _bpf_map(ctx, proc, open_fd)
    elif name == "io_uring":
        yield Finding("anon.io_uring", f"fd {open_fd.fd}: io_uring instance ({open_fd.target})",
                      proc.pid, fd=open_fd.fd)
    elif name not in SUPPORTED:
        yield Finding("anon.unsupported", f"fd {open_fd.fd}: {open_fd.target} cannot be dumped",
                      proc.pid, fd=open_fd.fd)


def _check_timerfd(proc: Proc, open_fd: OpenFd) -> Iterator[Finding]:
    clock = int(open_fd.fdinfo.get("clockid", "0"))
    if clock not in TIMERFD_CLOCKS:
        yield Finding("anon.timerfd.clock",
                      f"fd {open_fd.fd}: timerfd on clock {clock} "
                      f"({OTHER_CLOCKS.get(clock, 'unknown')}), which CRIU cannot restore",
                      proc.pid, fd=open_fd.fd)


def _live(ctx: AuditContext) -> bool:
    """kcmp and file handles ask the running kernel, which describes only the live /proc."""
    return ctx.proc_root == DEFAULT_PROC_ROOT


# ---------------------------------------------------------------- epoll

class EpollTarget(NamedTuple):
    """One `tfd:` line of an epoll's fdinfo: a watched fd number and its file's inode."""

    tfd: int
    inode: int
    offset: int  # rank among the targets registered under the same fd number (kcmp's toff)


_TFD_LINE = re.compile(r"tfd:\s*(\d+)\s.*?\bino:([0-9a-f]+)")


def parse_epoll_targets(lines: list[str]) -> list[EpollTarget]:
    """`tfd: 5 events: 19 data: 5  pos:0 ino:45fe sdev:f` lines, in the kernel's order."""
    targets, seen = [], {}
    for line in lines:
        match = _TFD_LINE.match(line)
        if match:
            tfd = int(match[1])
            targets.append(EpollTarget(tfd, int(match[2], 16), seen.get(tfd, 0)))
            seen[tfd] = seen.get(tfd, 0) + 1
    return targets


def _check_epoll(ctx: AuditContext, proc: Proc, epoll: OpenFd) -> Iterator[Finding]:
    targets = parse_epoll_targets(epoll.fdinfo_lines)
    if not targets or _dumped_earlier(ctx, proc.pid, epoll):
        return
    # built once per process, not per epoll: a process may hold thousands of each
    own = ctx.table(("anon.fds_by_number", proc.pid),
                    lambda: {open_fd.fd: open_fd for open_fd in ctx.tree_fds.get(proc.pid, [])})
    for target in targets:
        holder = _target_holder(ctx, proc.pid, own, epoll.fd, target)
        if holder != proc.pid:
            held = ("no fd of the tree holds the watched file" if holder is None else
                    f"CRIU finds the watched file first in pid {holder}, not in the epoll's own "
                    "process")
            yield Finding(
                "anon.epoll.escaped_target",
                f"fd {epoll.fd}: epoll watches fd {target.tfd} (inode {target.inode}), but fd "
                f"{target.tfd} was closed or now names another file, and {held}",
                proc.pid, fd=epoll.fd)


def _dumped_earlier(ctx: AuditContext, pid: int, epoll: OpenFd) -> bool:
    """Is this epoll file (inherited, say) one CRIU dumps with an earlier process of its
    dump order? It dumps each file once, judged in that process."""
    if not _live(ctx):
        return False
    for holder in tree.dump_order(ctx):
        if holder == pid:
            return False
        for open_fd in ctx.tree_fds.get(holder, []):
            if (open_fd.target == epoll.target
                    and _libc.syscall(SYS_KCMP, holder, pid, KCMP_FILE, open_fd.fd, epoll.fd) == 0):
                return True
    return False


def _target_holder(ctx: AuditContext, pid: int, own: dict[int, OpenFd], epfd: int,
                   target: EpollTarget) -> int | None:
    """The process where CRIU finds the watched file (it looks it up with kcmp, as here)."""
    at_number = own.get(target.tfd)
    if at_number is not None and _same_file(ctx, pid, at_number, pid, epfd, target):
        return pid
    # Rare: the watched file moved (dup + close) or lives on in another process of the tree.
    # CRIU (eventpoll.c flush_eventpoll_dinfo_queue) takes the first fd it dumped on that file,
    # which must be the epoll's own process's ("pid mismatch" otherwise).
    for holder in tree.dump_order(ctx):
        for open_fd in sorted(ctx.tree_fds.get(holder, []), key=lambda candidate: candidate.fd):
            if open_fd is not at_number and _same_file(ctx, holder, open_fd, pid, epfd, target):
                return holder
    return None


def _same_file(ctx: AuditContext, holder: int, open_fd: OpenFd, pid: int, epfd: int,
               target: EpollTarget) -> bool:
    try:
        if _inode(open_fd) != target.inode:
            return False
    except ProcessGone:
        return False
    if open_fd.target.startswith("socket:["):
        return True  # a socket inode has exactly one open file: no need to ask kcmp
    same = _kcmp_epoll_target(ctx, holder, open_fd.fd, pid, epfd, target)
    return True if same is None else same  # without kcmp, the inode is the best evidence


def _inode(open_fd: OpenFd) -> int:
    """From the link text where it carries one (pipe:[N], socket:[N]), else from stat."""
    _, bracket, rest = open_fd.target.partition(":[")
    if bracket and rest[:-1].isdigit():
        return int(rest[:-1])
    return open_fd.stat.st_ino  # every anon fd shares one inode: kcmp tells them apart


class _EpollSlot(ctypes.Structure):
    _fields_ = [("efd", ctypes.c_uint32), ("tfd", ctypes.c_uint32), ("toff", ctypes.c_uint32)]


def _kcmp_epoll_target(ctx: AuditContext, holder: int, fd: int, pid: int, epfd: int,
                       target: EpollTarget) -> bool | None:
    """Is `holder`'s fd the file that `pid`'s epoll watches? None when kcmp cannot tell."""
    if not _live(ctx):
        return None
    slot = _EpollSlot(epfd, target.tfd, target.offset)
    result = _libc.syscall(SYS_KCMP, holder, pid, KCMP_EPOLL_TFD, fd, ctypes.byref(slot))
    if result >= 0:
        return result == 0
    if ctypes.get_errno() in (errno.EBADF, errno.ENOENT, errno.ESRCH):
        return False  # the fd or the watch went away meanwhile
    return None  # ENOSYS (no CONFIG_KCMP), EPERM


# ---------------------------------------------------------------- pidfd

def _check_pidfd(ctx: AuditContext, proc: Proc, pidfd: OpenFd) -> Finding:
    target = int(pidfd.fdinfo.get("Pid", "-1"))  # -1: the process has exited
    if pidfd.flags & PIDFD_THREAD:
        return Finding("anon.pidfd.thread", f"fd {pidfd.fd}: pidfd of thread {target} opened "
                       "with PIDFD_THREAD", proc.pid, fd=pidfd.fd)
    if target == -1:
        return Finding("anon.pidfd", f"fd {pidfd.fd}: pidfd of a process that has exited",
                       proc.pid, fd=pidfd.fd)
    if _in_dumped_tree(ctx, target):
        return Finding("anon.pidfd", f"fd {pidfd.fd}: pidfd of pid {target} (in the dumped tree)",
                       proc.pid, fd=pidfd.fd)
    return Finding("anon.pidfd.outside_tree",
                   f"fd {pidfd.fd}: pidfd of pid {target}, which is outside the dumped tree",
                   proc.pid, fd=pidfd.fd)


def _in_dumped_tree(ctx: AuditContext, pid: int) -> bool:
    """In the audited tree, or a descendant of its root (CRIU always dumps descendants)."""
    seen = set()
    while pid > 1 and pid not in seen:
        if ctx.in_tree(pid):
            return True
        seen.add(pid)
        try:
            pid = ctx.proc(pid).stat.ppid
        except ProcessGone:
            return False
    return False


# ---------------------------------------------------------------- inotify / fanotify

class Watch(NamedTuple):
    """An inotify watch or fanotify mark: `inotify wd:1 ino:3f7e8 sdev:fe00000 ...` in fdinfo."""

    kind: str  # inode, mount or filesystem
    fields: dict[str, str]

    @property
    def device(self) -> str:
        """The watched filesystem as major:minor (fdinfo prints the kernel's dev_t, major << 20)."""
        value = int(self.fields.get("sdev", "0"), 16)
        return f"{value >> 20}:{value & 0xFFFFF}"

    @property
    def inode(self) -> int:
        return int(self.fields.get("ino", "0"), 16)


WATCH_KINDS = {"inotify wd:": "inode", "fanotify ino:": "inode",
               "fanotify mnt_id:": "mount", "fanotify sdev:": "filesystem"}


def parse_watches(lines: list[str]) -> list[Watch]:
    watches = []
    for line in lines:
        kind = next((kind for prefix, kind in WATCH_KINDS.items() if line.startswith(prefix)), None)
        if kind is not None:
            words = line.split()[1:]
            watches.append(Watch(kind, dict(word.partition(":")[::2] for word in words)))
    return watches


def _check_notify(ctx: AuditContext, proc: Proc, open_fd: OpenFd,
                  name: str) -> Iterator[Finding]:
    watches = parse_watches(open_fd.fdinfo_lines)
    yield Finding("anon.notify.events_dropped",
                  f"fd {open_fd.fd}: {name} with {len(watches)} watch(es): events still queued "
                  "at dump time are dropped", proc.pid, fd=open_fd.fd)
    for watch in watches:
        if watch.kind == "filesystem":
            yield Finding("anon.fanotify.filesystem_mark",
                          f"fd {open_fd.fd}: fanotify filesystem mark on device {watch.device} "
                          "is not in CRIU's image", proc.pid, fd=open_fd.fd)
        elif watch.kind == "mount" and _live(ctx) and not _mount_taken(ctx, watch):
            # CRIU looks the mark's mount up among the mounts it dumps (fsnotify.c check_one_mark)
            yield Finding("anon.fanotify.mount_unreachable",
                          f"fd {open_fd.fd}: fanotify mount mark on mount "
                          f"{int(watch.fields['mnt_id'], 16)}, which no mount namespace the dump "
                          "takes shows (a mount of another namespace)", proc.pid, fd=open_fd.fd)
        elif watch.kind == "inode" and _handle_opens(ctx, watch) is False:
            yield Finding("anon.notify.unopenable_watch",
                          f"fd {open_fd.fd}: {name} watch on inode {watch.inode} of device "
                          f"{watch.device}: its file handle cannot be opened",
                          proc.pid, fd=open_fd.fd)


def _mount_taken(ctx: AuditContext, watch: Watch) -> bool:
    return paths.find_mount(ctx, int(watch.fields.get("mnt_id", "0"), 16)) is not None


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]


def _handle_opens(ctx: AuditContext, watch: Watch) -> bool | None:
    """Does the watched inode reopen from its file handle, as CRIU needs? None: cannot tell."""
    if not _live(ctx):
        return None
    raw = bytes.fromhex(watch.fields.get("f_handle", ""))[:128]
    handle = _FileHandle(len(raw), int(watch.fields.get("fhandle-type", "0"), 16))
    ctypes.memmove(handle.f_handle, raw, len(raw))
    mounts = ctx.table("anon.mounts_by_device", lambda: _mounts_by_device(ctx))
    return any(_open_by_handle(mount_point, handle) for mount_point in mounts.get(watch.device, []))


def _open_by_handle(mount_point: str, handle: _FileHandle) -> bool:
    try:
        mount_fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY)  # an O_PATH fd is refused
    except OSError:
        return False
    try:
        fd = _libc.syscall(SYS_OPEN_BY_HANDLE_AT, mount_fd, ctypes.byref(handle), os.O_PATH)
    finally:
        os.close(mount_fd)
    if fd < 0:
        return False
    os.close(fd)
    return True


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")  # mountinfo writes a space as \040


def _mounts_by_device(ctx: AuditContext) -> dict[str, list[str]]:
    """major:minor -> mount points, from the auditor's mountinfo (the namespace CRIU runs in)."""
    mounts: dict[str, list[str]] = {}
    path = ctx.proc_root / "self" / "mountinfo"
    with open(path, encoding="utf-8", errors="surrogateescape") as file:
        for line in file:
            fields = line.split()
            mount_point = _OCTAL_ESCAPE.sub(lambda match: chr(int(match[1], 8)), fields[4])
            mounts.setdefault(fields[2], []).append(mount_point)
    return mounts


# ---------------------------------------------------------------- BPF

def _bpf_map(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Finding:
    map_type = int(open_fd.fdinfo.get("map_type", "-1"))
    fact = None
    if map_type in BPF_MAP_TYPES:
        kind = BPF_MAP_TYPES[map_type]
        if ctx.environment.libraries.get("libbpf"):
            # No CRIU built with libbpf was at hand to prove it dumps these: deny by default.
            why = "crwatch has not verified CRIU's BPF map dumping"
        else:
            fact = "the dumper's CRIU is built without libbpf"
            why = f"only CRIU built with libbpf dumps it, and {fact}"
    else:
        kind, why = f"type {map_type}", "CRIU dumps only HASH and ARRAY maps"
    map_id = open_fd.fdinfo.get("map_id", "?")
    return Finding("anon.bpf_map", f"fd {open_fd.fd}: BPF {kind} map (id {map_id}): {why}",
                   proc.pid, fd=open_fd.fd, environment_fact=fact)
