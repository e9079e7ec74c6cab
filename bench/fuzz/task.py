"""Task states: threads, zombies, stops, ptrace, vfork, sharing, credentials, signals
(tracker/checks/task.py; CRIU seize.c, cr-dump.c, pstree.c)."""
from __future__ import annotations

import ctypes
import os
import signal
import struct
import threading
import time

from bench.fuzz import generator, not_root
from bench.fuzz.runtime import check, hold, libc, state_of, syscall, thread_states

PTRACE_TRACEME, PTRACE_SEIZE, PTRACE_INTERRUPT = 0, 0x4206, 0x4207
CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x200, 0x400, 0x800


def wait_until(pid: int, states: str, what: str, every_thread: bool = False) -> None:
    deadline = time.monotonic() + 10
    while not (thread_states(pid) <= set(states) if every_thread else state_of(pid) in states):
        if time.monotonic() > deadline:
            raise OSError(0, f"{what}: pid {pid} never reached state {states}")
        time.sleep(0.001)


@generator("task", weight=2, stage="threads", draw=lambda rng, place: {"count": rng.choice((1, 2, 4))})
def threads(ctx, count):
    """extra threads, idle in a wait"""
    for _ in range(count):
        threading.Thread(target=hold, daemon=True).start()


@generator("task", draw=lambda rng, place: {"count": rng.choice((1, 2))})
def zombie_child(ctx, count):
    """children that have exited and were not reaped"""
    for _ in range(count):
        pid = ctx.fork()
        if pid == 0:
            os._exit(0)
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)   # exited, left unreaped


@generator("task", weight=0.5)
def zombie_leader_with_threads(ctx):
    """a child whose main thread exited while another of its threads runs"""
    read_end, write_end = os.pipe()
    pid = ctx.fork()
    if pid == 0:
        threading.Thread(target=hold).start()
        os.write(write_end, b"x")
        libc.syscall(60, 0)   # exit(): the main thread alone
    os.read(read_end, 1)
    os.close(read_end)
    os.close(write_end)
    wait_until(pid, "Z", "zombie leader")


@generator("task", weight=0.3, stage="final", fits=not_root, exclusive=True, single_threaded=True)
def vfork_in_progress(ctx, report):
    """the process blocked in vfork(): its child reports for it and holds, never exec'ing"""
    if threading.active_count() > 1:
        raise OSError(0, "vfork with other threads running")
    libc.vfork.restype = ctypes.c_int
    if libc.vfork() == 0:
        report()        # the parent's memory is ours: report, then wait for the end
        while True:
            libc.pause()
    hold()


def draw_stop(rng, place):
    return {"sig": "SIGSTOP" if place.is_root else rng.choice(("SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU"))}


def stop(pid: int, sig: str) -> None:
    """Stop the child `pid` with `sig`, and wait until it is stopped."""
    number = signal.Signals[sig]
    if number != signal.SIGSTOP:
        if os.getsid(pid) != os.getsid(0):
            # its group is orphaned (its parent is in another session): the kernel would
            # discard the job-control stop
            raise OSError(0, f"{sig} to pid {pid}, which leads a session of its own")
        try:
            os.setpgid(pid, pid)   # in a group of its own, to be stopped alone
        except OSError:
            pass   # it leads its group already
    os.kill(pid, number)
    # A group stop reaches the threads one by one: the state is built once all have stopped.
    wait_until(pid, "T", "stop", every_thread=True)


# A process blocked in vfork() sleeps uninterruptibly: no stop or trace stop reaches it.
NOT_WITH_VFORK = ("vfork_in_progress",)


@generator("task", weight=1.5, stage="by_parent", draw=draw_stop, conflicts=NOT_WITH_VFORK)
def stopped(ctx, pid, sig):
    """the process stopped by its parent with SIGSTOP, SIGTSTP, SIGTTIN or SIGTTOU (job-control
    stops in a process group of its own), the stop not reaped by the parent"""
    stop(pid, sig)


@generator("task", stage="by_parent", draw=draw_stop, conflicts=NOT_WITH_VFORK)
def stopped_and_reaped(ctx, pid, sig):
    """the process stopped by its parent, which reaped the stop with waitpid(WUNTRACED)"""
    stop(pid, sig)
    os.waitpid(pid, os.WUNTRACED)


@generator("task", stage="by_parent", fits=not_root, conflicts=NOT_WITH_VFORK,
           draw=lambda rng, place: {"interrupt": rng.random() < 0.5})
def traced_by_parent(ctx, pid, interrupt):
    """the process seized with ptrace by its parent, running or in a trace stop"""
    check(libc.ptrace(PTRACE_SEIZE, pid, None, None), "PTRACE_SEIZE")
    if interrupt:
        check(libc.ptrace(PTRACE_INTERRUPT, pid, None, None), "PTRACE_INTERRUPT")
        os.waitpid(pid, 0x40000000)   # __WALL: the trace stop


@generator("task", weight=0.5, stage="threads", fits=not_root, once=True)
def ptrace_traceme(ctx):
    """the process asked its parent to trace it (PTRACE_TRACEME), last (a signal it gets later,
    a SIGCHLD say, would stop it for a tracer that never answers)"""
    check(libc.ptrace(PTRACE_TRACEME, 0, None, None), "PTRACE_TRACEME")


@generator("task", stage="threads", draw=lambda rng, place: {"in_thread": rng.random() < 0.5})
def pending_sigtrap(ctx, in_thread):
    """a SIGTRAP blocked and pending, for the process or for one thread"""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTRAP})
    send_blocked(signal.SIGTRAP, to_thread=in_thread)


def send_blocked(number: int, *, to_thread: bool) -> None:
    """Leave `number`, blocked in this thread, pending for the thread or for the process. Other
    threads (a lock waiter, say) do not block it: only a lone thread may take a process-wide one."""
    if to_thread or threading.active_count() > 1:
        signal.pthread_kill(threading.get_ident(), number)
    else:
        os.kill(os.getpid(), number)


@generator("task", draw=lambda rng, place: {"signals": rng.sample((10, 12, 14, 17, 28), 2),
                                            "handler": rng.random() < 0.5})
def signal_state(ctx, signals, handler):
    """signals blocked and pending, a handler installed, an alternate stack"""
    chosen = {signal.Signals(number) for number in signals}
    if handler:
        for number in chosen:
            signal.signal(number, lambda *args: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, chosen)
    for number in chosen:
        send_blocked(number, to_thread=False)


@generator("task", draw=lambda rng, place: {"itimer": rng.random() < 0.5, "posix_timer": rng.random() < 0.5})
def timers(ctx, itimer, posix_timer):
    """an interval timer and a POSIX timer, armed far in the future"""
    if itimer:
        signal.signal(signal.SIGALRM, lambda *args: None)
        signal.setitimer(signal.ITIMER_REAL, 3600, 3600)
    if posix_timer:
        timer = ctypes.c_int(0)
        check(libc.timer_create(1, None, ctypes.byref(timer)), "timer_create")
        spec = (ctypes.c_long * 4)(3600, 0, 3600, 0)
        check(libc.timer_settime(timer, 0, spec, None), "timer_settime")


@generator("task", weight=0.7, draw=lambda rng, place: {"flags": rng.choice(("fs", "files", "fs_files"))})
def clone_sharing_child(ctx, flags):
    """a child cloned sharing fs or files (CLONE_FS/CLONE_FILES) without being a thread"""
    value = {"fs": CLONE_FS, "files": CLONE_FILES, "fs_files": CLONE_FS | CLONE_FILES}[flags]
    pid = syscall(56, value | signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        if not value & CLONE_FILES:   # a shared fd table closes the report pipe with the parent
            os.close(ctx.report_fd)
        while True:
            libc.pause()


@generator("task", stage="privileges", draw=lambda rng, place: {"keep_gid": rng.random() < 0.3})
def uid_nobody(ctx, keep_gid):
    """the process's uids (and gids) changed to 65534 with setresuid/setresgid"""
    if not keep_gid:
        os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)


@generator("task", fits=not_root, draw=lambda rng, place: {"kind": rng.choice(("setsid", "setpgid"))})
def session(ctx, kind):
    """the process leading a session or a process group of its own"""
    if kind == "setsid":
        os.setsid()
    else:
        os.setpgid(0, 0)


@generator("task", draw=lambda rng, place: {"mode": rng.choice(("filter", "no_new_privs"))})
def seccomp(ctx, mode):
    """a seccomp filter that allows everything (or only no_new_privs set)"""
    check(libc.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    if mode == "filter":
        program = ctx.keep(ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0x7fff0000)))
        fprog = ctx.keep(ctypes.create_string_buffer(struct.pack("HxxxxxxQ", 1, ctypes.addressof(program))))
        syscall(317, 1, 0, fprog)   # seccomp(SECCOMP_SET_MODE_FILTER)


@generator("task", draw=lambda rng, place: {"nice": rng.choice((0, 5)), "personality": rng.random() < 0.3,
                                            "rlimit": rng.random() < 0.5})
def task_attributes(ctx, nice, personality, rlimit):
    """a nice value, a personality flag, a lowered rlimit"""
    import resource
    os.nice(nice)
    if personality:
        check(libc.personality(0x0040000), "personality")   # ADDR_NO_RANDOMIZE
    if rlimit:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


