"""Anonymous-inode fds in real processes, judged by crwatch and by the real CRIU."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.support.agreement import assert_agrees
from tests.support.subjects import skip_if_refused, subject

pytestmark = [pytest.mark.criu]

# Raw syscalls for the kinds Python has no wrapper for. A kernel that refuses
# to create one (disabled by sysctl, missing config) is reported by the
# subjects' make() and skipped with its reason.
SYSCALLS = """
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def syscall(*args):
    result = libc.syscall(*args)
    if result < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return result
def check(result):
    if result < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return result
def keep_outside_tree():
    # a grandchild, reparented away from the subject, keeps every file open so
    # far and returns its pid (CRIU dumps descendants: a child would be inside)
    r, w = os.pipe()
    if os.fork() == 0:
        grandchild = os.fork()
        if grandchild == 0:
            os.close(r); os.close(w)
            hold()
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.wait()
    os.close(w)
    pid = int(os.read(r, 32))
    os.close(r)
    return pid
def bpf(command, attr):
    return syscall(321, command, attr, len(attr))
def bpf_map(map_type):
    import struct
    return bpf(0, ctypes.create_string_buffer(struct.pack("IIII", map_type, 4, 4, 4) + bytes(112)))
"""


@dataclass(frozen=True)
class State:
    name: str
    code: str
    expect: str
    codes: frozenset[str] = frozenset()
    criu_error: str | None = None
    tree: bool = False


def ok(name: str, code: str, *codes: str, tree: bool = False) -> State:
    return State(name, code, "ok", frozenset(codes), tree=tree)


def blocked(name: str, code: str, rule: str, criu_error: str, tree: bool = False) -> State:
    return State(name, code, "blocked", frozenset({rule}), criu_error, tree)


# Debian's CRIU is built without libbpf, so it refuses every BPF map.
BPF_MAP_ERROR = "(anon anon_inode:bpf-map)"

STATES = [
    ok("eventfd", "fd = os.eventfd(7)"),
    ok("signalfd", """
mask = ctypes.c_uint64(1 << 9)  # SIGUSR1
fd = syscall(289, -1, ctypes.byref(mask), 8, 0)
"""),
    ok("timerfd", "fd = check(libc.timerfd_create(1, 0))"),
    ok("timerfd on CLOCK_BOOTTIME, armed", """
fd = check(libc.timerfd_create(7, 0))
check(libc.timerfd_settime(fd, 0, (ctypes.c_long * 4)(100, 0, 100, 0), None))
"""),
    blocked("timerfd on CLOCK_REALTIME_ALARM", "fd = make(lambda: check(libc.timerfd_create(8, 0)))",
            "anon.timerfd.clock", "Unknown clock type 8"),
    blocked("timerfd on CLOCK_BOOTTIME_ALARM", "fd = make(lambda: check(libc.timerfd_create(9, 0)))",
            "anon.timerfd.clock", "Unknown clock type 9"),
    ok("epoll watching a pipe", """
import select
r, w = os.pipe(); ep = select.epoll(); ep.register(r)
"""),
    ok("epoll whose watched pipe moved to another fd number", """
import select
r, w = os.pipe(); ep = select.epoll(); ep.register(r)
moved = os.dup(r); os.close(r)
"""),
    blocked("epoll whose watched fd was closed", """
import select
r, w = os.pipe(); ep = select.epoll(); ep.register(r)
keep_outside_tree()
os.close(r)
""", "anon.epoll.escaped_target", "Dump eventpoll"),
    blocked("epoll whose watched fd number now names another pipe", """
import select
r, w = os.pipe(); ep = select.epoll(); ep.register(r)
keep_outside_tree()
r2, w2 = os.pipe(); os.dup2(r2, r)
""", "anon.epoll.escaped_target", "Dump eventpoll"),
    blocked("epoll whose watched pipe only its child still holds", """
import select
r, w = os.pipe(); ep = select.epoll(); ep.register(r)
sync_r, sync_w = os.pipe()
if os.fork() == 0:
    os.write(sync_w, b"x"); hold()
os.read(sync_r, 1)
os.close(r)
""", "anon.epoll.escaped_target", "Dump eventpoll", tree=True),
    ok("epoll of a child watching a pipe it inherited", """
import select
r, w = os.pipe(); sync_r, sync_w = os.pipe()
if os.fork() == 0:
    ep = select.epoll(); ep.register(r)
    os.write(sync_w, b"x"); hold()
os.read(sync_r, 1)
""", tree=True),
    ok("epoll and its moved pipe, both inherited by a child", """
import select
r, w = os.pipe(); ep = select.epoll(); ep.register(r)
moved = os.dup(r); os.close(r)
sync_r, sync_w = os.pipe()
if os.fork() == 0:
    os.write(sync_w, b"x"); hold()   # CRIU dumps the shared epoll once, with the parent
os.read(sync_r, 1)
""", tree=True),
    blocked("epoll of a child that moved the inherited pipe it watches", """
import select
r, w = os.pipe(); sync_r, sync_w = os.pipe()
if os.fork() == 0:
    ep = select.epoll(); ep.register(r)
    moved = os.dup(r); os.close(r)   # CRIU meets the pipe first in the parent: pid mismatch
    os.write(sync_w, b"x"); hold()
os.read(sync_r, 1)
""", "anon.epoll.escaped_target", "Dump eventpoll", tree=True),
    ok("inotify watching a directory", """
fd = check(libc.inotify_init1(0)); check(libc.inotify_add_watch(fd, b"/tmp", 0x100))
""", "anon.notify.events_dropped"),
    blocked("inotify watching /proc/sys/kernel", """
fd = check(libc.inotify_init1(0)); check(libc.inotify_add_watch(fd, b"/proc/sys/kernel", 0x2))
""", "anon.notify.unopenable_watch", "Can't dump that handle"),
    ok("fanotify with an inode mark", """
fd = make(lambda: check(libc.fanotify_init(0, 0)))
check(libc.fanotify_mark(fd, 1, ctypes.c_uint64(0x8), -100, b"/tmp"))  # FAN_CLOSE_WRITE
""", "anon.notify.events_dropped"),
    ok("fanotify with a filesystem mark", """
fd = make(lambda: check(libc.fanotify_init(0x200, 0)))  # FAN_REPORT_FID
check(libc.fanotify_mark(fd, 1 | 0x100, ctypes.c_uint64(0x8), -100, b"/tmp"))  # FAN_CLOSE_WRITE
""", "anon.fanotify.filesystem_mark"),
    ok("pidfd of a child", """
child = os.fork()
if child == 0:
    hold()
fd = os.pidfd_open(child)
""", "anon.pidfd", tree=True),
    ok("pidfd of a reaped child", """
child = os.fork()
if child == 0:
    os._exit(3)
fd = os.pidfd_open(child); os.waitpid(child, 0)
""", "anon.pidfd"),
    blocked("pidfd of a process outside the tree", """
fd = os.pidfd_open(keep_outside_tree())
""", "anon.pidfd.outside_tree", "is not a part of process tree"),
    blocked("pidfd opened with PIDFD_THREAD", """
child = os.fork()
if child == 0:
    hold()
fd = make(lambda: syscall(434, child, os.O_EXCL))
""", "anon.pidfd.thread", "PIDFD_THREAD flag is currently not supported"),
    blocked("eventfd reopened with O_PATH", """
e = os.eventfd(0); fd = os.open(f"/proc/self/fd/{e}", os.O_PATH)
""", "anon.o_path", "No records of type 6 found in fdinfo file"),
    blocked("timerfd reopened with O_PATH", """
t = check(libc.timerfd_create(1, 0)); fd = os.open(f"/proc/self/fd/{t}", os.O_PATH)
""", "anon.o_path", "No records of type 17 found in fdinfo file"),
    blocked("signalfd reopened with O_PATH", """
mask = ctypes.c_uint64(1 << 9)
s = syscall(289, -1, ctypes.byref(mask), 8, 0); fd = os.open(f"/proc/self/fd/{s}", os.O_PATH)
""", "anon.o_path", "No records of type 9 found in fdinfo file"),
    blocked("fanotify reopened with O_PATH", """
f = make(lambda: check(libc.fanotify_init(0, 0))); fd = os.open(f"/proc/self/fd/{f}", os.O_PATH)
""", "anon.o_path", "No records of type 12 found in fdinfo file"),
    blocked("pidfd reopened with O_PATH", """
p = os.pidfd_open(os.getpid()); fd = os.open(f"/proc/self/fd/{p}", os.O_PATH)
""", "anon.o_path", "pidfd pid 0 is not a part of process tree"),
    ok("epoll and inotify reopened with O_PATH", """
import select
ep = select.epoll(); a = os.open(f"/proc/self/fd/{ep.fileno()}", os.O_PATH)
i = check(libc.inotify_init1(0)); b = os.open(f"/proc/self/fd/{i}", os.O_PATH)
"""),
    blocked("io_uring", """
params = ctypes.create_string_buffer(120)
fd = make(lambda: syscall(425, 4, params))
""", "anon.io_uring", "send_fds failed"),
    blocked("userfaultfd", """
fd = make(lambda: syscall(323, 0))
""", "anon.unsupported", "(anon anon_inode:[userfaultfd])"),
    blocked("perf_event software counter", """
import struct
attr = ctypes.create_string_buffer(128); struct.pack_into("IIQ", attr, 0, 1, 128, 0)
fd = make(lambda: syscall(298, attr, 0, -1, -1, 0))
""", "anon.unsupported", "(anon anon_inode:[perf_event])"),
    blocked("BPF hash map", "fd = make(lambda: bpf_map(1))", "anon.bpf_map", BPF_MAP_ERROR),
    blocked("BPF array map", "fd = make(lambda: bpf_map(2))", "anon.bpf_map", BPF_MAP_ERROR),
    blocked("BPF socket filter program", """
import struct
code = ctypes.create_string_buffer(struct.pack("<BBhiBBhi", 0xb7, 0, 0, 0, 0x95, 0, 0, 0))
license = ctypes.create_string_buffer(b"GPL")
attr = ctypes.create_string_buffer(128)
struct.pack_into("IIQQ", attr, 0, 1, 2, ctypes.addressof(code), ctypes.addressof(license))
fd = make(lambda: bpf(5, attr))
""", "anon.unsupported", "(anon anon_inode:bpf-prog)"),
]


@pytest.mark.parametrize("state", STATES, ids=[state.name for state in STATES])
def test_anon_fd_agrees_with_criu(state: State):
    with subject(SYSCALLS + state.code + "\nready()\nhold()\n") as running:
        skip_if_refused(running, state.name)
        assert_agrees(running.pid, state.name, expect=state.expect, codes=set(state.codes),
                      tree=state.tree, criu_error=state.criu_error)
