"""Files, directories, pipes and FIFOs (tracker/checks/files.py; CRIU files-reg.c, pipes.c, fifo.c)."""
from __future__ import annotations

import os
import socket
import subprocess

from bench.fuzz import generator
from bench.fuzz.runtime import CLONE, hold, syscall, unshare

MOUNT_KINDS = ("ext4", "tmpfs", "ramfs", "dev_shm", "proc", "sysfs", "devpts", "cgroup", "bind")


@generator("files", weight=2, draw=lambda rng, place: {"kind": rng.choice(MOUNT_KINDS),
                                                       "write": rng.random() < 0.5})
def file_on_mount(ctx, kind, write):
    """an fd on a file of one mount kind (ext4, tmpfs, ramfs, /dev/shm, proc, sysfs, devpts, cgroup, bind)"""
    mode = os.O_RDWR if write else os.O_RDONLY
    if kind in ("ext4", "tmpfs", "ramfs", "bind"):
        where = {"ext4": lambda: ctx.directory("ext4"),
                 "bind": lambda: ctx.mount("bind", source=ctx.directory("bound")),
                 }.get(kind, lambda: ctx.mount(kind))()
        path = os.path.join(where, "file")
        with open(path, "w") as file:
            file.write("crwatch fuzz\n")
    elif kind == "dev_shm":
        path = f"/dev/shm/{ctx.scratch.name}-p{ctx.index}-{os.getpid()}"
        with open(path, "w") as file:
            file.write("crwatch fuzz\n")
    else:
        path = {"proc": "/proc/self/status", "sysfs": "/sys/kernel/uevent_seqnum",
                "devpts": "/dev/pts", "cgroup": "/sys/fs/cgroup/unified/cgroup.procs"}[kind]
        mode = os.O_RDONLY | (os.O_DIRECTORY if kind == "devpts" else 0)
    ctx.keep(os.open(path, mode))


@generator("files", draw=lambda rng, place: {"kind": rng.choice(("directory", "o_path", "symlink"))})
def directory_or_path_fd(ctx, kind):
    """an fd on a directory, an O_PATH fd, or an O_PATH|O_NOFOLLOW fd on a symlink"""
    if kind == "directory":
        ctx.keep(os.open(ctx.directory("dir"), os.O_RDONLY | os.O_DIRECTORY))
    elif kind == "o_path":
        ctx.keep(os.open("/etc/passwd", os.O_PATH))
    else:
        link = ctx.path("link")
        os.symlink("/etc/hostname", link)
        ctx.keep(os.open(link, os.O_PATH | os.O_NOFOLLOW))


@generator("files", draw=lambda rng, place: {"size": rng.choice((0, 4096, 100_000, 900_000)),
                                              "tmpfs": rng.random() < 0.3})
def deleted_small_file(ctx, size, tmpfs):
    """an fd on a deleted file within CRIU's default ghost limit (1 MiB)"""
    path = os.path.join(ctx.mount("tmpfs"), "ghost") if tmpfs else ctx.path("ghost")
    file = ctx.keep(open(path, "wb+"))
    file.write(b"x" * size)
    file.flush()
    os.unlink(path)


@generator("files", draw=lambda rng, place: {"mib": rng.choice((1.5, 2, 3, 5))})
def deleted_big_file(ctx, mib):
    """an fd on a deleted file over the default ghost limit (needs --ghost-limit)"""
    path = ctx.path("big")
    file = ctx.keep(open(path, "wb+"))
    file.write(b"x" * int(mib * (1 << 20)))
    file.flush()
    os.fsync(file.fileno())
    os.unlink(path)


@generator("files")
def unlinked_file_linked_elsewhere(ctx):
    """an fd on a file unlinked from its opened name that has another hard link (link-remap)"""
    first, second = ctx.path("first"), ctx.path("second")
    with open(first, "w") as file:
        file.write("hello")
    os.link(first, second)
    ctx.keep(open(first))
    os.unlink(first)


@generator("files", draw=lambda rng, place: {"cwd": rng.random() < 0.5})
def deleted_directory(ctx, cwd):
    """a removed directory as cwd or as an open directory fd"""
    path = ctx.directory("gone")
    if cwd:
        os.chdir(path)
    else:
        ctx.keep(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
    os.rmdir(path)


@generator("files", draw=lambda rng, place: {"kind": rng.choice(("file", "directory", "fifo"))})
def overmounted_file(ctx, kind):
    """an fd on a file (or directory, FIFO) of a tmpfs that another tmpfs then covers"""
    where = ctx.mount("tmpfs", "under")
    path = os.path.join(where, kind)
    if kind == "file":
        ctx.keep(open(path, "w"))
    elif kind == "directory":
        os.mkdir(path)
        ctx.keep(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
    else:
        os.mkfifo(path)
        ctx.keep(os.open(path, os.O_RDWR))
    subprocess.run(["mount", "-t", "tmpfs", "crwatch-fuzz-over", where], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@generator("files")
def lazily_unmounted_file(ctx):
    """an fd on a file of a tmpfs that was lazily unmounted"""
    where = ctx.mount("tmpfs")
    ctx.keep(open(os.path.join(where, "file"), "w"))
    subprocess.run(["umount", "-l", where], check=True)


@generator("files")
def lazily_unmounted_bind_mount(ctx):
    """an fd on a file opened through a bind mount that was then lazily unmounted"""
    where = ctx.mount("bind", source=ctx.directory("src"))
    ctx.keep(open(os.path.join(where, "file"), "w"))
    subprocess.run(["umount", "-l", where], check=True)


@generator("files")
def file_of_another_mount_namespace(ctx):
    """an fd, passed over SCM_RIGHTS, on a tmpfs that exists only in another mount namespace"""
    target = ctx.directory("elsewhere")
    mine, theirs = socket.socketpair()
    pid = ctx.fork()
    if pid == 0:
        try:
            unshare(CLONE["mnt"])
            subprocess.run(["mount", "--make-rprivate", "/"], check=True)
            subprocess.run(["mount", "-t", "tmpfs", "crwatch-fuzz-elsewhere", target], check=True)
            fd = os.open(os.path.join(target, "file"), os.O_RDWR | os.O_CREAT)
            socket.send_fds(theirs, [b"x"], [fd])
        finally:
            os._exit(0)
    theirs.close()
    _, fds, _, _ = socket.recv_fds(mine, 1, 1)
    os.waitpid(pid, 0)
    mine.close()
    if not fds:
        raise OSError(0, "the helper in another mount namespace sent nothing")
    ctx.keep(fds[0])


@generator("files", weight=0.5)
def detached_mount_tree(ctx):
    """an fd on a detached copy of a mount tree (open_tree with OPEN_TREE_CLONE), in no namespace"""
    ctx.keep(syscall(428, -100, b"/tmp", 1 | 0x80000))   # OPEN_TREE_CLONE | O_CLOEXEC


@generator("files", draw=lambda rng, place: {"size": rng.choice((0, 100, 8192))})
def memfd_fd(ctx, size):
    """an fd of a memfd with some contents"""
    fd = ctx.keep(os.memfd_create("crwatch-fuzz"))
    os.write(fd, b"x" * size)


@generator("files", draw=lambda rng, place: {"kinds": rng.sample(("net", "mnt", "uts", "ipc", "pid"), 2)})
def own_namespace_file(ctx, kinds):
    """fds on the process's own /proc/self/ns/* files"""
    for kind in kinds:
        ctx.keep(os.open(f"/proc/self/ns/{kind}", os.O_RDONLY))


@generator("files", draw=lambda rng, place: {"kind": rng.choice(("net", "uts", "ipc"))})
def foreign_namespace_file(ctx, kind):
    """an fd on a namespace no task of the tree lives in (its only task has exited)"""
    read_end, write_end = os.pipe()
    pid = ctx.fork()
    if pid == 0:
        try:
            unshare(CLONE[kind])
            os.write(write_end, b"1")
        except OSError:
            os.write(write_end, b"0")
        hold()
    os.close(write_end)
    ok = os.read(read_end, 1) == b"1"
    os.close(read_end)
    fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY) if ok else -1
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    if not ok:
        raise OSError(0, f"unshare of a {kind} namespace failed")
    ctx.keep(fd)


# ---- pipes and FIFOs ----------------------------------------------------------------

@generator("files", weight=2, draw=lambda rng, place: {"data": rng.random() < 0.5,
                                                       "ends": rng.choice(("both", "read", "write"))})
def pipe(ctx, data, ends):
    """a pipe, with data queued or not, both ends kept or only one"""
    read_end, write_end = os.pipe()
    if data:
        os.write(write_end, b"queued")
    if ends != "write":
        ctx.keep(read_end)
    else:
        os.close(read_end)
    if ends != "read":
        ctx.keep(write_end)
    else:
        os.close(write_end)


@generator("files", weight=0.5)
def packet_mode_pipe(ctx):
    """a pipe in packet mode (O_DIRECT)"""
    ctx.keep(*os.pipe2(os.O_DIRECT))


@generator("files", draw=lambda rng, place: {"both": rng.random() < 0.5})
def fifo(ctx, both):
    """a FIFO opened O_RDWR, or opened once for reading and once for writing"""
    path = ctx.path("fifo")
    os.mkfifo(path)
    if both:
        ctx.keep(os.open(path, os.O_RDONLY | os.O_NONBLOCK), os.open(path, os.O_WRONLY))
    else:
        ctx.keep(os.open(path, os.O_RDWR))


@generator("files", draw=lambda rng, place: {"data": rng.random() < 0.5})
def pipe_across_fork(ctx, data):
    """a pipe whose read end this process keeps and whose write end its children keep"""
    read_end, write_end = os.pipe()
    if data:
        os.write(write_end, b"queued")
    ctx.keep(read_end, write_end)
    ctx.shared_fds.add(write_end)
    ctx.in_children.append(lambda: os.close(read_end))
    ctx.after_children.append(lambda children: os.close(write_end) if children else None)
