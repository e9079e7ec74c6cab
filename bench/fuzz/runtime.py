"""What generators use inside a subject process: raw syscalls, the process's
build context (kept objects, hooks for its children and parent, helpers kept
outside the tree), scratch paths and mounts."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from pathlib import Path
from typing import Callable

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
MAP_FAILED = ctypes.c_void_p(-1).value

CLONE = {"mnt": 0x00020000, "cgroup": 0x02000000, "uts": 0x04000000, "ipc": 0x08000000,
         "user": 0x10000000, "pid": 0x20000000, "net": 0x40000000, "time": 0x00000080}


def check(result: int, what: str = "") -> int:
    """A libc result, or the OSError its errno names."""
    if result is None or result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}" if what else os.strerror(error))
    return result


def syscall(number: int, *args) -> int:
    return check(libc.syscall(number, *args), f"syscall {number}")


def map_memory(fd: int, size: int, flags: int, prot: int = 3, offset: int = 0) -> int:
    """libc mmap (Python's mmap keeps a duplicate fd, which would be judged too)."""
    address = libc.mmap(None, size, prot, flags, fd, offset)
    if address in (None, MAP_FAILED):
        error = ctypes.get_errno()
        raise OSError(error, f"mmap: {os.strerror(error)}")
    return address


def unshare(flags: int) -> None:
    check(libc.unshare(flags), f"unshare({flags:#x})")


def hold() -> None:
    """Wait for good (until the fuzzer kills the tree)."""
    while True:
        signal.pause()


def host_pid() -> int:
    """This process's pid as /proc (and the fuzzer) know it, also from inside a nested pid
    namespace, where os.getpid() says another number."""
    return int(os.readlink("/proc/self"))


def host_pid_of(child: int) -> int:
    """The /proc pid of a child this process knows as `child` (its number in this process's
    pid namespace for children, which may not be the one /proc shows)."""
    with open("/proc/self/status") as status:
        depth = len(next(line for line in status if line.startswith("NSpid:")).split()) - 2
    if depth == 0:
        return child
    me = host_pid()
    for task in os.listdir(f"/proc/{me}/task"):
        with open(f"/proc/{me}/task/{task}/children") as children:
            for pid in children.read().split():
                with open(f"/proc/{pid}/status") as status:
                    nspid = next(line for line in status if line.startswith("NSpid:")).split()[1:]
                if len(nspid) > depth and int(nspid[depth]) == child:
                    return int(pid)
    raise OSError(0, f"pid {child} is no child of this process")


def state_of(pid: int) -> str:
    """The state letter of a child (or, from the fuzzer, the root) this process knows as `pid`."""
    with open(f"/proc/{host_pid_of(pid)}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0]


def thread_states(pid: int) -> set[str]:
    """The state letters of every thread of that process."""
    task = f"/proc/{host_pid_of(pid)}/task"
    states = set()
    for tid in os.listdir(task):
        try:
            with open(f"{task}/{tid}/stat") as stat:
                states.add(stat.read().rpartition(")")[2].split()[0])
        except FileNotFoundError:
            continue   # a thread that ended meanwhile
    return states


class Context:
    """One process's build: what it keeps, what its children and parent must do."""

    def __init__(self, index: int, scratch: Path, report_fd: int):
        self.index = index
        self.scratch = scratch
        self.report_fd = report_fd
        self.kept: list = []
        self.in_children: list[Callable[[], None]] = []     # run in each child right after fork
        self.after_children: list[Callable[[list[int]], None]] = []  # in this process, given the children
        self.others: list[int] = []      # helper processes outside the tree (the fuzzer kills them)
        self.sysv: list[tuple[str, int, int]] = []   # (kind, id, ipc ns inode) to remove afterwards
        self.shared_fds: set[int] = set()  # fds a child keeps even when it inherits nothing
        self.child_number = 0            # in a child: how many siblings were forked before it
        self._names = 0

    def keep(self, *objects):
        self.kept.extend(objects)
        return objects[0] if len(objects) == 1 else objects

    def path(self, name: str) -> str:
        """A fresh path in the composition's scratch directory."""
        self._names += 1
        return str(self.scratch / f"p{self.index}-{self._names}-{name}")

    def directory(self, name: str) -> str:
        path = self.path(name)
        os.mkdir(path)
        return path

    def mount(self, fstype: str, name: str = "mnt", *, source: str | None = None,
              options: str = "") -> str:
        """A new mount (tmpfs, ramfs, a bind of `source`...) on a fresh scratch directory."""
        target = self.directory(name)
        command = ["mount", *(["--bind", source] if fstype == "bind" else
                              ["-t", fstype, f"crwatch-fuzz-{fstype}"])]
        command += ["-o", options] if options else []
        subprocess.run([*command, target], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return target

    def outside(self, *fds: int, setup: Callable[[], None] | None = None) -> int:
        """A helper process outside the dumped tree (a grandchild whose parent has
        exited) that keeps exactly `fds` open, runs `setup`, and holds."""
        read_end, write_end = os.pipe()
        if os.fork() == 0:
            if os.fork() == 0:
                keep = {*fds, write_end}
                for name in os.listdir("/proc/self/fd"):
                    if int(name) > 2 and int(name) not in keep:
                        _close_quietly(int(name))
                if setup is not None:
                    setup()
                os.write(write_end, str(host_pid()).encode())
                os.close(write_end)
                hold()
            os._exit(0)
        os.wait()
        os.close(write_end)
        pid = int(os.read(read_end, 32) or b"0")
        os.close(read_end)
        if not pid:
            raise OSError(0, "the helper outside the tree failed")
        self.others.append(pid)
        return pid

    def fork(self) -> int:
        """os.fork() for a process a generator adds to the tree: the child closes the
        report pipe, so that only the process itself can say it is built."""
        pid = os.fork()
        if pid == 0:
            _close_quietly(self.report_fd)
        return pid

    def ipc_namespace(self) -> int:
        return os.stat("/proc/self/ns/ipc").st_ino


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def close_inherited(keep: set[int]) -> None:
    """Close every fd above stderr except `keep` (a child that inherits nothing)."""
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2 and int(name) not in keep:
            _close_quietly(int(name))
