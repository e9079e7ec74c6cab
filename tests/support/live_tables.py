"""What the live table's tests feed it: probe events made by hand, and a kernel side that
records what the table asks of it."""
from __future__ import annotations

import os
import time

from probes.events import FLAGS_SHIFT, KERNEL_MINOR_BITS, Event, Kind, Special


class RecordingKernel:
    """Stands in for the probes' in-kernel maps: records what the table asks of them."""

    def __init__(self):
        self.calls: list[tuple] = []

    def track_fd(self, tgid: int, fd: int) -> None:
        self.calls.append(("track_fd", tgid, fd))

    def untrack_fd(self, tgid: int, fd: int, judged_ns: int | None = None) -> None:
        self.calls.append(("untrack_fd", tgid, fd))

    def mark_lock_holder(self, tgid: int) -> None:
        self.calls.append(("mark_lock_holder", tgid))

    def mark_memory(self, tgid: int) -> None:
        self.calls.append(("mark_memory", tgid))

    def watch(self, pid: int) -> None:
        self.calls.append(("watch", pid))

    def forget(self, tgid: int) -> None:
        self.calls.append(("forget", tgid))

    def locks_read(self, tgid: int) -> None:
        self.calls.append(("locks_read", tgid))


def event(kind: Kind, pid: int, ts_ns: int | None = None, **fields) -> Event:
    fields.setdefault("tid", pid)
    ts_ns = time.monotonic_ns() if ts_ns is None else ts_ns
    return Event(kind, ts_ns, pid, comm="python", **fields)


def opened(pid: int, fd: int, path: str = "/dev/kvm", ts_ns: int | None = None) -> Event:
    return event(Kind.FD_OPENED, pid, ts_ns, fd=fd, special=Special.DEVICE, path=path)


def opened_with_inode(pid: int, fd: int, path: str = "/dev/kvm", ts_ns: int | None = None,
                      flags: int = os.O_RDONLY) -> Event:
    """A device open as the kernel side reports it when it read the new fd's inode."""
    status = os.stat(path)
    return event(Kind.FD_OPENED, pid, ts_ns, fd=fd, special=Special.DEVICE, path=path,
                 arg=os.major(status.st_rdev) << KERNEL_MINOR_BITS | os.minor(status.st_rdev),
                 arg2=flags << FLAGS_SHIFT | status.st_mode)
