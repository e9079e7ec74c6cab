"""What /proc says now about the one resource a probe event names, as Findings.

Probes are filters: they say that something happened to a task, and the live
table asks /proc what it means, with the check modules the audit uses, so a
mark carries exactly the audit's reason codes. Every function here returns
"nothing" (None or an empty list) for a process or resource that vanished.
"""
from __future__ import annotations

import os
import stat
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from probes.events import Event, Special, opened_node
from probes.wire import PATH_LEN
from tracker.checks import devices, fd_owners, locks, paths, task
from tracker.context import AuditContext
from tracker.procfs import AccessDenied, Mapping, OpenFd, Proc, ProcessGone
from tracker.rules import Finding

# Anonymous inodes CRIU dumps without a word: the probes follow none of them
# (fanotify and pidfds they do: fanotify_init and pidfd_open are probed).
QUIET_ANON = frozenset({"eventfd", "eventpoll", "inotify", "signalfd", "timerfd"})
# Sockets the probes follow: TCP connections, and families or protocols CRIU cannot dump.
PROBED_SOCKET_CODES = frozenset({"socket.tcp.established", "socket.unknown_family",
                                 "socket.inet.unsupported"})
HELD_LOCK_CODES = frozenset({"lock.posix", "lock.ofd", "lock.flock", "lock.lease", "lock.unknown"})
SYSV_SHM = "/SYSV"
# Device paths known to name their node with no symlink on the way, by (path, device)
DEVICE_PATHS_KEPT = 1024
# Device opens judged from their records, by (pid, fd, path, inode fields)
RECORDS_KEPT = 4096


def one_process_context(proc: Proc) -> AuditContext:
    return AuditContext(root_pid=proc.pid, tree_pids={proc.pid}, proc_root=proc.proc_root)


# ---------------------------------------------------------------- fds

def classify_fd(proc: Proc, fd: int) -> tuple[str, list[Finding]] | None:
    """The fd's link text and the audit's findings for it now; None when the fd is gone."""
    try:
        open_fd = OpenFd(proc, fd, proc.readlink(f"fd/{fd}"))
        ctx = one_process_context(proc)
        ctx.tree_fds[proc.pid] = [open_fd]
        return open_fd.target, list(fd_owners.check_fd(ctx, proc, open_fd))
    except (ProcessGone, AccessDenied):
        return None


def device_from_record(event: Event) -> tuple[str, list[Finding]] | None:
    """The link text and the audit's findings for a device open judged by the inode its
    record carries, with no /proc read: a block device, or a character device its number
    alone refuses (devices.refused_by_number), opened by a whole path under /dev/ that
    names the node itself. None when the record carries no inode, the path may not be what
    /proc shows (relative, cut short, through a symlink), or more than the number decides."""
    if not event.arg2:
        return None  # the common case, asked first: no inode in the record
    # A process that opens the same device again and again is judged once.
    key = (event.tgid, event.fd, event.path, event.arg, event.arg2)
    if key not in _BY_RECORD:
        if len(_BY_RECORD) >= RECORDS_KEPT:
            _BY_RECORD.clear()
        _BY_RECORD[key] = _device_from_node(event)
    return _BY_RECORD[key]


def _device_from_node(event: Event) -> tuple[str, list[Finding]] | None:
    node = opened_node(event)
    if node is None or not (stat.S_ISBLK(node.mode) or stat.S_ISCHR(node.mode)):
        return None
    device = (node.major, node.minor)
    if not _names_node(event.path, device):
        return None
    refusal = devices.refused_by_number(stat.S_ISBLK(node.mode), device)
    if refusal is None:
        return None
    code, kind = refusal
    return event.path, [devices.refused(code, event.tgid, event.fd, kind, event.path, device)]


_BY_RECORD: dict[tuple, tuple[str, list[Finding]] | None] = {}
_NAMES_NODE: dict[tuple[str, tuple[int, int]], bool] = {}


def _names_node(path: str, device: tuple[int, int]) -> bool:
    """Is `path` what /proc shows for the node: absolute under /dev/, whole, with no `.`,
    `..` or symlink on the way (looked up once, in crwatch's mount namespace, the best
    left to go on), and is the node there still this device?"""
    known = _NAMES_NODE.get((path, device))
    if known is not None:
        return known
    whole = (path.startswith("/dev/") and len(path.encode()) < PATH_LEN - 1
             and os.path.normpath(path) == path)
    try:
        status = os.stat(path)
        names = whole and os.path.realpath(path) == path and \
            os.makedev(*device) == status.st_rdev
    except OSError:
        names = False
    if len(_NAMES_NODE) >= DEVICE_PATHS_KEPT:
        _NAMES_NODE.clear()
    _NAMES_NODE[(path, device)] = names
    return names


def fd_target(proc: Proc, fd: int) -> str | None:
    try:
        return proc.readlink(f"fd/{fd}")
    except (ProcessGone, AccessDenied):
        return None


def probe_visible(target: str, codes: set[str], special: Special | None = None) -> bool:
    """Is this a file the probes follow (device opens, special syscalls, TCP connects)?

    Only such fds are marked, by the startup audit as by events, so that a
    probe event can always take the mark away again. `special` is what the
    event that reported the fd says made it: a device open must have left a
    device, not whatever file reused the number since.
    """
    if special == Special.OTHER:
        return True  # a rare maker of odd fds (fsopen, landlock...): whatever it made counts
    device = target.startswith("/dev/") or any(code.startswith("device.") for code in codes)
    if special == Special.DEVICE or device:
        return device
    if target.startswith("anon_inode:"):
        return target.removeprefix("anon_inode:").strip("[]") not in QUIET_ANON
    return target.startswith("socket:") and not PROBED_SOCKET_CODES.isdisjoint(codes)


def fallback_findings(event: Event) -> list[Finding]:
    """A reason built from the event alone, for an fd that was closed before it could be read."""
    fd, pid = event.fd, event.tgid
    gone = "(closed before crwatch could read it)"
    if event.special == Special.DEVICE:
        return _device_by_path(event, gone)
    anon = {Special.PERF_EVENT: ("anon.unsupported", "anon_inode:[perf_event] cannot be dumped"),
            Special.IO_URING: ("anon.io_uring", "io_uring instance"),
            Special.USERFAULTFD: ("anon.unsupported", "anon_inode:[userfaultfd] cannot be dumped"),
            Special.BPF: ("anon.unsupported", "a BPF object made by bpf() cannot be dumped"),
            Special.FANOTIFY: ("anon.notify.events_dropped",
                               "fanotify: events still queued at dump time are dropped")}
    if event.special in anon:
        code, what = anon[event.special]
        return [Finding(code, f"fd {fd}: {what} {gone}", pid, fd=fd)]
    return [Finding("fd.unclassified", f"fd {fd}: unknown kind of file {event.path!r} {gone}",
                    pid, fd=fd)]


def renumbered(findings: Iterable[Finding], old_fd: int, new_fd: int) -> list[Finding]:
    """The findings of fd `old_fd`, said of its copy `new_fd` (dup, F_DUPFD)."""
    return [finding._replace(fd=new_fd,
                             message=finding.message.replace(f"fd {old_fd}:", f"fd {new_fd}:", 1))
            for finding in findings]


def _device_by_path(event: Event, gone: str) -> list[Finding]:
    # The node is judged by its major:minor as the devices module does; its
    # path is looked up in crwatch's mount namespace, the best left to go on.
    fd, pid = event.fd, event.tgid
    try:
        status = os.stat(event.path)
    except OSError:
        return [Finding("device.chr.unsupported", f"fd {fd}: device {event.path} {gone}",
                        pid, fd=fd)]
    device = (os.major(status.st_rdev), os.minor(status.st_rdev))
    if stat.S_ISBLK(status.st_mode):
        return [Finding("device.blk", f"fd {fd}: block device {event.path} {gone}", pid, fd=fd)]
    if not stat.S_ISCHR(status.st_mode) or device in devices.QUIET_DEVICES:
        return []
    code = "device.tun.host_netns" if device == devices.TUN else "device.chr.unsupported"
    return [Finding(code, f"fd {fd}: character device {event.path} ({device[0]}:{device[1]}) "
                          f"{gone}", pid, fd=fd)]


# ---------------------------------------------------------------- locks

def held_locks(proc: Proc) -> list[Finding]:
    """The file locks the process holds now, as the locks module reports them."""
    try:
        ctx = one_process_context(proc)
        fds = ctx.tree_fds[proc.pid] = proc.fds()
        # The locks module asks /proc/locks which inodes are locked; reading it takes
        # the kernel's file-lock rwsem for writing (an RCU grace period, while every
        # lock call on the host waits). Only this process's own locks matter here,
        # and the fdinfo of its fds lists them.
        ctx.table("locks.by_inode", lambda: _own_locks_by_inode(fds))
        return [finding for finding in locks.check_process(ctx, proc)
                if finding.code in HELD_LOCK_CODES]
    except (ProcessGone, AccessDenied):
        return []


def _own_locks_by_inode(fds: list[OpenFd]) -> dict[int, list[locks.FileLock]]:
    by_inode: dict[int, list[locks.FileLock]] = defaultdict(list)
    for open_fd in fds:
        if not open_fd.target.startswith("/"):
            continue  # sockets, pipes and anonymous inodes: nobody locks those
        try:
            for lock in locks.fd_locks(open_fd):
                by_inode[lock.inode].append(lock)
        except ProcessGone:
            continue  # closed meanwhile
    return by_inode


# ---------------------------------------------------------------- threads

def thread_status(proc_root: Path, tid: int) -> dict[str, str] | None:
    """/proc/TID/status of any thread (the kernel resolves a tid there too)."""
    try:
        return Proc(tid, proc_root).status
    except (ProcessGone, AccessDenied):
        return None


def tracer_of(proc_root: Path, tid: int) -> tuple[int, int] | None:
    """(tracer tid, tracer pid) of a traced thread, None when it is not traced (or gone)."""
    status = thread_status(proc_root, tid)
    tracer = int(status.get("TracerPid", "0")) if status else 0
    if not tracer:
        return None
    tracer_status = thread_status(proc_root, tracer)
    return tracer, int(tracer_status.get("Tgid", tracer)) if tracer_status else tracer


def pi_wait_address(proc: Proc, tid: int) -> int | None:
    """The PI futex a thread waits on now (as the task module reads it), else None."""
    try:
        words = proc.read(f"task/{tid}/syscall").split()
    except (ProcessGone, AccessDenied):
        return None
    if task.SYSCALLS is None or len(words) < 7 or not words[0].isdigit():
        return None
    if int(words[0]) != task.SYSCALLS.futex:
        return None
    name = task.FUTEX_PI_OPS.get(int(words[2], 16) & task.FUTEX_CMD_MASK)
    if name is None:
        return None
    return int(words[5 if name == "FUTEX_WAIT_REQUEUE_PI" else 1], 16)


# ---------------------------------------------------------------- memory and namespaces

def sysv_mappings(proc: Proc) -> list[Mapping]:
    try:
        return [mapping for mapping in proc.maps if mapping.path.startswith(SYSV_SHM)]
    except (ProcessGone, AccessDenied):
        return []


def shm_finding(pid: int, mapping: Mapping) -> Finding:
    # /proc/PID/maps shows a SysV segment's shmid in the inode column.
    return Finding("memory.sysv_shm.host_ipc", f"mapping {mapping.address} attaches SysV shm "
                   f"segment {mapping.inode} in the host's IPC namespace", pid)


def in_host_ipc(proc: Proc) -> bool:
    """Does the process share crwatch's IPC namespace (where CRIU cannot take its shm)?"""
    try:
        return not paths.root_in_own_namespace(one_process_context(proc), "ipc")
    except (ProcessGone, AccessDenied, OSError):
        return False


def nested_pid_namespace(proc: Proc) -> Finding | None:
    """namespace.nested when the process lives in another pid namespace than crwatch."""
    try:
        link = proc.namespace("pid")
        own = os.readlink(proc.proc_root / "self" / "ns" / "pid")
    except (ProcessGone, AccessDenied, OSError):
        return None
    if link == own:
        return None
    return Finding("namespace.nested", f"pid {proc.pid} lives in a nested pid namespace ({link}; "
                   f"crwatch's is {own})", proc.pid)
