"""A subject of the differential test (tests/live/test_differential.py): one process that
changes its own state on command.

It reads one JSON command per message from its channel (a SOCK_SEQPACKET unix
socket whose fd number is argv[1]), acts, and answers with the fds and SysV
shm attachments it holds afterwards. It never acts on its own between
commands, so once it has answered, its state stays as it is until the next
command. `fork` hands the test the channel of the child (SCM_RIGHTS), which
then obeys commands of its own; `exec` re-runs this program with the fds it
was told to keep; `exit` ends the process (reaped at once: SIGCHLD is ignored).
PI futexes are taken and released with the futex syscall itself (an
uncontended lock in user space would make no syscall for the probes to see).
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import time

MESSAGE_BYTES = 65536
PERF_EVENT_OPEN, USERFAULTFD, CLOSE_RANGE, FUTEX, GETTID = 298, 323, 436, 202, 186
FUTEX_LOCK_PI, FUTEX_UNLOCK_PI, FUTEX_PRIVATE_FLAG, FUTEX_TID_MASK = 6, 7, 128, 0x3FFFFFFF
PI_FUTEXES = 4
# a software CPU-clock counter on this process, close-on-exec
PERF_ATTR = struct.pack("IIQ", 1, 128, 0).ljust(128, b"\0")
PERF_FLAG_FD_CLOEXEC = 8
IPC_PRIVATE, IPC_CREAT, IPC_RMID = 0, 0o1000, 0

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]


def checked(result: int, what: str) -> int:
    if result < 0:
        raise OSError(ctypes.get_errno(), what)
    return result


class Subject:
    def __init__(self, channel: socket.socket, lock_dir: str, tcp_port: int):
        self.channel = channel
        self.lock_dir = lock_dir
        self.tcp_port = tcp_port
        self.pi_words = (ctypes.c_uint32 * PI_FUTEXES)()

    # ------------------------------------------------------------ what it holds

    def fds(self, passing: list[int]) -> dict[int, str]:
        """Every fd but stdio, the channel and those being passed, with what it names."""
        held = {}
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd != self.channel.fileno() and fd not in passing:
                try:
                    held[fd] = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    continue  # the fd of the listing itself
        return held

    @staticmethod
    def shm_addresses() -> list[int]:
        with open("/proc/self/maps") as maps:
            return [int(line.split("-")[0], 16) for line in maps if "/SYSV" in line]

    def pi_address(self, index: int) -> int:
        return ctypes.addressof(self.pi_words) + index * ctypes.sizeof(ctypes.c_uint32)

    def pi_held(self) -> dict[int, int]:
        """index: address of each PI futex this thread owns."""
        tid = libc.syscall(GETTID)
        return {index: self.pi_address(index) for index in range(PI_FUTEXES)
                if self.pi_words[index] & FUTEX_TID_MASK == tid}

    def answer(self, extra: dict | None = None, passing: list[int] = ()) -> None:
        report = {"pid": os.getpid(), "channel": self.channel.fileno(), "fds": self.fds(passing),
                  "shm": self.shm_addresses(), "pi": self.pi_held(), **(extra or {})}
        socket.send_fds(self.channel, [json.dumps(report).encode()], list(passing))

    # ------------------------------------------------------------ commands

    def serve(self) -> None:
        while True:
            message = self.channel.recv(MESSAGE_BYTES)
            if not message:
                os._exit(0)  # the test is gone
            command = json.loads(message)
            try:
                self.run(command)
            except OSError as error:
                self.answer({"error": f"{command['op']}: {error}"})

    def run(self, command: dict) -> None:
        op = command["op"]
        if op == "fork":
            self.fork()
            return
        if op == "exec":
            self.exec(command["keep"])
        if op == "exit":
            self.answer()
            os._exit(0)
        getattr(self, f"op_{op}")(command)
        self.answer()

    def op_open(self, command: dict) -> None:
        kind = command["kind"]
        if kind in ("/dev/kvm", "/dev/null"):
            os.open(kind, os.O_RDONLY)
        elif kind == "perf_event":
            checked(libc.syscall(PERF_EVENT_OPEN, ctypes.create_string_buffer(PERF_ATTR, 128),
                                 0, -1, -1, PERF_FLAG_FD_CLOEXEC), "perf_event_open")
        elif kind == "userfaultfd":
            checked(libc.syscall(USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK), "userfaultfd")
        elif kind == "tcp":
            socket.create_connection(("127.0.0.1", self.tcp_port)).detach()
        else:
            raise ValueError(kind)

    @staticmethod
    def op_open_relative(command: dict) -> None:
        """/dev/kvm opened as "kvm" relative to an fd of /dev (a documented limit)."""
        directory = os.open("/dev", os.O_RDONLY | os.O_DIRECTORY)
        os.open("kvm", os.O_RDONLY, dir_fd=directory)
        os.close(directory)

    @staticmethod
    def op_pass_to_self(command: dict) -> None:
        """/dev/kvm opened, sent through a unix socket, received, then the original closed
        (fd passing, a documented limit)."""
        sender, receiver = socket.socketpair()
        opened = os.open("/dev/kvm", os.O_RDONLY)
        socket.send_fds(sender, [b"fd"], [opened])
        socket.recv_fds(receiver, 2, 1)
        for fd in (opened, sender.detach(), receiver.detach()):
            os.close(fd)

    def op_dup(self, command: dict) -> None:
        os.dup(command["fd"])  # fcntl(F_DUPFD_CLOEXEC)

    def op_dup2(self, command: dict) -> None:
        os.dup2(command["fd"], command["to"], inheritable=False)  # dup3(O_CLOEXEC)

    def op_close(self, command: dict) -> None:
        os.close(command["fd"])

    def op_close_range(self, command: dict) -> None:
        checked(libc.syscall(CLOSE_RANGE, command["low"], command["high"], 0), "close_range")

    def op_lock(self, command: dict) -> None:
        # a new file for each lock: no other process shares it but by inheritance
        path = os.path.join(self.lock_dir, f"{os.getpid()}-{time.monotonic_ns()}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.lock_fd(fd, command["kind"], True)

    def op_relock(self, command: dict) -> None:
        self.lock_fd(command["fd"], command["kind"], True)

    def op_unlock(self, command: dict) -> None:
        self.lock_fd(command["fd"], command["kind"], False)

    @staticmethod
    def lock_fd(fd: int, kind: str, take: bool) -> None:
        if kind == "flock":
            fcntl.flock(fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if take else fcntl.LOCK_UN)
        else:
            fcntl.lockf(fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if take else fcntl.LOCK_UN)

    def pi_call(self, operation: int, index: int, what: str) -> None:
        checked(libc.syscall(FUTEX, ctypes.c_void_p(self.pi_address(index)),
                             operation | FUTEX_PRIVATE_FLAG, 0, None, None, 0), what)

    def op_pi_lock(self, command: dict) -> None:
        self.pi_call(FUTEX_LOCK_PI, command["index"], "FUTEX_LOCK_PI")

    def op_pi_unlock(self, command: dict) -> None:
        self.pi_call(FUTEX_UNLOCK_PI, command["index"], "FUTEX_UNLOCK_PI")

    def op_shmat(self, command: dict) -> None:
        shmid = checked(libc.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600), "shmget")
        address = libc.shmat(shmid, None, 0)
        libc.shmctl(shmid, IPC_RMID, None)  # removed once the last attachment goes
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "shmat")

    def op_shmdt(self, command: dict) -> None:
        checked(libc.shmdt(ctypes.c_void_p(command["address"])), "shmdt")

    def fork(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        child = os.fork()
        if child == 0:
            # The copies of the futex words name the parent's thread: this one holds none.
            ctypes.memset(self.pi_words, 0, ctypes.sizeof(self.pi_words))
            ours.close()
            self.channel.close()
            self.channel = theirs
            self.answer()
            return
        theirs.close()
        self.answer({"child": child}, passing=[ours.fileno()])
        ours.close()

    def exec(self, keep: list[int]) -> None:
        for fd in keep:
            os.set_inheritable(fd, True)
        os.set_inheritable(self.channel.fileno(), True)
        os.execv(sys.executable, [sys.executable, __file__, str(self.channel.fileno()),
                                  self.lock_dir, str(self.tcp_port)])


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped as they exit
    channel = socket.socket(fileno=int(sys.argv[1]))
    subject = Subject(channel, sys.argv[2], int(sys.argv[3]))
    subject.answer()  # ready (again, after an exec)
    subject.serve()


if __name__ == "__main__":
    main()
