"""Findings about the audit itself: what could not be read or classified."""
from __future__ import annotations

from tracker.context import AuditContext
from tracker.procfs import AccessDenied, OpenFd, Proc, ProcessGone
from tracker.rules import BLOCKER, Finding, Rule

RULES = (
    Rule("audit.exited", "The process exited (or its pid was reused) during the audit", BLOCKER,
         "audit again: the process that was asked about is gone",
         criu_message="No process with such pid", makes_unknown=True),
    Rule("audit.unreadable", "/proc refused to show part of the process", BLOCKER,
         "run crwatch as root (CRIU itself needs root to dump)", makes_unknown=True),
    Rule("fd.unclassified", "An open file of a kind crwatch does not know", BLOCKER,
         "close the file before checkpointing; CRIU refuses files it cannot classify",
         criu_message="Can't dump file %d of that type [%o] (unknown %s)"),
    Rule("task.kernel_thread", "A kernel thread cannot be checkpointed", BLOCKER,
         "kernel threads belong to the kernel; checkpoint a user process instead"),
    Rule("task.crwatch_itself", "The tree contains the auditing crwatch process", BLOCKER,
         "audit a tree that does not contain crwatch (CRIU refuses to dump itself)",
         criu_message="The criu itself is within dumped tree."),
)


def exited(pid: int) -> Finding:
    return Finding("audit.exited", f"pid {pid} exited or was replaced during the audit", pid)


def unreadable(pid: int, what: str, reason: str) -> Finding:
    return Finding("audit.unreadable", f"pid {pid}: cannot read /proc/{pid}/{what}: {reason}", pid)


def unclassified_fd(proc: Proc, open_fd: OpenFd) -> Finding:
    return Finding("fd.unclassified",
                   f"fd {open_fd.fd}: unknown kind of file {open_fd.target!r} "
                   f"(mode {open_fd.stat.st_mode:o})", proc.pid, fd=open_fd.fd)


def dump_order(ctx: AuditContext) -> list[int]:
    """The tree's pids in the order CRIU dumps them (pstree_item_next: depth first from the
    root, children in /proc's order); within a process it dumps fds in ascending order."""
    return ctx.table("general.dump_order", lambda: _walk(ctx))


def _walk(ctx: AuditContext) -> list[int]:
    order, stack = [], [ctx.root_pid]
    while stack:
        pid = stack.pop()
        order.append(pid)
        try:
            children = [child for child in ctx.proc(pid).children() if ctx.in_tree(child)]
        except (ProcessGone, AccessDenied):
            children = []
        stack.extend(reversed(children))
    return order
