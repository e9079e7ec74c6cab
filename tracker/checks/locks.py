"""File locks and leases: POSIX, OFD, flock and leases held by the tree.

CRIU (on kernels that list locks in fdinfo) reads each fd's `lock:` lines
and refuses to dump them unless asked with --file-locks; locks of processes
outside the tree do not show on the tree's fds, so CRIU ignores them. The
audit reads the same lines. /proc/locks, the host's every lock, tells which
inodes carry locks at all, so that only their fds need their fdinfo read; but
its first reader in a while waits about 10 ms for an RCU grace period
(tracker.proc_locks), longer than a small process's whole audit. So it is read
by an audit that names the holders outside the tree (`lock.outside_holder`,
info: only it tells), or that would otherwise read more fdinfo records than
that wait costs (the fd walk has read those of pipes, sockets and anon fds
already; those of path-named files cost a read each).

A write lease has one more catch: CRIU reopens every regular file it dumps
(`open_proc(PROC_SELF, "fd/%d")` in files-reg.c store_validation_data_build_id,
to read an ELF build-id for restore-time validation) when the file holds at
least SELFMAG + 1 bytes and is not open O_WRONLY|O_APPEND (should_check_size).
That open breaks the lease: the dump waits for the kernel's lease-break-time
and the holder gets SIGIO (by default fatal) once CRIU lets it go.
`--file-validation filesize` skips the reopen.
"""
from __future__ import annotations

import io
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterator, NamedTuple

from tracker import proc_locks
from tracker.context import AuditContext
from tracker.procfs import OpenFd, Proc, ProcessGone
from tracker.rules import BLOCKER, INFO, OPTION, Finding, Rule

_LOCKS_REMEDY = ("dump with --file-locks (safe only when no process outside the tree "
                 "uses these locks), or release the lock before checkpointing")
_LOCKS_MESSAGE = "Some file locks are hold by dumping tasks! You can try --file-locks to dump them."

RULES = (
    Rule("lock.posix", "A POSIX (fcntl/lockf) record lock held by the tree", OPTION, _LOCKS_REMEDY,
         option="--file-locks", criu_message=_LOCKS_MESSAGE),
    Rule("lock.ofd", "An open file description (OFD) lock held by the tree", OPTION, _LOCKS_REMEDY,
         option="--file-locks", criu_message=_LOCKS_MESSAGE),
    Rule("lock.flock", "A flock() lock held by the tree", OPTION, _LOCKS_REMEDY,
         option="--file-locks", criu_message=_LOCKS_MESSAGE),
    Rule("lock.lease", "A file lease (F_SETLEASE) held by the tree", OPTION, _LOCKS_REMEDY,
         option="--file-locks", criu_message=_LOCKS_MESSAGE),
    Rule("lock.lease.reopened", "A write lease that CRIU's own reopen of the file would break",
         OPTION, "dump with --file-validation filesize (and --file-locks): CRIU then does not "
         "reopen the file to read its build-id; or release the lease before checkpointing",
         option="--file-validation",
         criu_message="Only file size could be stored for validation"),
    Rule("lock.unknown", "A file lock of a kind CRIU does not know", BLOCKER,
         "release the lock before checkpointing", criu_message="Unknown file lock!"),
    Rule("lock.outside_holder", "A file the tree holds is also locked by a process outside it",
         INFO,
         "expect that lock to stay with its owner: CRIU neither dumps it nor waits for it, "
         "and a restored lock of the tree may conflict with it"),
)

CODES = {"POSIX": "lock.posix", "OFDLCK": "lock.ofd", "FLOCK": "lock.flock", "LEASE": "lock.lease"}
ACCESS = {"READ", "WRITE", "UNLCK"}
BUILD_ID_MIN_SIZE = 5   # SELFMAG + 1: a smaller file is not reopened for its build-id
LOCK_NAMES = {"POSIX": "POSIX", "OFDLCK": "OFD", "FLOCK": "flock", "LEASE": "lease"}
# An fdinfo read costs about 2.5 us; the first read of /proc/locks in a while about
# 10 ms asleep: past this many fdinfo records to read in the tree, /proc/locks is the
# cheaper way.
FDINFO_READS_MAX = 4000


class FileLock(NamedTuple):
    """One line of /proc/locks, or of an fd's fdinfo after `lock:`."""

    text: str
    kind: str = ""        # POSIX, OFDLCK, FLOCK, LEASE, ... ("" when unparsable)
    access: str = ""      # READ, WRITE, UNLCK
    pid: int = -1         # the owner's pid (-1 for OFD locks)
    major: int = -1
    minor: int = -1
    inode: int = -1
    start: int = 0
    end: str = "EOF"      # last byte, or EOF
    waiting: bool = False  # a `->` line: a request blocked on another lock

    @property
    def known(self) -> bool:
        return self.kind in CODES and self.access in ACCESS

    @property
    def identity(self) -> tuple:
        """What the lock is, without the line number (/proc/locks and fdinfo number differently)."""
        return (self.kind, self.access, self.pid, self.major, self.minor, self.inode,
                self.start, self.end)

    def describe(self) -> str:
        span = ("the whole file" if (self.start, self.end) == (0, "EOF") else
                f"bytes {self.start} to end of file" if self.end == "EOF" else
                f"bytes {self.start}-{self.end}")
        return f"{LOCK_NAMES.get(self.kind, self.kind)} {self.access} lock on {span}"


def parse_lock(text: str) -> FileLock:
    """`1: POSIX  ADVISORY  WRITE 11867 fe:00:15343617 5 14` (a `->` after the number: waiting)."""
    words = text.split()
    waiting = len(words) > 1 and words[1] == "->"
    fields = words[2:] if waiting else words[1:]
    if len(fields) != 7:
        return FileLock(text.strip(), waiting=waiting)
    kind, _mode, access, pid, where, start, end = fields
    major, _, rest = where.partition(":")
    minor, _, inode = rest.partition(":")
    try:
        return FileLock(text.strip(), kind, access, int(pid), int(major, 16), int(minor, 16),
                        int(inode), int(start), end, waiting)
    except ValueError:  # e.g. `<none>:0` for a lock on no inode: CRIU cannot parse it either
        return FileLock(text.strip(), waiting=waiting)


def read_proc_locks(proc_root: Path) -> dict[int, list[FileLock]]:
    """Every granted lock on the host, by inode (the text read ahead, when a command began
    reading it: tracker.proc_locks)."""
    by_inode: dict[int, list[FileLock]] = defaultdict(list)
    for line in io.StringIO(proc_locks.text(proc_root)):  # the lines the file gives, "\n" kept
        lock = parse_lock(line)
        if not lock.waiting:
            by_inode[lock.inode].append(lock)
    return by_inode


def fd_locks(open_fd: OpenFd) -> list[FileLock]:
    """The locks this fd holds, as the kernel lists them in its fdinfo (what CRIU dumps)."""
    return [parse_lock(line[len("lock:"):]) for line in open_fd.fdinfo_lines
            if line.startswith("lock:")]


def check_process(ctx: AuditContext, proc: Proc) -> Iterator[Finding]:
    host_locks = _host_locks(ctx)
    reported: set[tuple] = set()
    for open_fd in ctx.tree_fds.get(proc.pid, []):
        try:
            if host_locks is None:
                held, outside = fd_locks(open_fd) if "lock" in open_fd.fdinfo else [], []
            else:
                on_inode = host_locks.get(_inode(open_fd))
                if not on_inode:
                    continue
                held = (fd_locks(open_fd) if any(_may_be_held(ctx, lock) for lock in on_inode)
                        else [])
                outside = (_locked_outside(ctx, open_fd, on_inode, held) if ctx.name_holders
                           else [])
        except ProcessGone:
            continue  # the fd was closed meanwhile
        for lock in held:
            if lock.identity not in reported:
                reported.add(lock.identity)
                yield _held(proc, open_fd, lock)
                if _broken_by_reopen(open_fd, lock):
                    yield _reopened(proc, open_fd)
        for lock in outside:
            if lock.identity not in reported:
                reported.add(lock.identity)
                yield Finding("lock.outside_holder",
                              f"fd {open_fd.fd} ({open_fd.target}): also locked by pid {lock.pid} "
                              f"outside the tree ({lock.describe()})", proc.pid, fd=open_fd.fd)


def _host_locks(ctx: AuditContext) -> dict[int, list[FileLock]] | None:
    """/proc/locks by inode, when this audit reads it (None: the fds' fdinfo tells).
    Decided once for the tree: its one read serves every process of it."""
    if ctx.name_holders or ctx.table("locks.fdinfo-unread", lambda: _unread(ctx)) > FDINFO_READS_MAX:
        return ctx.table("locks.by_inode", lambda: read_proc_locks(ctx.proc_root))
    return None


def _unread(ctx: AuditContext) -> int:
    """How many fdinfo records of the tree's fds the fd walk has not read."""
    return sum(1 for open_fds in ctx.tree_fds.values() for open_fd in open_fds
               if not open_fd.fdinfo_at_hand)


def _may_be_held(ctx: AuditContext, lock: FileLock) -> bool:
    """Could this lock show on a tree fd? A POSIX lock belongs to its owner's fd table;
    the other kinds belong to an open file description, which an outsider may share."""
    return lock.kind != "POSIX" or ctx.in_tree(lock.pid)


def _inode(open_fd: OpenFd) -> int | None:
    if open_fd.target.startswith("anon_inode:"):
        return None  # every anon fd shares one inode; nobody locks those
    _, bracket, rest = open_fd.target.partition(":[")
    if bracket and rest[:-1].isdigit():
        return int(rest[:-1])
    return open_fd.stat.st_ino  # already read by the dispatcher for path-named files


def _held(proc: Proc, open_fd: OpenFd, lock: FileLock) -> Finding:
    if not lock.known:
        return Finding("lock.unknown", f"fd {open_fd.fd} ({open_fd.target}): unknown file lock "
                       f"{lock.text!r}", proc.pid, fd=open_fd.fd)
    owner = f" (owner pid {lock.pid})" if lock.pid > 0 else ""
    return Finding(CODES[lock.kind],
                   f"fd {open_fd.fd} ({open_fd.target}): {lock.describe()}{owner}",
                   proc.pid, fd=open_fd.fd)


def _broken_by_reopen(open_fd: OpenFd, lock: FileLock) -> bool:
    """A write lease on a file CRIU will reopen to read its build-id (files-reg.c)."""
    appending = (open_fd.flags & os.O_ACCMODE) == os.O_WRONLY and open_fd.flags & os.O_APPEND
    return (lock.kind == "LEASE" and lock.access == "WRITE" and open_fd.kind == "reg"
            and open_fd.stat.st_size >= BUILD_ID_MIN_SIZE and not appending)


def _reopened(proc: Proc, open_fd: OpenFd) -> Finding:
    return Finding("lock.lease.reopened",
                   f"fd {open_fd.fd} ({open_fd.target}): write lease on a file of "
                   f"{open_fd.stat.st_size} bytes: CRIU reopens the file to read its build-id, "
                   "which breaks the lease (the dump waits lease-break-time, then the holder "
                   "gets SIGIO)", proc.pid, fd=open_fd.fd, option_value="filesize")


def _locked_outside(ctx: AuditContext, open_fd: OpenFd, on_inode: list[FileLock],
                    held: list[FileLock]) -> list[FileLock]:
    """Locks of processes outside the tree on the file this fd holds."""
    mine = {lock.identity for lock in held}
    device = open_fd.stat.st_dev
    return [lock for lock in on_inode
            if lock.pid > 0 and not ctx.in_tree(lock.pid) and lock.identity not in mine
            and (lock.major, lock.minor) == (os.major(device), os.minor(device))]
