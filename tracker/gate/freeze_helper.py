"""The freezer: a small process of its own that holds a process tree still for the gate.

It runs apart from crwatch (`python -I -S freeze_helper.py ...`, standard library
only, so it starts in milliseconds) so that nothing crwatch does or suffers can
strand the tree:

- ptrace: the helper is the tracer. When it exits, however it exits, the kernel
  detaches its tracees and they run on; it never sends SIGSTOP.
- cgroup: the helper thaws the cgroup when told to, when its deadline passes, or
  when crwatch dies (its command pipe reaches end of file). If the helper itself is
  killed, crwatch, which watches it, thaws the cgroup (freeze_guard.py).

Usage: freeze_helper.py ptrace PID TREE(0|1) DEADLINE_S FREEZE_TIMEOUT_S
       freeze_helper.py cgroup DIR - DEADLINE_S FREEZE_TIMEOUT_S
       freeze_helper.py    (started ahead: those five arguments come as the first line
                            on stdin, each hex-encoded, ready_helper.py; it exits at end
                            of file before them, holding nothing)

Commands arrive one per line on stdin: `thaw`, or `handoff PID` (CRIU now holds
the frozen cgroup: the deadline no longer applies, and if crwatch dies the cgroup
is thawed only once PID has exited, since CRIU freezes it again when it ends).
Reports leave one JSON object per line on stdout: `frozen` once, then `thawed`.

Its start is on the gate's critical path (freeze, recheck, verdict), so it imports
what costs little: `_signal` rather than signal.py (whose enum import costs 3 ms), the
C cores `posix` and `_ctypes` rather than os.py and ctypes (which import 3 ms more,
for one libc call), and it writes its few kinds of JSON values itself rather than
importing json. The gate starts it from its cached bytecode (standalone.py).
"""
from __future__ import annotations

import _ctypes
import _signal
import errno
import posix
import select
import sys
import time

PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 17, 0x4206, 0x4207
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: wait for threads (clone children) too


# What ctypes.CDLL(None, use_errno=True).ptrace builds once its argtypes and restype are
# set, made of _ctypes directly: a C long, a void pointer, libc, and the call.
class _Long(_ctypes._SimpleCData):
    _type_ = "l"


class _Pointer(_ctypes._SimpleCData):
    _type_ = "P"


class _Libc:
    _handle = _ctypes.dlopen(None, posix.RTLD_LOCAL | posix.RTLD_NOW)


class _LibcCall(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Long
    _argtypes_ = (_Long, _Long, _Pointer, _Pointer)


_ptrace = _LibcCall(("ptrace", _Libc))


def ptrace(request: int, tid: int, data: int = 0) -> None:
    if _ptrace(request, tid, None, data) == -1:
        code = _ctypes.get_errno()
        raise OSError(code, posix.strerror(code))


def _ids(path: str) -> list[int]:
    try:
        return sorted(int(name) for name in posix.listdir(path) if name.isdigit())
    except OSError:
        return []


def _state(tid: int) -> str:
    try:
        # the name in it may be any bytes (prctl PR_SET_NAME): decoded as procfs decodes
        with open(f"/proc/{tid}/stat", errors="surrogateescape") as stat:
            return stat.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "X"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for tid in _ids(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as children:
                found += [int(kid) for kid in children.read().split()]
        except OSError:
            continue
    return found


class PtraceHold:
    """PTRACE_SEIZE + PTRACE_INTERRUPT of every thread of every process, root first.

    A process's threads are seized until a listing finds no new one (a thread
    not yet stopped may still create threads); its children are listed only once
    all its threads are stopped, when no new one can appear.
    """

    method = "ptrace"

    def __init__(self, root: int, tree: bool):
        self.root, self.tree = root, tree
        self.stopped: dict[int, int] = {}     # tid: signal to give back at detach (0: none)
        self.pending: set[int] = set()        # seized, not stopped yet
        self.failed: dict[int, str] = {}      # tid: why it could not be frozen
        self.states: dict[int, str] = {}      # tid: its state before the hold (ptrace shows "t")
        self.stop_signals: dict[int, int] = {}  # tid: the signal of the group stop it was in
        self.pids: list[int] = []

    def freeze(self, deadline: float) -> None:
        queue = [self.root]
        while queue and time.monotonic() < deadline:
            pid = queue.pop(0)
            if pid in self.pids:
                continue
            self.pids.append(pid)
            self._freeze_threads(pid, deadline)
            if self.tree:
                queue += [kid for kid in _children(pid) if kid not in self.pids]
        for tid in self.pending:
            self.failed[tid] = ("did not stop in time (an uninterruptible wait, such as a "
                                "vfork parent waiting for its child)")

    def _freeze_threads(self, pid: int, deadline: float) -> None:
        while True:
            new = [tid for tid in _ids(f"/proc/{pid}/task")
                   if tid not in self.stopped and tid not in self.pending
                   and tid not in self.failed]
            self.states.update({tid: _state(tid) for tid in new})
            new = [tid for tid in new if self.states[tid] not in "ZX"]  # the dead are still
            if not new:
                return
            for tid in new:
                try:
                    ptrace(PTRACE_SEIZE, tid)
                    ptrace(PTRACE_INTERRUPT, tid)
                    self.pending.add(tid)
                except OSError as error:
                    if error.errno != errno.ESRCH:  # gone: nothing to freeze
                        self.failed[tid] = _seize_refusal(tid, error)
            self._await_stops(deadline)
            if self.pending:
                return

    def _await_stops(self, deadline: float) -> None:
        pause = 0.0001
        while self.pending and time.monotonic() < deadline:
            progressed = False
            for tid in list(self.pending):
                try:
                    waited, status = posix.waitpid(tid, posix.WNOHANG | WALL)
                except ChildProcessError:
                    self.pending.discard(tid)  # exited meanwhile
                    continue
                if waited == 0:
                    continue
                progressed = True
                self.pending.discard(tid)
                if posix.WIFSTOPPED(status):
                    event, signo = status >> 16, posix.WSTOPSIG(status)
                    # A signal-delivery stop holds the signal: give it back at detach.
                    self.stopped[tid] = 0 if event == PTRACE_EVENT_STOP else signo
                    if event == PTRACE_EVENT_STOP and signo != _signal.SIGTRAP:
                        self.stop_signals[tid] = signo  # it was in a group stop already
            if not progressed:
                time.sleep(pause)
                pause = min(pause * 2, 0.002)

    def thaw(self) -> None:
        for tid, signo in self.stopped.items():
            try:
                ptrace(PTRACE_DETACH, tid, signo)
            except OSError:
                pass  # exited while stopped (SIGKILL): nothing to resume
        # Seized tasks that never stopped are detached by the kernel when this process exits.

    def report(self) -> dict:
        return {"method": self.method, "cgroup": None, "pids": self.pids,
                "tasks": len(self.stopped), "states": self.states,
                "stop_signals": self.stop_signals,
                "unfrozen": [{"tid": tid, "why": why} for tid, why in sorted(self.failed.items())]}


def _seize_refusal(tid: int, error: OSError) -> str:
    try:
        # its Name: line may be any bytes
        with open(f"/proc/{tid}/status", errors="surrogateescape") as status:
            tracer = next((line.split()[1] for line in status if line.startswith("TracerPid:")), "0")
    except OSError:
        tracer = "0"
    if tracer != "0":
        return f"already traced by pid {tracer}"
    return f"PTRACE_SEIZE refused: {error.strerror}"


class CgroupHold:
    """The cgroup v2 freezer: write 1 to cgroup.freeze, await `frozen 1` in cgroup.events."""

    method = "cgroup"

    def __init__(self, directory: str):
        self.directory = directory
        self.already_frozen = False
        self.frozen = False
        self.failure: str | None = None

    def _read(self, name: str) -> str:
        with open(f"{self.directory}/{name}") as control:
            return control.read()

    def _write_freeze(self, value: str) -> None:
        with open(f"{self.directory}/cgroup.freeze", "w") as control:
            control.write(value)

    def freeze(self, deadline: float) -> None:
        self.already_frozen = self._read("cgroup.freeze").strip() == "1"
        if not self.already_frozen:
            self._write_freeze("1")
        # cgroup.events changes raise POLLPRI on an open descriptor of it.
        events = posix.open(f"{self.directory}/cgroup.events", posix.O_RDONLY)
        try:
            poller = select.poll()
            poller.register(events, select.POLLPRI | select.POLLERR)
            while True:
                posix.lseek(events, 0, 0)  # SEEK_SET
                if "frozen 1" in posix.read(events, 4096).decode():
                    self.frozen = True
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    self.failure = ("the cgroup did not freeze in time (a task in an "
                                    "uninterruptible wait, such as a vfork parent)")
                    return
                poller.poll(left * 1000)
        finally:
            posix.close(events)

    def thaw(self) -> None:
        if not self.already_frozen:
            self._write_freeze("0")

    def report(self) -> dict:
        unfrozen = [{"tid": None, "why": self.failure}] if self.failure else []
        return {"method": self.method, "cgroup": self.directory, "pids": _ids_in(self.directory),
                "tasks": sum(len(_lines(f"{path}/cgroup.threads"))
                             for path in _subtree(self.directory)) if self.frozen else 0,
                "already_frozen": self.already_frozen, "unfrozen": unfrozen}


def _subtree(directory: str) -> list[str]:
    """The cgroup's directory and every one below it (what os.walk lists)."""
    found = [directory]
    try:
        with posix.scandir(directory) as entries:
            below = [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return found
    for path in below:
        found += _subtree(path)
    return found


def _lines(path: str) -> list[str]:
    try:
        with open(path) as listing:
            return listing.read().split()
    except OSError:
        return []


def _ids_in(directory: str) -> list[int]:
    return sorted(int(pid) for path in _subtree(directory)
                  for pid in _lines(f"{path}/cgroup.procs"))


def json_text(value: object) -> str:
    """A report as JSON: dicts (keys as strings), lists, strings, numbers, booleans, None."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # durations and ids: never inf or nan
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_json_string(str(key))}: {json_text(item)}"
                               for key, item in value.items()) + "}"
    return "[" + ", ".join(json_text(item) for item in value) + "]"


def _json_string(text: str) -> str:
    """ASCII, as json.dumps writes it: a path or an error may hold any character, a byte
    that is no UTF-8 too (a surrogate escape), each written as UTF-16 \\u escapes."""
    return '"' + "".join(char if " " <= char <= "~" and char not in '"\\' else _escape(char)
                         for char in text) + '"'


def _escape(char: str) -> str:
    units = char.encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{units[at] << 8 | units[at + 1]:04x}" for at in range(0, len(units), 2))


def _emit(report: dict) -> None:
    try:
        sys.stdout.write(json_text(report) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        pass  # crwatch is gone; the hold still ends as it must


def _await_exit(pid: int) -> None:
    try:
        handle = posix.pidfd_open(pid)
    except OSError:
        return  # already gone
    try:
        select.select([handle], [], [])
    finally:
        posix.close(handle)


def hold(mode: str, target: str, tree: bool, deadline_s: float, freeze_timeout_s: float) -> None:
    hold = CgroupHold(target) if mode == "cgroup" else PtraceHold(int(target), tree)
    started = time.monotonic()
    try:
        hold.freeze(started + freeze_timeout_s)
    except OSError as error:
        hold.thaw()
        _emit({"event": "frozen", "error": f"{error.strerror}: {error.filename or ''}".strip()})
        return
    frozen_at = time.monotonic()
    _emit({"event": "frozen", "freeze_ms": (frozen_at - started) * 1e3, **hold.report()})

    expires, handoff, expired = frozen_at + deadline_s, None, False
    commands = sys.stdin.buffer
    while True:
        timeout = None if handoff else max(0.0, expires - time.monotonic())
        if not select.select([commands], [], [], timeout)[0]:
            expired = True
            break
        line = commands.readline().decode().strip()
        if not line:  # crwatch is gone
            if handoff:
                _await_exit(handoff)
            break
        if line == "thaw":
            break
        if line.startswith("handoff "):
            handoff = int(line.split()[1])
    hold.thaw()
    _emit({"event": "thawed", "frozen_ms": (time.monotonic() - frozen_at) * 1e3,
           "expired": expired})


def main(argv: list[str]) -> int:
    # Terminal signals meant for crwatch must not end the holder before it thaws.
    for signo in (_signal.SIGINT, _signal.SIGQUIT, _signal.SIGHUP, _signal.SIGPIPE):
        _signal.signal(signo, _signal.SIG_IGN)
    if not argv:  # started ahead: what to freeze comes when a gate takes it
        line = sys.stdin.buffer.readline()
        if not line:
            return 0  # its owner ended first
        argv = [bytes.fromhex(word.decode()).decode("utf-8", "surrogateescape")
                for word in line.split()]
    mode, target, tree, deadline_s, freeze_timeout_s = argv
    hold(mode, target, tree == "1", float(deadline_s), float(freeze_timeout_s))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
