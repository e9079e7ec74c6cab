"""task: thread states, stop signals, syscall lines and tracers on fixture /proc trees."""
from __future__ import annotations

from pathlib import Path

import pytest

from tracker.checks import task
from tracker.context import AuditContext
from tracker.procfs import Proc

PID, THREAD, CHILD, STRANGER = 100, 101, 102, 300
needs_syscall_table = pytest.mark.skipif(task.SYSCALLS is None,
                                         reason="no syscall table for this architecture")


def stat_line(pid: int, state: str, *, threads: int = 1, exit_code: int = 0) -> str:
    fields = ["0"] * 50
    fields[0], fields[1], fields[2], fields[3] = state, "1", str(pid), str(pid)
    fields[17], fields[49] = str(threads), str(exit_code)
    return f"{pid} (subject) {' '.join(fields)}\n"


class Tree:
    """A fixture /proc holding one process, PID, and the threads given to `thread()`."""

    def __init__(self, root: Path):
        self.root = root
        self.tids: list[int] = []

    def thread(self, tid: int, state: str = "S", *, tracer: int = 0, sigpnd: int = 0,
               shdpnd: int = 0, syscall: str = "-1 0x0 0x0", exit_code: int = 0,
               children: str = "") -> None:
        self.tids.append(tid)
        status = (f"Name:\tsubject\nState:\t{state} (x)\nTgid:\t{PID}\nPid:\t{tid}\n"
                  f"TracerPid:\t{tracer}\nSigPnd:\t{sigpnd:016x}\nShdPnd:\t{shdpnd:016x}\n")
        stat = stat_line(tid, state, threads=len(self.tids), exit_code=exit_code)
        places = [self.root / str(PID) / "task" / str(tid)]
        if tid == PID:
            places.append(self.root / str(PID))
        for place in places:
            place.mkdir(parents=True, exist_ok=True)
            (place / "stat").write_text(stat)
            (place / "status").write_text(status)
            (place / "syscall").write_text(syscall + "\n")
            (place / "children").write_text(children)

    def findings(self, tree_pids: frozenset[int] = frozenset({PID}), root: int = PID) -> list:
        ctx = AuditContext(root_pid=root, tree_pids=set(tree_pids), proc_root=self.root)
        return list(task.check_process(ctx, Proc(PID, self.root)))


@pytest.fixture
def tree(tmp_path) -> Tree:
    return Tree(tmp_path)


def codes(findings) -> list[str]:
    return sorted(f.code for f in findings)


def test_a_sleeping_single_thread_has_no_finding(tree):
    tree.thread(PID)
    assert tree.findings() == []


def test_threads_are_counted(tree):
    tree.thread(PID)
    tree.thread(THREAD)
    assert [f.message for f in tree.findings()] == [f"pid {PID} has 2 threads"]


@pytest.mark.parametrize(("signal_number", "code", "name"), [
    (19, "task.stopped", "SIGSTOP"), (20, "task.stopped", "SIGTSTP"),
    (21, "task.stop_signal", "SIGTTIN"), (22, "task.stop_signal", "SIGTTOU"),
    (0, "task.stop_signal", "a signal /proc does not name"),
])
def test_the_group_stop_signal_is_read_from_the_exit_code_field(tree, signal_number, code, name):
    tree.thread(PID, "T", exit_code=signal_number)
    [finding] = tree.findings()
    assert finding.code == code and finding.message == f"pid {PID} is stopped by {name}"


def test_threads_stopped_alone_are_refused(tree):
    tree.thread(PID)
    tree.thread(THREAD, "T")
    assert codes(tree.findings()) == ["task.stopped_threads", "task.threads"]


def test_a_tracer_is_named_inside_or_outside_the_tree(tree):
    tree.thread(PID, "t", tracer=STRANGER)
    tree.thread(THREAD, "t", tracer=CHILD)
    traced = [f for f in tree.findings(frozenset({PID, CHILD})) if f.code == "task.traced"]
    assert [(f.tid, "outside" in f.message) for f in traced] == [(PID, True), (THREAD, False)]


def test_pending_sigtrap_per_thread_and_per_group(tree):
    tree.thread(PID, shdpnd=1 << 4)
    tree.thread(THREAD, sigpnd=1 << 4)
    found = [(f.tid, f.message) for f in tree.findings() if f.code == "task.pending_sigtrap"]
    assert found == [(THREAD, f"tid {THREAD} has a pending SIGTRAP"),
                     (None, f"pid {PID} has a SIGTRAP pending for the whole thread group")]


def test_zombies_below_the_root_are_noted(tree):
    tree.thread(PID, "Z")
    assert codes(tree.findings({1, PID}, root=1)) == ["task.zombie"]


def test_a_zombie_root_is_refused(tree):
    tree.thread(PID, "Z")
    assert codes(tree.findings()) == ["task.zombie_root"]


def test_a_zombie_leader_with_running_threads_is_refused(tree):
    tree.thread(PID, "Z")
    tree.thread(THREAD)
    zombie = [f for f in tree.findings() if f.code == "task.zombie_threads"]
    assert zombie[0].message == f"pid {PID} is a zombie whose threads {THREAD} still run"


def test_an_unknown_state_is_refused(tree):
    tree.thread(PID, "W")
    assert codes(tree.findings()) == ["task.unknown_state"]


@needs_syscall_table
@pytest.mark.parametrize(("op", "name", "address"), [
    (0x86, "FUTEX_LOCK_PI", "0x7f0000001000"),
    (0x0D, "FUTEX_LOCK_PI2", "0x7f0000001000"),
    (0x186, "FUTEX_LOCK_PI", "0x7f0000001000"),  # with FUTEX_CLOCK_REALTIME
    (0x8B, "FUTEX_WAIT_REQUEUE_PI", "0x7f0000003000"),  # the PI futex is uaddr2
])
def test_pi_futex_waiters_are_recognised_by_the_futex_op(tree, op, name, address):
    tree.thread(PID, syscall=f"{task.SYSCALLS.futex} 0x7f0000001000 {op:#x} 0x0 0x0 "
                             "0x7f0000003000 0x0 0x7ffc0000 0x7f0000002000")
    [finding] = tree.findings()
    # The fixture has no mem file: the owner is simply not named.
    assert (finding.code, finding.message) == (
        "task.pi_futex", f"tid {PID} waits in {name} on the futex at {address}")


@needs_syscall_table
def test_plain_futex_waits_are_not_reported(tree):
    tree.thread(PID, syscall=f"{task.SYSCALLS.futex} 0x7f0000001000 0x80 0x0 0x0 0x0 0x0 0x0 0x0")
    assert tree.findings() == []


@needs_syscall_table
def test_a_parent_in_vfork_is_refused_and_names_its_child(tree):
    number = task.SYSCALLS.vfork if task.SYSCALLS.vfork is not None else task.SYSCALLS.clone
    tree.thread(PID, "D", syscall=f"{number} 0x4111 0x0 0x0 0x0 0x0 0x0 0x0 0x0",
                children=f"{CHILD} ")
    [finding] = tree.findings()
    assert finding.code == "task.vfork"
    assert finding.message == f"tid {PID} is blocked in vfork() until its child pid {CHILD} " \
                              "execs or exits"


@needs_syscall_table
def test_clone_with_clone_vfork_is_a_vfork_and_without_it_is_not(tree):
    assert task._in_vfork(Proc(PID, tree.root), task.SYSCALLS.clone, ["56", "0x4111"])
    assert not task._in_vfork(Proc(PID, tree.root), task.SYSCALLS.clone, ["56", "0x1200011"])


@needs_syscall_table
def test_other_uninterruptible_sleeps_are_only_noted(tree):
    tree.thread(PID, "D", syscall="0 0x3 0x0 0x0 0x0 0x0 0x0 0x0 0x0")
    assert codes(tree.findings()) == ["task.uninterruptible"]


def test_shared_mm_is_not_judged_on_a_fixture_tree(tree):
    # kcmp asks the live kernel; a fixture tree has no kernel objects to compare.
    tree.thread(PID)
    ctx = AuditContext(root_pid=PID, tree_pids={PID, CHILD}, proc_root=tree.root)
    assert task._sharing_groups(ctx, task.KCMP_VM) == {}
