"""Anonymous-inode fds (tracker/checks/anon.py; CRIU eventfd.c, eventpoll.c, fsnotify.c,
signalfd.c, timerfd.c, pidfd.c, bpfmap.c, files-ext.c)."""
from __future__ import annotations

import ctypes
import os
import select
import socket
import struct

from bench.fuzz import generator
from bench.fuzz.runtime import check, libc, map_memory, syscall


def bpf(command: int, attr) -> int:
    return syscall(321, command, attr, len(attr))


@generator("anon", draw=lambda rng, place: {"value": rng.choice((0, 7)), "nonblock": rng.random() < 0.5,
                                            "semaphore": rng.random() < 0.3})
def eventfd(ctx, value, nonblock, semaphore):
    """an eventfd with a count, non-blocking or in semaphore mode"""
    flags = (os.EFD_NONBLOCK if nonblock else 0) | (os.EFD_SEMAPHORE if semaphore else 0)
    ctx.keep(os.eventfd(value, flags))


@generator("anon", draw=lambda rng, place: {"signals": rng.sample((10, 12, 15, 17), 2)})
def signalfd(ctx, signals):
    """a signalfd on a signal mask"""
    mask = ctypes.c_uint64(sum(1 << (number - 1) for number in signals))
    ctx.keep(syscall(289, -1, ctypes.byref(mask), 8, 0))


@generator("anon", draw=lambda rng, place: {"armed": rng.random() < 0.5, "clock": rng.choice((0, 1, 7, 9))})
def timerfd(ctx, armed, clock):
    """a timerfd on the realtime, monotonic, boottime or boottime-alarm clock, armed or not"""
    fd = ctx.keep(check(libc.timerfd_create(clock, 0), "timerfd_create"))
    if armed:
        spec = (ctypes.c_long * 4)(100, 0, 100, 0)   # every 100 s, first in 100 s
        check(libc.timerfd_settime(fd, 0, spec, None), "timerfd_settime")


@generator("anon", weight=1.5, draw=lambda rng, place: {
    "target": rng.choice(("pipe", "socket", "eventfd", "epoll")),
    "escape": rng.choice(("none", "none", "moved", "closed", "renumbered", "to_children"))})
def epoll(ctx, target, escape):
    """an epoll watching a pipe, socket, eventfd or epoll; the target moved, closed, renumbered,
    or left to the process's children (closed in the process after they were forked)"""
    fd = {"pipe": lambda: os.pipe()[0], "socket": lambda: socket.socket().detach(),
          "eventfd": lambda: os.eventfd(0),
          "epoll": lambda: check(libc.epoll_create1(0), "epoll_create1")}[target]()
    watcher = ctx.keep(select.epoll())
    watcher.register(fd, select.EPOLLIN)
    if escape == "moved":
        ctx.keep(os.dup(fd))
        os.close(fd)
    elif escape == "closed":
        ctx.outside(fd)   # the file lives on outside the tree: only then does epoll keep it
        os.close(fd)
    elif escape == "renumbered":
        ctx.outside(fd)
        other = os.eventfd(0)
        os.dup2(other, fd)
        os.close(other)
        ctx.keep(fd)
    elif escape == "to_children":
        ctx.shared_fds.add(fd)
        ctx.after_children.append(lambda children: os.close(fd) if children else None)
    else:
        ctx.keep(fd)


@generator("anon", draw=lambda rng, place: {
    "path": rng.choice(("/tmp", "/etc", "/proc/sys/kernel", "/dev", "deleted_file", "deleted_dir",
                        "tmpfs")),
    "event": rng.random() < 0.3})
def inotify(ctx, path, event):
    """an inotify watching a directory (of ext4, proc, devtmpfs, tmpfs), a deleted file or
    directory, maybe with an event queued"""
    fd = ctx.keep(check(libc.inotify_init1(0), "inotify_init1"))
    watched = {"deleted_file": lambda: ctx.path("watched-file"), "tmpfs": lambda: ctx.mount("tmpfs"),
               "deleted_dir": lambda: ctx.directory("watched-dir")}.get(
        path, lambda: ctx.directory("watched") if event else path)()
    if path == "deleted_file":
        open(watched, "w").close()
    check(libc.inotify_add_watch(fd, watched.encode(), 0x100 | 0x2 | 0x200), "inotify_add_watch")
    if path == "deleted_file":
        os.unlink(watched)
    elif path == "deleted_dir":
        os.rmdir(watched)
    elif event:
        open(os.path.join(watched, "new"), "w").close()


@generator("anon", draw=lambda rng, place: {"mark": rng.choice(("inode", "mount", "filesystem")),
                                            "content": rng.random() < 0.3})
def fanotify(ctx, mark, content):
    """a fanotify (notification or content class) with an inode, mount or filesystem mark"""
    flags = {"inode": 0, "mount": 0x10, "filesystem": 0x100}[mark]
    init = (0x200 if mark == "filesystem" else 0) | (0x04 if content and mark != "filesystem" else 0)
    fd = ctx.keep(check(libc.fanotify_init(init, 0), "fanotify_init"))
    check(libc.fanotify_mark(fd, 1 | flags, ctypes.c_uint64(0x8), -100, b"/tmp"), "fanotify_mark")


@generator("anon", weight=1.5, draw=lambda rng, place: {
    "of": rng.choice(("self", "child", "reaped", "zombie", "outside", "thread_flag", "tree_child"))})
def pidfd(ctx, of):
    """a pidfd of itself, a held, zombie or reaped child, a process outside the tree, or with
    PIDFD_THREAD"""
    if of == "self":
        ctx.keep(os.pidfd_open(os.getpid()))
    elif of == "outside":
        ctx.keep(os.pidfd_open(ctx.outside()))
    elif of == "tree_child":   # the tree's own child, forked by the subject's build
        ctx.after_children.append(lambda children: ctx.keep(*(os.pidfd_open(pid) for pid in children[:1])))
    else:
        child = ctx.fork()
        if child == 0:
            if of in ("reaped", "zombie"):
                os._exit(3)
            while True:
                select.select([], [], [])
        ctx.keep(syscall(434, child, os.O_EXCL) if of == "thread_flag" else os.pidfd_open(child))
        if of == "reaped":
            os.waitpid(child, 0)
        elif of == "zombie":
            os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)


@generator("anon", weight=0.7, draw=lambda rng, place: {"mapped": rng.random() < 0.3,
                                                        "close_fd": rng.random() < 0.3})
def io_uring(ctx, mapped, close_fd):
    """an io_uring instance, its ring mapped or not, its fd kept or closed"""
    params = ctx.keep((ctypes.c_uint8 * 120)())
    ring = syscall(425, 4, params)
    if mapped:
        map_memory(ring, 4096, 0x01 | 0x8000)   # MAP_SHARED | MAP_POPULATE, the SQ ring
    if close_fd and mapped:
        os.close(ring)
    else:
        ctx.keep(ring)


@generator("anon", weight=0.5)
def userfaultfd(ctx):
    """a userfaultfd"""
    ctx.keep(syscall(323, 0))


@generator("anon", weight=0.5, draw=lambda rng, place: {"config": rng.choice((0, 2))})
def perf_event(ctx, config):
    """a perf_event fd on a software counter"""
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("IIQ", attr, 0, 1, 128, config)
    ctx.keep(syscall(298, attr, 0, -1, -1, 0))


@generator("anon", weight=0.7, draw=lambda rng, place: {
    "kind": rng.choice(("hash", "array", "ringbuf", "prog"))})
def bpf_object(ctx, kind):
    """a BPF map (hash, array, ring buffer) or a loaded socket-filter program"""
    if kind == "prog":
        code = ctx.keep(ctypes.create_string_buffer(struct.pack("<BBhiBBhi", 0xb7, 0, 0, 0, 0x95, 0, 0, 0)))
        license = ctx.keep(ctypes.create_string_buffer(b"GPL"))
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("IIQQ", attr, 0, 1, 2, ctypes.addressof(code), ctypes.addressof(license))
        ctx.keep(bpf(5, attr))
        return
    layout = {"hash": (1, 4, 4, 4), "array": (2, 4, 4, 4), "ringbuf": (27, 0, 0, 4096)}[kind]
    ctx.keep(bpf(0, ctypes.create_string_buffer(struct.pack("IIII", *layout) + bytes(112))))


@generator("anon", weight=0.5, draw=lambda rng, place: {"mapped": rng.random() < 0.5,
                                                        "keep_fd": rng.random() < 0.7})
def memfd_secret(ctx, mapped, keep_fd):
    """a memfd_secret fd (secretmem), mapped or not"""
    fd = syscall(447, 0)
    if mapped:
        os.ftruncate(fd, 4096)
        map_memory(fd, 4096, 0x01)
    if keep_fd or not mapped:
        ctx.keep(fd)
    else:
        os.close(fd)


@generator("anon", weight=0.5)
def landlock_ruleset(ctx):
    """a Landlock ruleset fd"""
    attr = ctx.keep(ctypes.create_string_buffer(struct.pack("Q", 1)))   # handled: execute
    ctx.keep(syscall(444, attr, 8, 0))


@generator("anon", weight=0.5, draw=lambda rng, place: {"kind": rng.choice(("fsopen", "fspick"))})
def filesystem_context(ctx, kind):
    """a filesystem context fd of the new mount API (fsopen, or fspick of a mount)"""
    if kind == "fsopen":
        ctx.keep(syscall(430, b"tmpfs", 1))            # FSOPEN_CLOEXEC
    else:
        ctx.keep(syscall(433, -100, b"/", 1))          # FSPICK_CLOEXEC, on a mount root


O_PATH_KINDS = {
    "eventfd": lambda ctx: os.eventfd(0),
    "timerfd": lambda ctx: check(libc.timerfd_create(1, 0), "timerfd_create"),
    "signalfd": lambda ctx: syscall(289, -1, ctypes.byref(ctx.keep(ctypes.c_uint64(1 << 9))), 8, 0),
    "fanotify": lambda ctx: check(libc.fanotify_init(0, 0), "fanotify_init"),
    "inotify": lambda ctx: check(libc.inotify_init1(0), "inotify_init1"),
    "epoll": lambda ctx: check(libc.epoll_create1(0), "epoll_create1"),
    "pidfd": lambda ctx: os.pidfd_open(os.getpid()),
}
O_PATH_OTHER_KINDS = {
    "pipe": lambda ctx: os.pipe()[0],
    "memfd": lambda ctx: os.memfd_create("crwatch-fuzz-o-path"),
    "unix_socket": lambda ctx: socket.socketpair()[0].detach(),
    "tcp_socket": lambda ctx: socket.socket().detach(),
}


def reopen_with_o_path(ctx, original: int, keep_original: bool) -> None:
    ctx.keep(os.open(f"/proc/self/fd/{original}", os.O_PATH))
    if keep_original:
        ctx.keep(original)
    else:
        os.close(original)


@generator("anon", weight=0.7, draw=lambda rng, place: {"kind": rng.choice(sorted(O_PATH_KINDS)),
                                                        "keep_original": rng.random() < 0.5})
def o_path_reopen(ctx, kind, keep_original):
    """an O_PATH fd opened through /proc/self/fd on an eventfd, timerfd, signalfd, fanotify,
    inotify, epoll or pidfd, the original fd kept or closed"""
    reopen_with_o_path(ctx, O_PATH_KINDS[kind](ctx), keep_original)


@generator("files", weight=0.5, draw=lambda rng, place: {
    "kind": rng.choice(sorted(O_PATH_OTHER_KINDS)), "keep_original": rng.random() < 0.5})
def o_path_reopen_file(ctx, kind, keep_original):
    """an O_PATH fd opened through /proc/self/fd on a pipe, memfd, unix or TCP socket, the
    original fd kept or closed"""
    reopen_with_o_path(ctx, O_PATH_OTHER_KINDS[kind](ctx), keep_original)
