"""Task state: threads, tracers, zombies, stops, vfork, shared mm/fs, PI futexes.

CRIU seizes every thread of the tree with ptrace (compel's PTRACE_SEIZE +
PTRACE_INTERRUPT), so whatever stops a seize stops the dump: another tracer,
a stop signal it does not know, a thread that cannot be interrupted. After the
seize it gives each process kernel-object ids with kcmp and refuses two
processes that share an mm or fs_struct without being threads of one group.
It reads every live process's rlimits with prlimit64() (cr-dump.c
dump_task_rlimits), which the kernel refuses to a dumper whose real uid and
gid differ from any of the target's, unless the dumper holds CAP_SYS_RESOURCE
(kernel/sys.c check_prlimit_permission).
"""
from __future__ import annotations

import ctypes
import functools
import platform
import signal
import sys
from dataclasses import dataclass, replace
from typing import Iterator

from tracker.context import AuditContext
from tracker.procfs import DEFAULT_PROC_ROOT, Proc, ProcessGone
from tracker.rules import BLOCKER, INFO, Finding, Rule

RULES = (
    Rule("task.threads", "A multi-threaded process", INFO,
         "nothing to do: CRIU dumps every thread"),
    Rule("task.traced", "A thread is traced by another process (debugger, strace, a parent)",
         BLOCKER,
         "detach the tracer (quit gdb/strace, PTRACE_DETACH) before checkpointing: CRIU must be "
         "the only tracer, even when the tracer is inside the dumped tree",
         criu_message="Unable to interrupt task: %d (%s); "
                      "Unseizable non-zombie %d found, state %c, err %d/%d"),
    Rule("task.zombie", "A zombie process (exited, not yet reaped)", INFO,
         "nothing to do: CRIU restores it as a zombie"),
    Rule("task.zombie_threads", "A zombie thread-group leader whose other threads still run",
         BLOCKER, "let the process finish exiting (or have the leader stay alive) before "
         "checkpointing", criu_message="Zombies with threads are not supported"),
    Rule("task.stopped", "A process in group stop (SIGSTOP/SIGTSTP)", INFO,
         "nothing to do: CRIU restores it stopped"),
    Rule("task.stop_signal", "A process stopped by a signal CRIU cannot restore (SIGTTIN, SIGTTOU)",
         BLOCKER, "resume it (SIGCONT, or bring the job to the foreground) before checkpointing",
         criu_message="SEIZE %d: unsupported stop signal %d"),
    Rule("task.stopped_threads", "Some threads of a process are stopped and others are not",
         BLOCKER, "resume the stopped threads (SIGCONT) before checkpointing",
         criu_message="Individually stopped threads not supported"),
    Rule("task.pending_sigtrap", "A SIGTRAP is pending", BLOCKER,
         "unblock and handle the pending SIGTRAP before checkpointing",
         criu_message="Can't dump the %d thread with a pending SIGTRAP."),
    Rule("task.vfork", "A parent is blocked in vfork() until its child execs or exits", BLOCKER,
         "checkpoint after the vfork child has called exec() or exited: the parent cannot be "
         "interrupted meanwhile, and parent and child share one address space",
         criu_message="Timeout reached. Try to interrupt: %d; "
                      "Unseizable non-zombie %d found, state D, err %d/%d"),
    Rule("task.uninterruptible", "A thread is in uninterruptible sleep (state D)", INFO,
         "nothing to do if it wakes soon: CRIU waits for it up to --timeout (10 s by default)"),
    Rule("task.shared_mm", "Processes share one address space without being threads (CLONE_VM)",
         BLOCKER, "checkpoint a tree whose processes do not share memory through CLONE_VM "
         "(threads are fine)", criu_message="Can't make VM id for %d"),
    Rule("task.shared_fs", "Processes share cwd/root/umask without being threads (CLONE_FS)",
         BLOCKER, "checkpoint a tree whose processes were not cloned with CLONE_FS",
         criu_message="Can't make FS id for %d"),
    Rule("task.pi_futex", "A thread waits on a priority-inheritance futex", INFO,
         "nothing to do for CRIU: the futex word and owner TID are restored as they were",
         strict=BLOCKER),
    Rule("task.unknown_state", "A thread in a state crwatch does not know", BLOCKER,
         "audit again; a state outside R/S/D/T/t/Z/X/I is new to crwatch and CRIU alike"),
    Rule("task.foreign_uid_needs_sys_resource", "A process runs under other uids or gids than "
         "the dumper, which lacks CAP_SYS_RESOURCE", BLOCKER,
         "run the dumper with CAP_SYS_RESOURCE (in its bounding and effective sets), or under "
         "the process's own uid and gid",
         criu_message="Can't get rlimit 0: Operation not permitted"),
)

SIGTRAP_BIT = 1 << (signal.SIGTRAP - 1)
GROUP_STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP}  # the ones compel restores
KNOWN_STATES = set("RSDTtZXI")
CLONE_VFORK = 0x4000
FUTEX_CMD_MASK = 127  # drops FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME
FUTEX_TID_MASK = 0x3FFFFFFF
FUTEX_PI_OPS = {6: "FUTEX_LOCK_PI", 11: "FUTEX_WAIT_REQUEUE_PI", 13: "FUTEX_LOCK_PI2"}
KCMP_VM, KCMP_FS = 1, 3
STAT_EXIT_CODE = 49  # field 52 of /proc/PID/stat, counted after the ")" of comm


@dataclass(frozen=True)
class Syscalls:
    """The syscall numbers of one architecture that the checks look for."""

    clone: int
    clone3: int
    futex: int
    kcmp: int
    vfork: int | None


SYSCALLS = {
    "x86_64": Syscalls(clone=56, clone3=435, futex=202, kcmp=312, vfork=58),
    "aarch64": Syscalls(clone=220, clone3=435, futex=98, kcmp=272, vfork=None),
}.get(platform.machine())


@dataclass(frozen=True)
class Thread:
    """What the checks need of one thread, read once."""

    tid: int
    state: str
    tracer: int
    pending: int       # SigPnd: signals pending for this thread alone
    syscall: list[str]  # /proc/.../syscall split in words; [] when not read

    @property
    def live(self) -> bool:
        return self.state not in ("Z", "X")


def check_process(ctx: AuditContext, proc: Proc) -> Iterator[Finding]:
    threads = [_unheld(ctx, thread) for thread in _threads(proc)]
    if len(threads) > 1:
        yield Finding("task.threads", f"pid {proc.pid} has {len(threads)} threads", proc.pid)
    for thread in threads:
        yield from _check_thread(ctx, proc, thread)
    yield from _check_shared_pending(proc)
    yield from _check_life(ctx, proc, threads)
    yield from _check_rlimits_readable(ctx, proc, threads)
    yield from _check_shared(ctx, proc, KCMP_VM, "task.shared_mm", "address space (mm)")
    yield from _check_shared(ctx, proc, KCMP_FS, "task.shared_fs", "fs_struct (cwd, root, umask)")


# ---------------------------------------------------------------- the dumper's rights

def _check_rlimits_readable(ctx: AuditContext, proc: Proc,
                            threads: list[Thread]) -> Iterator[Finding]:
    # CRIU reads no rlimits of a zombie (dump_zombies).
    if not any(thread.live for thread in threads) or ctx.environment.has_sys_resource:
        return
    dumper = ctx.environment.credentials
    uids = _ids(proc.status.get("Uid", ""))
    gids = _ids(proc.status.get("Gid", ""))
    # The kernel always prints both lines; a fixture tree without them has no ids to compare.
    if not uids or not gids or (set(uids) == {dumper.uid} and set(gids) == {dumper.gid}):
        return
    fact = ctx.environment.sys_resource_fact()
    yield Finding("task.foreign_uid_needs_sys_resource",
                  f"pid {proc.pid} runs as uids {'/'.join(map(str, uids))} and gids "
                  f"{'/'.join(map(str, gids))} (real/effective/saved), the dumper as uid "
                  f"{dumper.uid} gid {dumper.gid}: CRIU cannot read its rlimits, since {fact}",
                  proc.pid, environment_fact=fact)


def _ids(line: str) -> tuple[int, ...]:
    """The real, effective and saved ids of a status Uid/Gid line (the fs id does not count)."""
    return tuple(int(word) for word in line.split()[:3])


# ---------------------------------------------------------------- reading threads

def _threads(proc: Proc) -> list[Thread]:
    """Every thread; one that exits while we read it is skipped (the leader's is the audit's)."""
    threads = []
    for tid in proc.tids():
        try:
            threads.append(_read_thread(proc if tid == proc.pid else proc.task(tid), tid))
        except ProcessGone:
            if tid == proc.pid:
                raise
    return threads


def _read_thread(task: Proc, tid: int) -> Thread:
    # status alone gives state, tracer and pending signals: one read less than stat + status.
    status = task.status
    state = status.get("State", "?")[:1]
    syscall = task.read("syscall").split() if state not in ("Z", "X") else []
    return Thread(tid=tid, state=state, tracer=int(status.get("TracerPid", "0")),
                  pending=int(status.get("SigPnd", "0"), 16), syscall=syscall)


def _unheld(ctx: AuditContext, thread: Thread) -> Thread:
    """The thread as it was before a gate's ptrace hold, which is no state of its own."""
    if ctx.hold is None or thread.tracer != ctx.hold.tracer:
        return thread
    return replace(thread, tracer=0, state=ctx.hold.states.get(thread.tid, "S"))


# ---------------------------------------------------------------- per thread

def _check_thread(ctx: AuditContext, proc: Proc, thread: Thread) -> Iterator[Finding]:
    if thread.tracer:
        where = ("inside the tree: CRIU cannot seize a traced task either"
                 if ctx.in_tree(thread.tracer) else "outside the tree")
        yield Finding("task.traced", f"tid {thread.tid} is traced by pid {thread.tracer} ({where})",
                      proc.pid, tid=thread.tid)
    if thread.pending & SIGTRAP_BIT:
        yield Finding("task.pending_sigtrap", f"tid {thread.tid} has a pending SIGTRAP",
                      proc.pid, tid=thread.tid)
    if thread.state not in KNOWN_STATES:
        yield Finding("task.unknown_state", f"tid {thread.tid} is in state {thread.state!r}",
                      proc.pid, tid=thread.tid)
    in_vfork = False
    if SYSCALLS is not None and len(thread.syscall) > 6 and thread.syscall[0].isdigit():
        number = int(thread.syscall[0])  # else: running, or not in a syscall
        if number == SYSCALLS.futex:
            yield from _check_futex(proc, thread)
        in_vfork = _in_vfork(proc, number, thread.syscall)
    if in_vfork:
        children = _children_text(proc, thread.tid)
        yield Finding("task.vfork", f"tid {thread.tid} is blocked in vfork() until its child "
                      f"{children} execs or exits", proc.pid, tid=thread.tid)
    elif thread.state == "D":
        yield Finding("task.uninterruptible", f"tid {thread.tid} is in uninterruptible sleep",
                      proc.pid, tid=thread.tid)


def _check_futex(proc: Proc, thread: Thread) -> Iterator[Finding]:
    # /proc/.../syscall: nr uaddr op val timeout uaddr2 val3 sp pc
    op = int(thread.syscall[2], 16)
    name = FUTEX_PI_OPS.get(op & FUTEX_CMD_MASK)
    if name is None:
        return
    # FUTEX_WAIT_REQUEUE_PI waits on a plain futex to be moved onto the PI one, uaddr2.
    address = int(thread.syscall[5 if name == "FUTEX_WAIT_REQUEUE_PI" else 1], 16)
    owner = futex_owner(proc, address)
    owned = f", held by tid {owner}" if owner else ""
    yield Finding("task.pi_futex", f"tid {thread.tid} waits in {name} on the futex at "
                  f"{address:#x}{owned}", proc.pid, tid=thread.tid)


def futex_owner(proc: Proc, address: int) -> int | None:
    """The TID in the futex word (its low 30 bits; 0: unlocked), read from the process's
    memory; None when it cannot be read."""
    try:
        with open(proc.path / "mem", "rb", buffering=0) as memory:
            memory.seek(address)
            word = memory.read(4)
    except (OSError, OverflowError):
        return None
    if len(word) != 4:
        return None
    return int.from_bytes(word, sys.byteorder) & FUTEX_TID_MASK


def _in_vfork(proc: Proc, number: int, syscall: list[str]) -> bool:
    """vfork(), or clone()/clone3() with CLONE_VFORK, still in progress."""
    if number == SYSCALLS.vfork:
        return True
    if number == SYSCALLS.clone:
        return bool(int(syscall[1], 16) & CLONE_VFORK)
    if number == SYSCALLS.clone3:
        return bool(_clone3_flags(proc, int(syscall[1], 16)) & CLONE_VFORK)
    return False


def _clone3_flags(proc: Proc, args_address: int) -> int:
    """`flags`, the first u64 of the struct clone_args that clone3() was given."""
    try:
        with open(proc.path / "mem", "rb", buffering=0) as memory:
            memory.seek(args_address)
            return int.from_bytes(memory.read(8), sys.byteorder)
    except (OSError, OverflowError):
        return 0


def _children_text(proc: Proc, tid: int) -> str:
    try:
        kids = proc.read(f"task/{tid}/children").split()
    except ProcessGone:
        kids = []
    return ", ".join(f"pid {kid}" for kid in kids) or "(already gone)"


# ---------------------------------------------------------------- per process

def _check_shared_pending(proc: Proc) -> Iterator[Finding]:
    if int(proc.status.get("ShdPnd", "0"), 16) & SIGTRAP_BIT:
        yield Finding("task.pending_sigtrap", f"pid {proc.pid} has a SIGTRAP pending for the "
                      "whole thread group", proc.pid)


def _check_life(ctx: AuditContext, proc: Proc, threads: list[Thread]) -> Iterator[Finding]:
    """Zombies and stops: judged over the whole thread group."""
    leader = next((t for t in threads if t.tid == proc.pid), None)
    live = [t for t in threads if t.live]
    if leader is not None and not leader.live:
        if live:
            tids = ", ".join(str(t.tid) for t in live)
            yield Finding("task.zombie_threads", f"pid {proc.pid} is a zombie whose threads "
                          f"{tids} still run", proc.pid)
        else:
            yield Finding("task.zombie", f"pid {proc.pid} is a zombie", proc.pid)
        return
    for thread in threads:
        if thread.state == "Z":
            yield Finding("task.zombie_threads", f"tid {thread.tid} of pid {proc.pid} is a zombie "
                          "thread", proc.pid, tid=thread.tid)
    stopped = [t for t in live if t.state == "T"]
    if not stopped:
        return
    if len(stopped) < len(live):
        tids = ", ".join(str(t.tid) for t in stopped)
        yield Finding("task.stopped_threads", f"pid {proc.pid}: threads {tids} are stopped, "
                      f"{len(live) - len(stopped)} others are not", proc.pid)
        return
    yield _group_stop(proc, ctx)


def _group_stop(proc: Proc, ctx: AuditContext) -> Finding:
    held = ctx.hold.stop_signals.get(proc.pid) if ctx.hold is not None else None
    number = held or _group_stop_signal(proc)
    if number in GROUP_STOP_SIGNALS:
        return Finding("task.stopped", f"pid {proc.pid} is stopped by "
                       f"{signal.Signals(number).name}", proc.pid)
    return Finding("task.stop_signal", f"pid {proc.pid} is stopped by {_signal_name(number)}",
                   proc.pid)


def _group_stop_signal(proc: Proc) -> int:
    """The signal of a group stop: /proc/PID/stat's exit_code field holds it while stopped."""
    fields = proc.read("stat").rpartition(")")[2].split()
    return int(fields[STAT_EXIT_CODE]) if len(fields) > STAT_EXIT_CODE else 0


def _signal_name(number: int) -> str:
    if number == 0:
        return "a signal /proc does not name"
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# ---------------------------------------------------------------- shared mm / fs

def _check_shared(ctx: AuditContext, proc: Proc, kind: int, code: str,
                  what: str) -> Iterator[Finding]:
    partners = ctx.table(("task.kcmp", kind), lambda: _sharing_groups(ctx, kind)).get(proc.pid)
    if partners:
        others = ", ".join(f"pid {pid}" for pid in partners)
        yield Finding(code, f"pid {proc.pid} shares its {what} with {others}", proc.pid)


def _sharing_groups(ctx: AuditContext, kind: int) -> dict[int, list[int]]:
    """pid -> the tree process (lowest pid) whose kernel object it shares, by kcmp as CRIU does.

    Sorting by kcmp's order puts processes that share an object side by side:
    n log n syscalls instead of comparing every pair.
    """
    if SYSCALLS is None or ctx.proc_root != DEFAULT_PROC_ROOT:
        return {}  # kcmp asks the live kernel; a fixture tree has no kernel objects
    pids = [pid for pid in sorted(ctx.tree_pids) if _has_objects(ctx, pid)]
    if len(pids) < 2:
        return {}
    order = sorted(pids, key=functools.cmp_to_key(lambda a, b: _kcmp_order(a, b, kind)))
    groups: list[list[int]] = [[order[0]]]
    for pid in order[1:]:
        if _kcmp_order(groups[-1][0], pid, kind) == 0:
            groups[-1].append(pid)
        else:
            groups.append([pid])
    shared = {}
    for group in groups:
        if len(group) > 1 and not (kind == KCMP_VM and _explained_by_vfork(ctx, group)):
            first, *others = sorted(group)
            for pid in others:  # one finding per sharer, as CRIU names the second one
                shared[pid] = [first]
    return shared


def _has_objects(ctx: AuditContext, pid: int) -> bool:
    """Zombies and kernel threads have no mm or fs: kcmp would call them all equal."""
    try:
        stat = ctx.proc(pid).stat
    except ProcessGone:
        return False
    return stat.state not in ("Z", "X") and not stat.is_kernel_thread


def _explained_by_vfork(ctx: AuditContext, group: list[int]) -> bool:
    """A vfork parent shares its mm with the child until exec: task.vfork already says so."""
    for pid in group:
        member = ctx.proc(pid)
        try:
            words = member.read("syscall").split()
        except ProcessGone:
            continue
        if len(words) > 1 and words[0].isdigit() and _in_vfork(member, int(words[0]), words):
            return True
    return False


_libc = ctypes.CDLL(None, use_errno=True)


def _kcmp_order(pid1: int, pid2: int, kind: int) -> int:
    """-1/0/1 as kcmp orders the two processes' objects; a vanished process sorts by pid."""
    result = _libc.syscall(SYSCALLS.kcmp, ctypes.c_long(pid1), ctypes.c_long(pid2),
                           ctypes.c_long(kind), ctypes.c_long(0), ctypes.c_long(0))
    if result < 0:
        return (pid1 > pid2) - (pid1 < pid2)
    return {0: 0, 1: -1, 2: 1}[result]
