"""Task state: threads, tracers, zombies, stops, vfork, shared mm/fs, PI futexes.

CRIU seizes every thread of the tree with ptrace (compel's PTRACE_SEIZE +
PTRACE_INTERRUPT), so whatever stops a seize stops the dump: another tracer,
a stop signal it does not know, a thread that cannot be interrupted. A
group stop's signal is in /proc/PID/stat until the parent reaps the stop
with wait(WUNTRACED); the kernel keeps it, and compel reads it from the
trap PTRACE_INTERRUPT reports (infect.c, compel_wait_task): so does crwatch,
for such a stop only, seizing and detaching at once. After the
seize it gives each process kernel-object ids with kcmp and refuses two
processes that share an mm or fs_struct without being threads of one group,
or an fd table unless one is the other's parent (cr-dump.c dump_task_kobj_ids,
pstree.h shared_fdtable).
It reads every live process's rlimits with prlimit64() (cr-dump.c
dump_task_rlimits), which the kernel refuses to a dumper whose real uid and
gid differ from any of the target's, unless the dumper holds CAP_SYS_RESOURCE
(kernel/sys.c check_prlimit_permission).

Two limits of CRIU's own buffers: the parasite copies a thread's supplementary
groups into one page (pie/parasite.c dump_creds, PARASITE_MAX_GROUPS), and
CRIU reads /proc/PID/status and smaps a line at a time into a page (bfd.c
breadline): a longer line fails the dump. (Its other bfd reads have short lines,
or split children at spaces.)
"""
from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import time
from typing import Iterator, NamedTuple

from tracker.checks import tree
from tracker.context import AuditContext
from tracker.procfs import DEFAULT_PROC_ROOT, Proc, ProcessGone
from tracker.rules import BLOCKER, INFO, Finding, Rule, id_list, pid_list

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
    Rule("task.zombie_root", "The root of the dump is a zombie", BLOCKER,
         "checkpoint the tree of its parent, where CRIU restores it as a zombie child, or let "
         "the parent reap it: CRIU cannot seize a zombie as the root",
         criu_message="Unable to interrupt task: %d (%s)"),
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
    Rule("task.shared_files", "A process shares its fd table (CLONE_FILES) with a process of the "
         "tree that is not its parent", BLOCKER,
         "checkpoint a tree whose processes share an fd table only with their parent (clone "
         "without CLONE_FILES, or call unshare(CLONE_FILES) in the child)",
         criu_message="Can't make FILES id for %d"),
    Rule("task.too_many_groups", "A thread has 974 or more supplementary groups", BLOCKER,
         "drop supplementary groups (setgroups) to fewer than 974 before checkpointing: CRIU's "
         "parasite copies them into one page", criu_message="Too many groups in task %d"),
    Rule("task.proc_line_too_long", "A line of /proc/PID/status or smaps is 4096 bytes or "
         "longer", BLOCKER,
         "shorten what makes the line long before checkpointing (fewer or shorter supplementary "
         "group ids, a mapped file reached through a shorter path): CRIU reads "
         "these files a line at a time into a 4096-byte buffer",
         criu_message="The bfd buffer is too small"),
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
KCMP_VM, KCMP_FILES, KCMP_FS = 1, 2, 3
STAT_EXIT_CODE = 49  # field 52 of /proc/PID/stat, counted after the ")" of comm
PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 17, 0x4206, 0x4207
PTRACE_EVENT_STOP = 128
WALL = 0x40000000    # __WALL
TRAP_TIMEOUT = 5.0   # a task in group stop traps at once; this only bounds the wait
# PARASITE_MAX_GROUPS of CRIU 4.2 on x86_64 with 4 KiB pages (what fits in a page after the
# thread's other dump arguments): 973 groups dump, 974 are refused (measured with 4.2.1).
PARASITE_MAX_GROUPS = 974
LINE_BUFFER = 4096   # bfd.c BUFSIZE: a line must fit in it with its "\n"
# A status line is its value and less than this, a maps line its path and less than this:
# only a longer value or path can make a line too long, and only then is the text measured.
LINE_HEAD = 128


class Syscalls(NamedTuple):
    """The syscall numbers of one architecture that the checks look for."""

    clone: int
    clone3: int
    futex: int
    kcmp: int
    vfork: int | None


SYSCALLS = {
    "x86_64": Syscalls(clone=56, clone3=435, futex=202, kcmp=312, vfork=58),
    "aarch64": Syscalls(clone=220, clone3=435, futex=98, kcmp=272, vfork=None),
}.get(os.uname().machine)


class Thread(NamedTuple):
    """What the checks need of one thread, read once."""

    tid: int
    state: str
    tracer: int
    pending: int       # SigPnd: signals pending for this thread alone
    syscall: list[str]  # /proc/.../syscall split in words; [] when not read
    groups: int = 0    # supplementary groups
    longest_status_value: int = 0  # bytes of the longest value in its status

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
    yield from _check_buffers(proc, threads)
    yield from _check_life(ctx, proc, threads)
    yield from _check_rlimits_readable(ctx, proc, threads)
    yield from _check_shared(ctx, proc, KCMP_VM, "task.shared_mm", "address space (mm)")
    yield from _check_shared(ctx, proc, KCMP_FS, "task.shared_fs", "fs_struct (cwd, root, umask)")
    yield from _check_shared_files(ctx, proc)


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
                  pending=int(status.get("SigPnd", "0"), 16), syscall=syscall,
                  groups=len(status.get("Groups", "").split()),
                  longest_status_value=max(map(len, status.values()), default=0))


def _unheld(ctx: AuditContext, thread: Thread) -> Thread:
    """The thread as it was before a gate's ptrace hold, which is no state of its own."""
    if ctx.hold is None or thread.tracer != ctx.hold.tracer:
        return thread
    return thread._replace(tracer=0, state=ctx.hold.states.get(thread.tid, "S"))


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
    return pid_list(map(int, kids)) if kids else "(already gone)"


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
            tids = id_list(t.tid for t in live)
            yield Finding("task.zombie_threads", f"pid {proc.pid} is a zombie whose threads "
                          f"{tids} still run", proc.pid)
        elif proc.pid == ctx.root_pid:
            # compel's seize fails on a zombie; only zombies found below the root are
            # dumped as such (collect_pstree warns and fails without an error line)
            yield Finding("task.zombie_root", f"pid {proc.pid} is a zombie, and the root of the "
                          "dump: CRIU cannot seize it", proc.pid)
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
        tids = id_list(t.tid for t in stopped)
        yield Finding("task.stopped_threads", f"pid {proc.pid}: threads {tids} are stopped, "
                      f"{len(live) - len(stopped)} others are not", proc.pid)
        return
    yield _group_stop(proc, ctx)


def _group_stop(proc: Proc, ctx: AuditContext) -> Finding:
    held = ctx.hold.stop_signals.get(proc.pid) if ctx.hold is not None else None
    number = held or _group_stop_signal(proc)
    reaped = ""
    if not number:
        number = _reaped_stop_signal(ctx, proc)
        reaped = " (its parent has already reaped the stop)" if number else ""
    if number in GROUP_STOP_SIGNALS:
        return Finding("task.stopped", f"pid {proc.pid} is stopped by "
                       f"{signal.Signals(number).name}{reaped}", proc.pid)
    return Finding("task.stop_signal", f"pid {proc.pid} is stopped by "
                   f"{_signal_name(number)}{reaped}", proc.pid)


def _group_stop_signal(proc: Proc) -> int:
    """The signal of a group stop: /proc/PID/stat's exit_code field holds it while stopped."""
    fields = proc.read("stat").rpartition(")")[2].split()
    return int(fields[STAT_EXIT_CODE]) if len(fields) > STAT_EXIT_CODE else 0


def _reaped_stop_signal(ctx: AuditContext, proc: Proc) -> int:
    """The signal of a group stop whose report the parent took, asked as compel asks it:
    PTRACE_SEIZE, PTRACE_INTERRUPT, and the signal of the PTRACE_EVENT_STOP trap. The task
    goes back to its group stop on detach. 0 when it cannot be asked."""
    if ctx.proc_root != DEFAULT_PROC_ROOT or ctx.hold is not None:
        return 0        # a fixture has no task; a gate's hold already asked
    if _ptrace(PTRACE_SEIZE, proc.pid) != 0:
        return 0        # traced by someone else (task.traced says so), or gone
    try:
        if _ptrace(PTRACE_INTERRUPT, proc.pid) != 0:
            return 0
        status = _await_trap(proc.pid)
    finally:
        _ptrace(PTRACE_DETACH, proc.pid)
    if status is None or not os.WIFSTOPPED(status) or status >> 16 != PTRACE_EVENT_STOP:
        return 0
    number = os.WSTOPSIG(status)
    return 0 if number == signal.SIGTRAP else number    # SIGTRAP: it was no longer stopped


def _await_trap(pid: int) -> int | None:
    deadline = time.monotonic() + TRAP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            waited, status = os.waitpid(pid, os.WNOHANG | WALL)
        except ChildProcessError:
            return None
        if waited:
            return status
        time.sleep(0.0005)
    return None


def _ptrace(request: int, pid: int) -> int:
    return _libc.ptrace(request, pid, None, None)


def _signal_name(number: int) -> str:
    if number == 0:
        return "a signal /proc does not name"
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# ---------------------------------------------------------------- CRIU's buffers

def _check_buffers(proc: Proc, threads: list[Thread]) -> Iterator[Finding]:
    for thread in threads:
        if not thread.live:
            continue    # CRIU neither seizes nor asks the parasite about a dead thread
        if thread.groups >= PARASITE_MAX_GROUPS:
            yield Finding("task.too_many_groups", f"tid {thread.tid} has {thread.groups} "
                          f"supplementary groups; CRIU's parasite holds at most "
                          f"{PARASITE_MAX_GROUPS - 1}", proc.pid, tid=thread.tid)
        if thread.longest_status_value >= LINE_BUFFER - LINE_HEAD:
            task = proc if thread.tid == proc.pid else proc.task(thread.tid)
            try:
                status = task.read("status")
            except ProcessGone:
                continue    # the thread ended meanwhile
            yield from _long_lines(proc, thread.tid, f"{thread.tid}/status", status,
                                   "drop supplementary groups, or use shorter group ids, before "
                                   "checkpointing")
    try:
        mappings = proc.maps
    except ProcessGone:
        return          # gone meanwhile (the audit's end says so), or a fixture without maps
    if any(len(mapping.path) >= LINE_BUFFER - LINE_HEAD for mapping in mappings):
        yield from _long_lines(proc, None, f"{proc.pid}/smaps", proc.read("maps"),
                               "map the file (or run the executable) through a shorter path "
                               "before checkpointing")


def _long_lines(proc: Proc, tid: int | None, name: str, text: str,
                remedy: str) -> Iterator[Finding]:
    """The lines CRIU's buffered reader cannot hold: 4096 bytes or more before their "\n"."""
    for line in text.split("\n"):
        size = len(line.encode("utf-8", "surrogateescape"))
        if size >= LINE_BUFFER:
            head = line[:40].rstrip()
            yield Finding("task.proc_line_too_long", f"/proc/{name} has a line of {size} bytes "
                          f"({head}...), more than CRIU's 4095", proc.pid, tid=tid,
                          remedy=remedy)


# ---------------------------------------------------------------- shared mm / fs

def _check_shared(ctx: AuditContext, proc: Proc, kind: int, code: str,
                  what: str) -> Iterator[Finding]:
    partners = ctx.table(("task.kcmp", kind), lambda: _sharing_groups(ctx, kind)).get(proc.pid)
    if partners:
        others = pid_list(partners)
        yield Finding(code, f"pid {proc.pid} shares its {what} with {others}", proc.pid)


def _sharing_groups(ctx: AuditContext, kind: int) -> dict[int, list[int]]:
    """pid -> the tree process (lowest pid) whose kernel object it shares, by kcmp as CRIU does."""
    shared = {}
    for group in _kcmp_groups(ctx, kind):
        if not (kind == KCMP_VM and _explained_by_vfork(ctx, group)):
            first, *others = sorted(group)
            for pid in others:  # one finding per sharer, as CRIU names the second one
                shared[pid] = [first]
    return shared


def _kcmp_groups(ctx: AuditContext, kind: int) -> list[list[int]]:
    """The tree's processes that share one kernel object of `kind`, two or more a group.

    Sorting by kcmp's order puts processes that share an object side by side:
    n log n syscalls instead of comparing every pair.
    """
    if SYSCALLS is None or ctx.proc_root != DEFAULT_PROC_ROOT:
        return []  # kcmp asks the live kernel; a fixture tree has no kernel objects
    pids = [pid for pid in sorted(ctx.tree_pids) if _has_objects(ctx, pid)]
    if len(pids) < 2:
        return []
    order = sorted(pids, key=functools.cmp_to_key(lambda a, b: _kcmp_order(a, b, kind)))
    groups: list[list[int]] = [[order[0]]]
    for pid in order[1:]:
        if _kcmp_order(groups[-1][0], pid, kind) == 0:
            groups[-1].append(pid)
        else:
            groups.append([pid])
    return [group for group in groups if len(group) > 1]


def _check_shared_files(ctx: AuditContext, proc: Proc) -> Iterator[Finding]:
    first = ctx.table(("task.kcmp", KCMP_FILES), lambda: _files_sharing(ctx)).get(proc.pid)
    if first:
        yield Finding("task.shared_files", f"pid {proc.pid} shares its fd table with pid {first}, "
                      f"which is not its parent (CLONE_FILES)", proc.pid)


def _files_sharing(ctx: AuditContext) -> dict[int, int]:
    """pid -> the process it shares its fd table with, where CRIU refuses the sharing.

    CRIU names fd tables in the tree's order (parents first, depth first): a table it
    has named already is accepted only as the parent's. In a group sharing one table,
    the members whose parent is in the group are fine, the first of the others names
    the table, and every later one is refused.
    """
    refused = {}
    for group in _kcmp_groups(ctx, KCMP_FILES):
        members = set(group)
        outside = [pid for pid in tree.dump_order(ctx) if pid in members
                   and _parent(ctx, pid) not in members]
        for pid in outside[1:]:
            refused[pid] = outside[0]
    return refused


def _parent(ctx: AuditContext, pid: int) -> int:
    try:
        return ctx.proc(pid).stat.ppid
    except ProcessGone:
        return 0


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
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


def _kcmp_order(pid1: int, pid2: int, kind: int) -> int:
    """-1/0/1 as kcmp orders the two processes' objects; a vanished process sorts by pid."""
    result = _libc.syscall(SYSCALLS.kcmp, ctypes.c_long(pid1), ctypes.c_long(pid2),
                           ctypes.c_long(kind), ctypes.c_long(0), ctypes.c_long(0))
    if result < 0:
        return (pid1 > pid2) - (pid1 < pid2)
    return {0: 0, 1: -1, 2: 1}[result]
