"""The /proc audit: the checkpoint-time recheck that decides every verdict.

It reads a process (or its whole tree) afresh, hands every resource to the
check module that owns its kind, and returns every finding at once, where a
dumper stops at the first.
"""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import NamedTuple

from tracker import checks
from tracker.checks import fd_owners, general
from tracker.context import AuditContext, Hold
from tracker.environment import Environment
from tracker.holders import HostHolders
from tracker.procfs import DEFAULT_PROC_ROOT, AccessDenied, Proc, ProcessGone
from tracker.rules import Finding


class ProcessIdentity(NamedTuple):
    """A process as (pid, start time): its comm and parent go with it, and are no part of
    which process it is (a parent may exit, a comm change)."""

    pid: int
    start_time: float
    comm: str
    ppid: int = 0   # when it was read

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProcessIdentity):
            return NotImplemented
        return (self.pid, self.start_time, self.comm) == (other.pid, other.start_time, other.comm)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash((self.pid, self.start_time, self.comm))


class Audit:
    """Everything one audit found, before any profile judges it."""

    def __init__(self, root: ProcessIdentity, tree: bool,
                 processes: list[ProcessIdentity] | None = None,
                 findings: list[Finding] | None = None, departed: list[int] | None = None):
        self.root, self.tree = root, tree
        self.processes: list[ProcessIdentity] = [] if processes is None else processes
        self.findings: list[Finding] = [] if findings is None else findings
        # Descendants that exited (or whose pid was reused) while the tree was read: no
        # part of it any more, so no checkpoint takes them and their findings are dropped.
        self.departed: list[int] = [] if departed is None else departed

    def __repr__(self) -> str:
        return (f"Audit(root={self.root!r}, tree={self.tree!r}, processes={self.processes!r}, "
                f"findings={self.findings!r}, departed={self.departed!r})")

    def exited(self, pid: int | None = None) -> bool:
        """Did `pid` (by default the root) exit, or its pid get reused, while it was read?
        Nothing read about it is worth judging then."""
        return self._found(general.EXITED, pid)

    def kernel_thread(self, pid: int | None = None) -> bool:
        """Is `pid` (by default the root) a kernel thread, which nothing checkpoints?"""
        return self._found(general.KERNEL_THREAD, pid)

    def _found(self, code: str, pid: int | None) -> bool:
        pid = self.root.pid if pid is None else pid
        return any(finding.code == code and finding.pid == pid for finding in self.findings)


class ThreadId(LookupError):
    """The id names a thread, not a process: /proc/TID exists, but its thread group
    is led by another task. CRIU's `dump -t` takes thread group leaders only."""

    def __init__(self, tid: int, tgid: int):
        super().__init__(f"{tid} is a thread of process {tgid}")
        self.tid, self.tgid = tid, tgid


def identify(pid: int, proc_root: Path = DEFAULT_PROC_ROOT) -> ProcessIdentity:
    """The (pid, start time) identity; raises ProcessGone for a pid that does not exist,
    ThreadId for the id of a thread that does not lead its thread group."""
    if pid <= 0:
        raise ProcessGone(pid)
    proc = Proc(pid, proc_root)
    stat = proc.stat
    leader = _thread_group_leader(proc)
    if leader == 0:  # the kernel has let go of the task (Tgid 0): it has exited
        raise ProcessGone(pid)
    if leader is not None and leader != pid:
        raise ThreadId(pid, leader)
    return ProcessIdentity(pid, stat.start_time, stat.comm, stat.ppid)


def _thread_group_leader(proc: Proc) -> int | None:
    """The Tgid of /proc/ID/status (None when it cannot be read: the identity's stat was)."""
    try:
        tgid = proc.status.get("Tgid", "")
    except (ProcessGone, AccessDenied):
        return None
    return int(tgid) if tgid.isdigit() else None


def descendants(pid: int, proc_root: Path = DEFAULT_PROC_ROOT) -> list[int]:
    """pid and every descendant, parents before children."""
    order, queue, seen = [], deque([pid]), {pid}
    while queue:
        current = queue.popleft()
        order.append(current)
        try:
            kids = [kid for kid in Proc(current, proc_root).children() if kid not in seen]
        except (ProcessGone, AccessDenied):
            continue
        seen.update(kids)   # a set: a parent of 2,000 children costs no 2,000 x 2,000 scan
        queue.extend(kids)
    return order


def audit(pid: int, tree: bool = False, proc_root: Path = DEFAULT_PROC_ROOT, *,
          hold: Hold | None = None, environment: Environment | None = None,
          holders: HostHolders | None = None, name_holders: bool = True) -> Audit:
    """Audit pid (and its descendants when `tree`). Raises ProcessGone if pid does not exist.

    `hold` is the gate's ptrace hold, when the tree is frozen with ptrace; `environment`
    the dumper's, when it is not the one of the CRIU find_criu() finds; `holders` the
    index of who holds which pipe and socket, when a pass of audits shares one;
    `name_holders=False` does not look up who holds them outside the tree (a walk over
    every fd of the host), which only info messages name.
    """
    root = identify(pid, proc_root)
    pids = descendants(pid, proc_root) if tree else [pid]
    ctx = AuditContext(root_pid=pid, tree_pids=set(pids), proc_root=proc_root, hold=hold,
                       dumper_environment=environment, shared_holders=holders,
                       name_holders=name_holders)
    result = Audit(root=root, tree=tree)

    procs: list[Proc] = []
    for member in pids:
        proc = Proc(member, proc_root)
        try:
            stat = proc.stat
            result.processes.append(ProcessIdentity(member, stat.start_time, stat.comm))
            if stat.is_kernel_thread:
                result.findings.append(general.kernel_thread(member, stat.comm))
                continue
            if member == os.getpid():
                result.findings.append(Finding(
                    "task.crwatch_itself", f"pid {member} is this crwatch process", member))
            ctx.tree_fds[member] = proc.fds()
            procs.append(proc)
        except ProcessGone:
            _gone(result, member)
        except AccessDenied as denied:
            result.findings.append(general.unreadable(member, denied.what, denied.reason))

    for proc in procs:
        result.findings.extend(_check_one(ctx, proc))
    result.findings.extend(list(checks.check_tree(ctx, result.findings)))

    # Identity is confirmed once, at the end: a pid that died or was reused
    # while we read it makes everything read about it worthless.
    for identity in list(result.processes):
        if not _same_process(identity, proc_root) or _died_while_read(result, identity, proc_root):
            result.findings = [f for f in result.findings if f.pid != identity.pid]
            _gone(result, identity.pid)
    return result


def _died_while_read(result: Audit, identity: ProcessIdentity, proc_root: Path) -> bool:
    """Its reads failed as a gone process's do, and it is exiting now: it died while read
    (a process in exit() has no exe, cwd or root any more, yet is not a zombie yet)."""
    if not result.exited(identity.pid):
        return False
    try:
        return Proc(identity.pid, proc_root).stat.is_exiting
    except (ProcessGone, AccessDenied):
        return True


def _gone(result: Audit, pid: int) -> None:
    """pid exited during the audit. The root's exit ends the tree (audit.exited); a
    descendant's only takes it out of the tree, as a dump begun now would not meet it."""
    if pid == result.root.pid:
        result.findings.append(general.exited(pid))
        return
    result.processes = [identity for identity in result.processes if identity.pid != pid]
    result.departed.append(pid)


def _check_one(ctx: AuditContext, proc: Proc) -> list[Finding]:
    """The process's findings. A ProcessGone while the process itself lives on (it just
    became a zombie or exec'd, or a descendant's fd that a tree-wide check read went
    away) reads it once more, afresh; a second one says it exited."""
    try:
        return _findings_of(ctx, proc)
    except ProcessGone:
        pass
    except AccessDenied as denied:
        return [general.unreadable(proc.pid, denied.what, denied.reason)]
    again = Proc(proc.pid, ctx.proc_root)
    try:
        if again.stat.start_time != proc.stat.start_time:
            return [general.exited(proc.pid)]
        ctx.tree_fds[proc.pid] = again.fds()
        return _findings_of(ctx, again)
    except ProcessGone:
        return [general.exited(proc.pid)]
    except AccessDenied as denied:
        return [general.unreadable(proc.pid, denied.what, denied.reason)]


def _findings_of(ctx: AuditContext, proc: Proc) -> list[Finding]:
    findings: list[Finding] = []
    for open_fd in ctx.tree_fds[proc.pid]:
        try:
            findings.extend(fd_owners.check_fd(ctx, proc, open_fd))
        except ProcessGone:
            # The fd closed while we looked at it; the process's own
            # survival is checked at the end.
            continue
    findings.extend(checks.check_process(ctx, proc))
    return findings


def _same_process(identity: ProcessIdentity, proc_root: Path) -> bool:
    try:
        return Proc(identity.pid, proc_root).stat.start_time == identity.start_time
    except (ProcessGone, AccessDenied):
        return False
