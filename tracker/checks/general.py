"""Findings about the audit itself: what could not be read or classified.

And files whose path is too long to read: CRIU reads every file it saves by
path (fds, cwd, root, exe) through readlink of its /proc link into PATH_MAX - 1
bytes (files.c fill_fdlink, util.c read_fd_link); a path that does not fit
fails the dump.
"""
from __future__ import annotations

from typing import Iterator

from tracker.context import AuditContext
from tracker.procfs import NAME_TOO_LONG, OpenFd, Proc, link_too_long
from tracker.rules import BLOCKER, Finding, Rule

# The two codes that say an audit has nothing to judge: ask Audit.exited and
# Audit.kernel_thread rather than comparing them.
EXITED = "audit.exited"
KERNEL_THREAD = "task.kernel_thread"

RULES = (
    Rule(EXITED, "The process exited (or its pid was reused) during the audit", BLOCKER,
         "audit again: the process that was asked about is gone",
         criu_message="No process with such pid", makes_unknown=True),
    Rule("audit.unreadable", "/proc refused to show part of the process", BLOCKER,
         "run crwatch as root (CRIU itself needs root to dump)", makes_unknown=True),
    Rule("audit.probe_not_attached", "A state this profile judges is followed by a probe "
         "that is not attached", BLOCKER,
         "ask the service or `crwatch watch` started with --profile of this profile, which "
         "attaches the probe (tracker/live/probe_choice.py)", makes_unknown=True),
    Rule("fd.unclassified", "An open file of a kind crwatch does not know", BLOCKER,
         "close the file before checkpointing; CRIU refuses files it cannot classify",
         criu_message="Can't dump file %d of that type [%o] (unknown %s)"),
    Rule(KERNEL_THREAD, "A kernel thread cannot be checkpointed", BLOCKER,
         "kernel threads belong to the kernel; checkpoint a user process instead"),
    Rule("task.crwatch_itself", "The tree contains the auditing crwatch process", BLOCKER,
         "audit a tree that does not contain crwatch (CRIU refuses to dump itself)",
         criu_message="The criu itself is within dumped tree."),
    Rule("file.path.too_long", "An open file, cwd or root whose path is 4095 bytes or longer",
         BLOCKER, "close the file (or chdir/chroot elsewhere), or reach it through a shorter path "
         "(a bind mount or a directory nearer the root), before checkpointing",
         criu_message="Can't read link of fd %d; Buffer for read link of fd %d is too small"),
)

# The links CRIU saves by path besides the fds (cr-dump.c dump_task_fs). The executable is
# one too, but it is mapped: its smaps line refuses the dump first (the bfd rule).
PROCESS_LINKS = ("cwd", "root")


def exited(pid: int) -> Finding:
    return Finding(EXITED, f"pid {pid} exited or was replaced during the audit", pid)


def kernel_thread(pid: int, comm: str) -> Finding:
    return Finding(KERNEL_THREAD, f"pid {pid} ({comm}) is a kernel thread", pid)


def unreadable(pid: int, what: str, reason: str) -> Finding:
    return Finding("audit.unreadable", f"pid {pid}: cannot read /proc/{pid}/{what}: {reason}", pid)


def unclassified_fd(proc: Proc, open_fd: OpenFd) -> Finding:
    return Finding("fd.unclassified",
                   f"fd {open_fd.fd}: unknown kind of file {open_fd.target!r} "
                   f"(mode {open_fd.stat.st_mode:o})", proc.pid, fd=open_fd.fd)


def check_fd(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Iterator[Finding]:
    """The fds whose kind is long_name (tracker.checks routes them here)."""
    inode = open_fd.stat.st_ino
    yield Finding("file.path.too_long", f"fd {open_fd.fd}: the path of inode {inode} "
                  f"{_path_text(open_fd.target)}", proc.pid, fd=open_fd.fd)


def check_process(ctx: AuditContext, proc: Proc) -> Iterator[Finding]:
    if proc.stat.state == "Z" or proc.stat.is_kernel_thread:
        return  # neither has a cwd or root for CRIU to save
    for name in PROCESS_LINKS:
        target = proc.readlink(name)
        if link_too_long(target):
            yield Finding("file.path.too_long", f"pid {proc.pid}: its {name} "
                          f"{_path_text(target)}", proc.pid)


def _path_text(target: str) -> str:
    if target == NAME_TOO_LONG:
        return "is longer than PATH_MAX (4096 bytes): its /proc link cannot be read"
    return f"is {len(target)} bytes long (...{target[-40:]}), more than CRIU's 4094"
