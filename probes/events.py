"""Typed probe events: the contract between the kernel side and the tracker.

Pure Python (no bcc): the decoder in probes/wire.py turns raw records into
these, and tracker/live/ applies them. Probes are filters; they say what
happened to which task, and the tracker decides what it means (classifying
fds with the same check modules the audit uses).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

KERNEL_MINOR_BITS = 20             # the kernel's dev_t: major << 20 | minor
FLAGS_SHIFT = 32              # an FD_OPENED's arg2: the file's flags << 32 | the inode's mode


class Kind(IntEnum):
    # fds the kernel side saw created that may be special; `fd` is the new fd,
    # `special` says which syscall made it, `path` the name for opens; a device open
    # whose inode the kernel side read has its dev_t in `arg`, and the file's flags
    # << 32 | the inode's mode in `arg2` (0: not read)
    FD_OPENED = 1
    FD_CLOSED = 2          # close() of an fd the kernel side tracks (`fd`)
    FD_RANGE_CLOSED = 3    # close_range(`arg`, `arg2`) by a task that has tracked fds
    FD_DUPED = 4           # `fd` is now a copy of tracked fd `arg` (dup*, fcntl F_DUPFD*)
    PI_WAITING = 5         # thread `tid` waits on PI futex at `arg`
    PI_ACQUIRED = 6        # thread `tid` now holds PI futex at `arg`
    PI_NOT_ACQUIRED = 7    # the wait on `arg` ended without the lock
    PI_RELEASED = 8        # thread `tid` released PI futex at `arg`
    NONLINEAR = 9          # remap_file_pages(start=`arg`, size=`arg2`)
    UNMAPPED = 10          # munmap(`arg`, `arg2`) by a task with nonlinear or shm marks
    TRACED = 11            # task `arg` is now traced by `tgid` (attach, seize, traceme)
    UNTRACED = 12          # task `arg` detached by `tgid`
    LOCKS_CHANGED = 13     # flock/fcntl lock call or close by a lock holder: re-read its locks
    NEW_PID_NS = 14        # `arg`: the child created in a new pid ns, or 0 (unshare: future children)
    SHM_ATTACHED = 15      # shmat(shmid=`arg2`) mapped at `arg`
    SHM_DETACHED = 16      # shmdt(`arg`)
    FORKED = 17            # `arg` is a new process (tgid) forked by `tgid`
    EXECED = 18            # `tgid` called exec: close-on-exec fds and mappings are gone
    EXITED = 19            # thread `tid` of `tgid` exited; `arg` is 1 when the whole process did
    TCP_CONNECTED = 20     # `fd` became a TCP connection (connect or accept)
    LOST = 100             # made by the reader: `arg` records lost (kernel or queue)


class Special(IntEnum):
    """Which syscall created an FD_OPENED fd."""

    NONE = 0
    DEVICE = 1      # open*/openat* of a path under /dev
    PERF_EVENT = 2
    IO_URING = 3
    USERFAULTFD = 4
    BPF = 5
    FANOTIFY = 6
    OTHER = 7


class Event(NamedTuple):
    """One probe event; a named tuple, as the reader makes one per record (up to
    hundreds of thousands a second) and a tuple is the cheapest immutable record."""

    kind: Kind
    ts_ns: int          # CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns)
    tgid: int
    tid: int
    comm: str = ""
    fd: int = -1
    arg: int = 0
    arg2: int = 0
    special: Special = Special.NONE
    path: str = ""


@dataclass(frozen=True, slots=True)
class OpenedNode:
    """The inode a device open's record carries: what the kernel side read at the open."""

    mode: int           # st_mode: type and permissions
    major: int
    minor: int
    flags: int          # the open file's flags (O_PATH, O_RDONLY...)


def opened_node(event: Event) -> OpenedNode | None:
    """The inode of a device open's new fd, when the kernel side read it (else None)."""
    mode = event.arg2 & 0xFFFF
    if event.kind is not Kind.FD_OPENED or event.special is not Special.DEVICE or not mode:
        return None
    return OpenedNode(mode, event.arg >> KERNEL_MINOR_BITS,
                      event.arg & ((1 << KERNEL_MINOR_BITS) - 1), event.arg2 >> FLAGS_SHIFT)
