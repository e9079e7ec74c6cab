"""Reading one process out of /proc.

All OS errors are turned into three exceptions at this one boundary (as
psutil does): ProcessGone (the errors of a process gone or on its way out:
ENOENT, ESRCH, and EINVAL from its mount tables), AccessDenied, or the OSError
itself for anything else. A single fd or task that vanishes mid-read is
skipped; whether the process itself survived is confirmed once, at the end of
an audit, by comparing its identity.

An fd table is read in one call by the compiled walk (`_crwatch_fdwalk`, from
tracker/fdwalk.c, which scripts/setup.sh builds into the venv): each fd's link and
the fdinfo record (and its fields) of each pipe, socket and anon inode, without a
Python call per syscall or per line. Without it the same table is read in Python,
each fdinfo when first asked for.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

try:
    import _crwatch_fdwalk as compiled_walk  # tracker/fdwalk.c, built by scripts/setup.sh
except ImportError:  # not built: Proc.fds walks in Python
    compiled_walk = None

DEFAULT_PROC_ROOT = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# What a magic link reads as when the kernel cannot name its path in PATH_MAX bytes
# (readlink fails with ENAMETOOLONG). No real link text starts with "(".
NAME_TOO_LONG = "(name too long)"
# CRIU reads links into PATH_MAX - 1 bytes after a leading "." (files.c fill_fdlink), and
# refuses a link that fills them (util.c read_fd_link): 4095 bytes or more.
LONGEST_LINK = 4094
# What Proc.read asks per read(): an fdinfo is one page unless an epoll or inotify fd
# lists thousands of entries.
RECORD_READ_SIZE = 65536


class ProcessGone(Exception):
    """The process does not exist (any more)."""

    def __init__(self, pid: int):
        super().__init__(f"no process with pid {pid}")
        self.pid = pid


class AccessDenied(Exception):
    """/proc refused to show something of a process (not root, or ptrace rules)."""

    def __init__(self, pid: int, what: str, reason: str):
        super().__init__(f"pid {pid}: cannot read {what}: {reason}")
        self.pid, self.what, self.reason = pid, what, reason


# The mount tables of a process whose (leading) task is exiting: it has given its
# namespaces up, and the kernel answers EINVAL (fs/proc_namespace.c mounts_open_common).
MOUNT_TABLES = frozenset({"mountinfo", "mounts", "mountstats"})


def _translate(pid: int, what: str, error: OSError) -> Exception:
    if error.errno in (errno.ENOENT, errno.ESRCH):
        return ProcessGone(pid)
    if error.errno == errno.EINVAL and what.rpartition("/")[2] in MOUNT_TABLES:
        return ProcessGone(pid)
    if error.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(pid, what, os.strerror(error.errno))
    return error


def pids(proc_root: Path = DEFAULT_PROC_ROOT) -> list[int]:
    """The pid of every process now, ascending (kernel threads included)."""
    return sorted(int(name) for name in os.listdir(proc_root) if name.isdigit())


def link_too_long(target: str) -> bool:
    """A link CRIU cannot read: unreadable here, or as long as CRIU's buffer."""
    return len(target) > LONGEST_LINK or target == NAME_TOO_LONG


class Stat(NamedTuple):
    """The fields of /proc/PID/stat that the audit uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    tty_nr: int
    flags: int
    num_threads: int
    start_ticks: int

    @property
    def start_time(self) -> float:
        """Seconds after boot: with the pid, the identity of a process."""
        return round(self.start_ticks / CLOCK_TICKS, 2)

    @property
    def is_kernel_thread(self) -> bool:
        return bool(self.flags & 0x00200000)  # PF_KTHREAD

    @property
    def is_exiting(self) -> bool:
        """In exit(): a zombie, or giving its mm, files and namespaces up (PF_EXITING)."""
        return self.state in ("Z", "X") or bool(self.flags & 0x00000004)


def parse_stat(text: str) -> Stat:
    # comm may contain spaces and parentheses: split at the last ')'.
    head, _, tail = text.rpartition(")")
    pid_text, _, comm = head.partition(" (")
    fields = tail.split()
    return Stat(
        pid=int(pid_text),
        comm=comm,
        state=fields[0],
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        session=int(fields[3]),
        tty_nr=int(fields[4]),
        flags=int(fields[6]),
        num_threads=int(fields[17]),
        start_ticks=int(fields[19]),
    )


_FILE_TYPES = {stat.S_IFREG: "reg", stat.S_IFDIR: "dir", stat.S_IFCHR: "chr", stat.S_IFBLK: "blk",
               stat.S_IFIFO: "fifo", stat.S_IFLNK: "lnk", stat.S_IFSOCK: "socket"}


class OpenFd:
    """One open file descriptor: its link text and, when asked, its stat and fdinfo.

    A plain slotted class: an audit makes one per fd, 10,000 at a time.
    """

    __slots__ = ("process", "fd", "target", "_kind", "_stat", "_fdinfo", "_fdinfo_lines",
                 "_fdinfo_text", "_mnt_id", "_inode", "_flags")

    def __init__(self, process: "Proc", fd: int, target: str, *,
                 known_stat: os.stat_result | None = None, known_fdinfo: dict[str, str] | None = None,
                 known_fdinfo_text: str | None = None):
        self.process, self.fd, self.target = process, fd, target
        self._stat, self._fdinfo, self._fdinfo_text = known_stat, known_fdinfo, known_fdinfo_text
        self._kind = self._fdinfo_lines = self._mnt_id = self._inode = self._flags = None

    def __repr__(self) -> str:
        return f"OpenFd({self.process.pid}, {self.fd}, {self.target!r})"

    @property
    def kind(self) -> str:
        """socket, pipe, anon, the file type of the target (reg, dir, chr, blk, fifo, lnk, other),
        or long_name for a file whose path is too long to read."""
        if self._kind is None:
            target = self.target
            if link_too_long(target):
                self._kind = "long_name"
            elif target.startswith("socket:["):
                self._kind = "socket"
            elif target.startswith("pipe:["):
                self._kind = "pipe"
            elif target.startswith("anon_inode:"):
                self._kind = "anon"
            else:
                self._kind = _FILE_TYPES.get(stat.S_IFMT(self.stat.st_mode), "other")
        return self._kind

    @property
    def inode(self) -> int:
        """The inode number, from the link text where it carries one (no syscall)."""
        if self._inode is None:
            target = self.target
            if target.endswith("]") and ":[" in target:
                self._inode = int(target[target.index(":[") + 2:-1])
            else:
                self._inode = self.stat.st_ino
        return self._inode

    @property
    def anon_name(self) -> str:
        """For anon_inode:[eventfd] or anon_inode:inotify, the bare name (eventfd, inotify)."""
        return self.target.removeprefix("anon_inode:").strip("[]")

    @property
    def stat(self) -> os.stat_result:
        if self._stat is None:
            self._stat = self.process.stat_fd(self.fd)
        return self._stat

    @property
    def fdinfo(self) -> dict[str, str]:
        """Key/value pairs of /proc/PID/fdinfo/FD; repeated keys (inotify wd, ...) are in `fdinfo_lines`."""
        if self._fdinfo is None:
            self._fdinfo = {}
            for line in self.fdinfo_lines:
                key, _, value = line.partition(":")
                self._fdinfo.setdefault(key.strip(), value.strip())
        return self._fdinfo

    @property
    def fdinfo_lines(self) -> list[str]:
        if self._fdinfo_lines is None:
            text = self._fdinfo_text
            if text is None:
                text = self.process.read_record(f"fdinfo/{self.fd}")
            self._fdinfo_lines = text.splitlines()
        return self._fdinfo_lines

    @property
    def fdinfo_at_hand(self) -> bool:
        """Has its fdinfo been read (by the fd walk, or since)? Asking for it otherwise
        costs a read."""
        return (self._fdinfo is not None or self._fdinfo_lines is not None
                or self._fdinfo_text is not None)

    @property
    def flags(self) -> int:
        if self._flags is None:
            self._flags = int(self.fdinfo.get("flags", "0"), 8)
        return self._flags

    @property
    def mnt_id(self) -> int:
        """The id of the mount the fd's file was opened through (fdinfo's mnt_id)."""
        if self._mnt_id is None:
            if self.fdinfo_at_hand:
                self._mnt_id = int(self.fdinfo.get("mnt_id", "-1"))  # already read: free
            else:
                try:
                    self._mnt_id = self.process.mnt_id(f"fd/{self.fd}")
                except MntIdUnavailable:
                    self._mnt_id = int(self.fdinfo.get("mnt_id", "-1"))
        return self._mnt_id


# ---------------------------------------------------------------- mount ids

class MntIdUnavailable(Exception):
    """statx(2) cannot tell mount ids on this kernel (before Linux 5.8)."""


AT_FDCWD = -100
STATX_MNT_ID = 0x1000


class _Statx(ctypes.Structure):
    # struct statx up to stx_mnt_id, padded to its full 256 bytes (linux/stat.h).
    _fields_ = [("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32),
                ("attributes", ctypes.c_uint64), ("nlink", ctypes.c_uint32),
                ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32), ("mode", ctypes.c_uint16),
                ("_pad", ctypes.c_uint16), ("ino", ctypes.c_uint64), ("size", ctypes.c_uint64),
                ("blocks", ctypes.c_uint64), ("attributes_mask", ctypes.c_uint64),
                ("times", ctypes.c_uint8 * 64), ("rdev_major", ctypes.c_uint32),
                ("rdev_minor", ctypes.c_uint32), ("dev_major", ctypes.c_uint32),
                ("dev_minor", ctypes.c_uint32), ("mnt_id", ctypes.c_uint64),
                ("_rest", ctypes.c_uint8 * 112)]


# No argtypes: the arguments are passed as ctypes takes them, with nothing to convert.
_statx = ctypes.CDLL(None, use_errno=True).statx
_statx_buffers = threading.local()  # one a thread: audits run in several threads of the service


def mnt_id_of(path: str) -> int:
    """The id of the mount that `path` leads to, magic links followed (statx STATX_MNT_ID).

    For /proc/PID/fd/N, map_files, cwd, root and exe this is the mount the
    file was opened through, the mnt_id CRIU reads from fdinfo: one syscall
    instead of an open, a read and a close. Raises OSError as os.stat does.
    """
    buffer = getattr(_statx_buffers, "buffer", None)
    if buffer is None:
        buffer = _statx_buffers.buffer = _Statx()
        _statx_buffers.pointer = ctypes.byref(buffer)
    if _statx(AT_FDCWD, path.encode("utf-8", "surrogateescape"), 0, STATX_MNT_ID,
              _statx_buffers.pointer) != 0:
        number = ctypes.get_errno()
        if number == errno.ENOSYS:
            raise MntIdUnavailable(path)
        raise OSError(number, os.strerror(number), path)
    if not buffer.mask & STATX_MNT_ID:
        raise MntIdUnavailable(path)
    return buffer.mnt_id


def mnt_id_via_fdinfo(path: str) -> int:
    """mnt_id of what `path` leads to, from fdinfo of an O_PATH open (kernels before 5.8)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        with open(f"/proc/self/fdinfo/{fd}") as fdinfo:
            for line in fdinfo:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
        return -1
    finally:
        os.close(fd)


class Mapping(NamedTuple):
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    major: int
    minor: int
    inode: int
    path: str

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def deleted(self) -> bool:
        return self.path.endswith(" (deleted)")

    @property
    def address(self) -> str:
        return f"{self.start:x}-{self.end:x}"


def parse_maps(text: str) -> list[Mapping]:
    mappings = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        start, _, end = parts[0].partition("-")
        major, _, minor = parts[3].partition(":")
        mappings.append(Mapping(
            start=int(start, 16), end=int(end, 16), perms=parts[1], offset=int(parts[2], 16),
            major=int(major, 16), minor=int(minor, 16), inode=int(parts[4]),
            path=parts[5] if len(parts) > 5 else "",
        ))
    return mappings


class Proc:
    """One process under a /proc root (a parameter, so tests can use fixture trees)."""

    def __init__(self, pid: int, proc_root: Path = DEFAULT_PROC_ROOT):
        self.pid = pid
        self.proc_root = proc_root
        # string paths: pathlib joins cost more than the syscalls (the tracker makes a
        # Proc per event), so the Path is made only when asked for
        self._prefix = f"{proc_root}/{pid}/"

    @cached_property
    def path(self) -> Path:
        return self.proc_root / str(self.pid)

    def __repr__(self) -> str:
        return f"Proc({self.pid})"

    def read(self, name: str) -> str:
        return self._read(name, whole_when_short=False)

    def read_record(self, name: str) -> str:
        """A file the kernel makes whole before the first read (single_open, as fdinfo): a
        read() shorter than asked holds all of it, so one read() does where `read` takes two."""
        return self._read(name, whole_when_short=True)

    def _read(self, name: str, whole_when_short: bool) -> str:
        # os.open/os.read: a third of the cost of open() on these small files
        try:
            fd = os.open(self._prefix + name, os.O_RDONLY | os.O_CLOEXEC)
            try:
                chunks = []
                while chunk := os.read(fd, RECORD_READ_SIZE):
                    chunks.append(chunk)
                    if whole_when_short and len(chunk) < RECORD_READ_SIZE:
                        break
            finally:
                os.close(fd)
        except OSError as error:
            raise _translate(self.pid, name, error) from None
        return b"".join(chunks).decode("utf-8", "surrogateescape")

    def readlink(self, name: str) -> str:
        """The link's text; NAME_TOO_LONG when its path does not fit in PATH_MAX."""
        try:
            return os.readlink(self._prefix + name)
        except OSError as error:
            if error.errno == errno.ENAMETOOLONG:
                return NAME_TOO_LONG
            raise _translate(self.pid, name, error) from None

    def stat_link(self, link: str) -> os.stat_result:
        """stat(2) of what a magic link (cwd, root, exe, map_files/RANGE) leads to."""
        try:
            return os.stat(self._prefix + link)
        except OSError as error:
            raise _translate(self.pid, link, error) from None

    def stat_fd(self, fd: int) -> os.stat_result:
        try:
            return os.stat(f"{self._prefix}fd/{fd}")
        except OSError as error:
            raise _translate(self.pid, f"fd/{fd}", error) from None

    def mnt_id(self, link: str) -> int:
        """The mount id of what the magic link `link` (fd/N, cwd, root, exe, map_files/RANGE) leads to."""
        path = self._prefix + link
        try:
            try:
                return mnt_id_of(path)
            except MntIdUnavailable:
                if link.startswith("fd/"):
                    raise  # the caller reads the fd's own fdinfo
                return mnt_id_via_fdinfo(path)
        except OSError as error:
            raise _translate(self.pid, link, error) from None

    @cached_property
    def stat(self) -> Stat:
        return parse_stat(self.read("stat"))

    @cached_property
    def status(self) -> dict[str, str]:
        fields = {}
        for line in self.read("status").splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return fields

    @cached_property
    def exe(self) -> str:
        try:
            return self.readlink("exe")
        except (ProcessGone, AccessDenied):
            return ""

    def fds(self) -> list[OpenFd]:
        """Every open fd, by number; an fd closed while we read is skipped. The compiled walk
        (_crwatch_fdwalk, when built) reads each fd's fdinfo in the same call as its link."""
        if compiled_walk is None:
            return self.fds_walked_in_python()
        try:
            walked = compiled_walk.read_fds(self._prefix + "fd", self._prefix + "fdinfo")
        except OSError as error:
            raise _translate(self.pid, error.filename or "fd", error) from None
        return [OpenFd(self, fd, NAME_TOO_LONG if target is None else target,
                       known_fdinfo_text=fdinfo, known_fdinfo=fields)
                for fd, target, fdinfo, fields in walked]

    def fds_walked_in_python(self) -> list[OpenFd]:
        """fds() without the compiled walk: each fdinfo is read when first asked for."""
        fd_dir = self._prefix + "fd/"
        try:
            names = os.listdir(fd_dir)
        except OSError as error:
            raise _translate(self.pid, "fd", error) from None
        fds = []
        for name in names:
            try:
                target = os.readlink(fd_dir + name)
            except FileNotFoundError:
                continue
            except OSError as error:
                if error.errno != errno.ENAMETOOLONG:
                    raise _translate(self.pid, f"fd/{name}", error) from None
                target = NAME_TOO_LONG
            fds.append(OpenFd(self, int(name), target))
        fds.sort(key=lambda open_fd: open_fd.fd)
        return fds

    @cached_property
    def maps(self) -> list[Mapping]:
        return parse_maps(self.read("maps"))

    @cached_property
    def smaps_flags(self) -> dict[int, set[str]]:
        """VmFlags of each mapping by its start address (for io/pfnmap mappings)."""
        flags, start = {}, 0
        for line in self.read("smaps").splitlines():
            if line.startswith("VmFlags:"):
                flags[start] = set(line.split()[1:])
            else:
                head = line.split(" ", 1)[0]
                if "-" in head and not head.endswith(":"):  # a mapping's header line
                    start = int(head.partition("-")[0], 16)
        return flags

    def tids(self) -> list[int]:
        try:
            return sorted(int(tid) for tid in os.listdir(self.path / "task"))
        except OSError as error:
            raise _translate(self.pid, "task", error) from None

    def task(self, tid: int) -> "Proc":
        """A thread, read through /proc/PID/task as its own Proc."""
        return Proc(tid, self.path / "task")

    def children(self) -> list[int]:
        """Direct children of every thread (/proc/PID/task/TID/children). When this Proc has
        read its stat already and it counts one thread, that thread is the process's own
        (a leader that exited still counts among them): its tasks are not listed."""
        if "stat" in self.__dict__ and self.stat.num_threads == 1:  # read already: no read now
            # the process's own list: gone, it raises ProcessGone as tids() would
            return [int(pid) for pid in self.read(f"task/{self.pid}/children").split()]
        kids: list[int] = []
        for tid in self.tids():
            try:
                text = self.read(f"task/{tid}/children")
            except ProcessGone:
                continue
            kids.extend(int(pid) for pid in text.split())
        return kids

    def namespace(self, kind: str) -> str:
        return self.readlink(f"ns/{kind}")
