"""The live state table fed synthetic probe events about real processes.

The events are made here; what they are about is real (subjects holding
/dev/kvm, a traced child, ...) or a fixture /proc tree where identity must be
forged (pid reuse). Applying must be total: out-of-order, duplicated and
missing events never raise and never leave a mark behind for good.
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from probes.events import Kind
from tests.support.live_tables import RecordingKernel, event, opened, opened_with_inode
from tests.support.subjects import subject
from tests.support.tasks import TRACED_CHILD
from tracker.clock import boot_seconds
from tracker.live import handlers, reads
from tracker.live.handlers.fds import dup_close_pairs
from tracker.live.handlers.locks import LOCK_READ_INTERVAL_NS
from tracker.live.model import CR, NOCR
from tracker.live.startup import PROBES, READY, SEEDING, Startup
from tracker.live.table import LiveTable
from tracker.procfs import CLOCK_TICKS, Proc
from tracker.profiles import profile

KVM_HOLDER = "kvm = open('/dev/kvm', 'rb', buffering=0); ready(str(kvm.fileno())); hold()"
KVM_CLOSED = ("kvm = open('/dev/kvm', 'rb', buffering=0); fd = kvm.fileno(); kvm.close(); "
              "ready(str(fd)); hold()")


@pytest.fixture
def kernel() -> RecordingKernel:
    return RecordingKernel()


@pytest.fixture
def table(kernel) -> LiveTable:
    return LiveTable(profile("criu", (4, 2, 1)), kernel)


def states(transitions) -> list[tuple[int, str]]:
    return [(t.pid, t.state) for t in transitions]


def codes(transition) -> list[str]:
    return [reason["code"] for reason in transition.reasons]


# ---------------------------------------------------------------- fds

@pytest.mark.root
def test_a_device_opened_marks_nocr_with_the_audit_reason_and_its_close_clears_it(table, kernel):
    with subject(KVM_HOLDER) as s:
        fd = int(s.note)
        entered = table.apply(opened(s.pid, fd))
        assert states(entered) == [(s.pid, NOCR)]
        assert codes(entered[0]) == ["device.chr.unsupported"]
        reason = entered[0].reasons[0]
        assert (reason["source"], reason["fd"], reason["severity"]) == ("probe", fd, "blocker")
        assert reason["since"].endswith("Z") and f"fd {fd}" in reason["message"]
        assert ("track_fd", s.pid, fd) in kernel.calls
        assert table.tracked(s.pid)["state"] == NOCR
        left = table.apply(event(Kind.FD_CLOSED, s.pid, fd=fd))
    assert states(left) == [(s.pid, CR)] and left[0].reasons == []
    assert len(table) == 0


@pytest.mark.root
def test_a_device_open_whose_record_carries_the_inode_is_judged_as_the_audit_judges_it(table,
                                                                                      kernel):
    with subject(KVM_HOLDER) as s:
        fd = int(s.note)
        audited = reads.classify_fd(Proc(s.pid), fd)
        entered = table.apply(opened_with_inode(s.pid, fd))
    assert states(entered) == [(s.pid, NOCR)]
    assert [(r["code"], r["message"]) for r in entered[0].reasons] == \
        [(finding.code, finding.message) for finding in audited[1]]
    # the kernel side tracks the fd itself, before it sends the record
    assert ("track_fd", s.pid, fd) not in kernel.calls


@pytest.mark.root
def test_a_device_open_judged_from_its_record_reads_no_proc(table):
    # The fd is closed before the event is applied: /proc has nothing to show, and the
    # mark still carries the audit's message, not one made up for a closed fd.
    with subject(KVM_CLOSED) as s:
        fd = int(s.note)
        entered = table.apply(opened_with_inode(s.pid, fd))
        assert table.counters.fallbacks == 0
    (reason,) = entered[0].reasons
    assert reason["message"] == f"fd {fd}: character device /dev/kvm (10:232) cannot be dumped"


def test_a_record_is_judged_alone_only_when_its_path_and_number_decide():
    pid = os.getpid()
    assert reads.device_from_record(opened(pid, 5)) is None  # no inode in the record
    # a path that is not what /proc shows: through a symlink, or with a `.` in it
    with open("/dev/kvm", "rb", buffering=0) as kvm:
        through_link = opened_with_inode(pid, 5, f"/dev/fd/{kvm.fileno()}")
        assert reads.device_from_record(through_link) is None
    assert reads.device_from_record(opened_with_inode(pid, 5, "/dev/./kvm")) is None
    # devices their number does not decide: a path device, a terminal (O_PATH)
    assert reads.device_from_record(opened_with_inode(pid, 5, "/dev/null", flags=os.O_PATH)) \
        is None
    assert reads.device_from_record(opened_with_inode(pid, 5, "/dev/tty", flags=os.O_PATH)) \
        is None
    target, (finding,) = reads.device_from_record(opened_with_inode(pid, 5, "/dev/kvm"))
    assert (target, finding.code, finding.fd) == ("/dev/kvm", "device.chr.unsupported", 5)


def test_a_block_device_is_judged_from_its_record_alone():
    block = next((entry.path for entry in os.scandir("/dev")
                  if stat.S_ISBLK(entry.stat(follow_symlinks=False).st_mode)), None)
    if block is None:
        pytest.skip("no block device node in /dev")
    number = os.stat(block).st_rdev
    target, (finding,) = reads.device_from_record(opened_with_inode(os.getpid(), 5, block))
    assert (target, finding.code) == (block, "device.blk")
    assert finding.message == (f"fd 5: block device {block} ({os.major(number)}:"
                               f"{os.minor(number)}) cannot be dumped")


def test_a_harmless_device_is_untracked_in_the_kernel(table, kernel):
    with subject("null = open('/dev/null'); ready(str(null.fileno())); hold()") as s:
        assert table.apply(opened(s.pid, int(s.note), "/dev/null")) == []
    assert kernel.calls == [("untrack_fd", s.pid, int(s.note))]
    assert len(table) == 0


@pytest.mark.root
def test_duplicated_events_make_one_transition_each_way(table):
    with subject(KVM_HOLDER) as s:
        fd = int(s.note)
        assert states(table.apply(opened(s.pid, fd))) == [(s.pid, NOCR)]
        assert table.apply(opened(s.pid, fd)) == []
        close = event(Kind.FD_CLOSED, s.pid, fd=fd)
        assert states(table.apply(close)) == [(s.pid, CR)]
        assert table.apply(close) == []


@pytest.mark.root
def test_a_close_delivered_before_its_open_leaves_nothing_marked(table):
    with subject(KVM_CLOSED) as s:
        fd = int(s.note)
        open_ns = time.monotonic_ns()
        assert table.apply(event(Kind.FD_CLOSED, s.pid, fd=fd)) == []
        assert table.apply(opened(s.pid, fd, ts_ns=open_ns)) == []
    assert len(table) == 0


@pytest.mark.root
def test_a_stale_close_does_not_undo_what_proc_shows_now(table):
    with subject(KVM_HOLDER) as s:
        fd = int(s.note)
        stale_close_ns = time.monotonic_ns()  # a close of an earlier file at this number
        assert states(table.apply(opened(s.pid, fd))) == [(s.pid, NOCR)]
        assert table.apply(event(Kind.FD_CLOSED, s.pid, stale_close_ns, fd=fd)) == []
        assert table.tracked(s.pid)["state"] == NOCR


@pytest.mark.root
def test_an_fd_gone_before_it_was_read_is_judged_from_the_event_until_its_close(table):
    with subject(KVM_CLOSED) as s:
        fd = int(s.note)
        entered = table.apply(opened(s.pid, fd))
        assert codes(entered[0]) == ["device.chr.unsupported"]
        assert "closed before crwatch could read it" in entered[0].reasons[0]["message"]
        assert table.counters.fallbacks == 1
        assert states(table.apply(event(Kind.FD_CLOSED, s.pid, fd=fd))) == [(s.pid, CR)]


@pytest.mark.root
def test_dup_then_closing_both_copies(table):
    code = "kvm = open('/dev/kvm', 'rb', buffering=0); copy = os.dup(kvm.fileno()); " \
           "ready(f'{kvm.fileno()} {copy}'); hold()"
    with subject(code) as s:
        fd, copy = map(int, s.note.split())
        assert states(table.apply(opened(s.pid, fd))) == [(s.pid, NOCR)]
        assert table.apply(event(Kind.FD_DUPED, s.pid, fd=copy, arg=fd)) == []
        assert table.apply(event(Kind.FD_CLOSED, s.pid, fd=fd)) == []
        assert states(table.apply(event(Kind.FD_CLOSED, s.pid, fd=copy))) == [(s.pid, CR)]


@pytest.mark.root
def test_a_copy_closed_before_its_dup_was_applied_keeps_the_originals_reason(table):
    # The tracker may apply a dup after the copy is gone: the copy was the
    # original's file meanwhile, and stays marked until its own close.
    code = "kvm = open('/dev/kvm', 'rb', buffering=0); ready(str(kvm.fileno())); hold()"
    with subject(code) as s:
        fd = int(s.note)
        copy = fd + 100  # never open in the subject
        table.apply(opened(s.pid, fd))
        assert table.apply(event(Kind.FD_DUPED, s.pid, fd=copy, arg=fd)) == []
        assert table.apply(event(Kind.FD_CLOSED, s.pid, fd=fd)) == []
        reasons = table.tracked(s.pid)["reasons"]
        assert [(r["code"], r["fd"]) for r in reasons] == [("device.chr.unsupported", copy)]
        assert reasons[0]["message"].startswith(f"fd {copy}:")
        assert states(table.apply(event(Kind.FD_CLOSED, s.pid, fd=copy))) == [(s.pid, CR)]


@pytest.mark.root
def test_close_range_clears_its_range_even_before_proc_shows_it(table):
    # Reported at syscall entry: the fds may still show in /proc when it is applied.
    with subject(KVM_HOLDER) as s:
        fd = int(s.note)
        table.apply(opened(s.pid, fd))
        assert table.apply(event(Kind.FD_RANGE_CLOSED, s.pid, arg=fd + 1, arg2=fd + 9)) == []
        closed = table.apply(event(Kind.FD_RANGE_CLOSED, s.pid, arg=0, arg2=2**32 - 1))
        assert states(closed) == [(s.pid, CR)]
    with subject(KVM_CLOSED) as s:
        fd = int(s.note)
        table.apply(opened(s.pid, fd))
        closed = table.apply(event(Kind.FD_RANGE_CLOSED, s.pid, arg=fd, arg2=fd))
        assert states(closed) == [(s.pid, CR)]


@pytest.mark.root
def test_a_fork_passes_marked_fds_on_and_the_child_is_followed(table, kernel):
    code = """
kvm = open('/dev/kvm', 'rb', buffering=0)
child = os.fork()
if child == 0:
    hold()
ready(f"{kvm.fileno()} {child}")
hold()
"""
    with subject(code) as s:
        fd, child = map(int, s.note.split())
        table.apply(opened(s.pid, fd))
        entered = table.apply(event(Kind.FORKED, s.pid, arg=child))
        assert states(entered) == [(child, NOCR)]
        assert codes(entered[0]) == ["device.chr.unsupported"]
        assert ("track_fd", child, fd) in kernel.calls
        left = table.apply(event(Kind.EXITED, child, arg=1))
        assert states(left) == [(child, CR)] and left[0].exited
        assert left[0].to_json()["exited"] is True
        assert ("forget", child) in kernel.calls


@pytest.mark.root
def test_an_exit_delivered_before_the_fork_leaves_no_entry(table):
    code = """
kvm = open('/dev/kvm', 'rb', buffering=0)
child = os.fork()
if child == 0:
    os._exit(0)
os.waitpid(child, 0)
ready(f"{kvm.fileno()} {child}")
hold()
"""
    with subject(code) as s:
        fd, child = map(int, s.note.split())
        fork_ns = time.monotonic_ns()
        table.apply(opened(s.pid, fd))
        assert table.apply(event(Kind.EXITED, child, arg=1)) == []
        assert table.apply(event(Kind.FORKED, s.pid, fork_ns, arg=child)) == []
        assert table.tracked(child) is None and len(table) == 1


@pytest.mark.root
def test_exec_keeps_inherited_fds_and_drops_close_on_exec_ones(table):
    code = """
keep = open('/dev/kvm', 'rb', buffering=0); os.set_inheritable(keep.fileno(), True)
lose = open('/dev/kvm', 'rb', buffering=0)
ready(f"{keep.fileno()} {lose.fileno()}")
os.execv("/bin/sleep", ["sleep", "60"])
"""
    with subject(code) as s:
        keep, lose = map(int, s.note.split())
        _await_comm(s.pid, "sleep")
        table.apply(opened(s.pid, keep))
        table.apply(opened(s.pid, lose, ts_ns=time.monotonic_ns()))
        # the fd `lose` is already gone: judged from the event
        table.apply(event(Kind.NONLINEAR, s.pid, arg=0x10000, arg2=0x1000))
        assert table.apply(event(Kind.EXECED, s.pid)) == []
        reasons = table.tracked(s.pid)["reasons"]
    assert [(r["code"], r["fd"]) for r in reasons] == [("device.chr.unsupported", keep)]


def _await_comm(pid: int, comm: str) -> None:
    deadline = time.monotonic() + 10
    while open(f"/proc/{pid}/comm").read().strip() != comm:
        assert time.monotonic() < deadline, f"pid {pid} never became {comm}"
        time.sleep(0.001)


# ---------------------------------------------------------------- states /proc cannot show

def test_pi_futexes_are_followed_per_thread_until_nothing_is_held(table):
    with subject("ready(); hold()") as s:
        tid, first, second = s.pid, 0x1000, 0x2000  # unreadable addresses: the events decide
        assert states(table.apply(event(Kind.PI_WAITING, s.pid, arg=first))) == [(s.pid, NOCR)]
        assert table.apply(event(Kind.PI_ACQUIRED, s.pid, arg=first)) == []
        assert [r["message"] for r in table.tracked(s.pid)["reasons"]] == [
            f"tid {tid} holds the PI futex at {first:#x}"]  # the wait became a hold
        stale = event(Kind.PI_NOT_ACQUIRED, s.pid, time.monotonic_ns() - 10**9, arg=first)
        assert table.apply(stale) == []
        assert table.apply(event(Kind.PI_ACQUIRED, s.pid, arg=second)) == []
        assert table.apply(event(Kind.PI_RELEASED, s.pid, arg=first)) == []
        assert [r["message"] for r in table.tracked(s.pid)["reasons"]] == [
            f"tid {tid} holds the PI futex at {second:#x}"]
        assert states(table.apply(event(Kind.PI_RELEASED, s.pid, arg=second))) == [(s.pid, CR)]
        assert table.apply(event(Kind.PI_RELEASED, s.pid, arg=second)) == []


def test_a_thread_exit_drops_its_pi_marks(table):
    with subject("ready(); hold()") as s:
        table.apply(event(Kind.PI_WAITING, s.pid, arg=0x1000))
        assert states(table.apply(event(Kind.EXITED, s.pid, arg=0))) == [(s.pid, CR)]
    assert len(table) == 0


def test_nonlinear_mappings_clear_when_an_overlapping_range_is_unmapped(table):
    with subject("ready(); hold()") as s:
        entered = table.apply(event(Kind.NONLINEAR, s.pid, arg=0x10000, arg2=0x3000))
        assert codes(entered[0]) == ["memory.nonlinear"]
        assert entered[0].reasons[0]["severity"] == "info"
        assert table.apply(event(Kind.UNMAPPED, s.pid, arg=0x20000, arg2=0x1000)) == []
        assert states(table.apply(event(Kind.UNMAPPED, s.pid, arg=0x12000, arg2=0x1000))) == [
            (s.pid, CR)]


def test_nonlinear_is_a_blocker_for_the_strict_profile(kernel):
    strict = LiveTable(profile("strict", (4, 2, 1)), kernel)
    with subject("ready(); hold()") as s:
        entered = strict.apply(event(Kind.NONLINEAR, s.pid, arg=0x10000, arg2=0x1000))
    assert entered[0].reasons[0]["severity"] == "blocker"


def test_the_tracked_state_is_per_profile_and_transitions_say_each(table):
    with subject("ready(); hold()") as s:
        pi = table.apply(event(Kind.PI_ACQUIRED, s.pid, arg=0x1000))  # an unreadable word: held
        assert states(pi) == [(s.pid, NOCR)] and pi[0].profiles == {"criu": "cr", "strict": "nocr"}
        assert pi[0].to_json()["profiles"] == {"criu": "cr", "strict": "nocr"}
        assert table.tracked(s.pid, profile("criu", (4, 2, 1)))["state"] == CR
        assert table.tracked(s.pid, profile("strict", (4, 2, 1)))["state"] == NOCR
        assert table.states(profile("criu", (4, 2, 1)))[s.pid][1] == CR
        found = table.probe_found([table_identity(s.pid)])
        assert [(finding.code, finding.tid) for finding, _ in found] == [("task.pi_futex", s.pid)]
        assert found[0][1].endswith("Z")
        released = table.apply(event(Kind.PI_RELEASED, s.pid, arg=0x1000))
        assert states(released) == [(s.pid, CR)]
        assert released[0].profiles == {"criu": "cr", "strict": "cr"}
        assert table.probe_found([table_identity(s.pid)]) == []


@pytest.mark.root
def test_a_profile_change_alone_is_a_transition(table):
    # nocr before and after (a PI futex held, then a device too): `criu` refuses it now
    with subject(KVM_HOLDER) as s:
        (pi,) = table.apply(event(Kind.PI_ACQUIRED, s.pid, arg=0x1000))
        later = pi.cause_ns + 5_000_000  # times are said to the millisecond
        (device,) = table.apply(opened(s.pid, int(s.note), ts_ns=later))
        assert (device.state, device.profiles) == (NOCR, {"criu": "nocr", "strict": "nocr"})
        assert codes(device) == ["device.chr.unsupported", "task.pi_futex"]
        # each profile's state began when it changed
        assert table.tracked(s.pid, profile("strict", (4, 2, 1)))["since"] == pi.ts
        assert table.tracked(s.pid, profile("criu", (4, 2, 1)))["since"] == device.ts
        assert pi.ts < device.ts


def table_identity(pid: int):
    from tracker.audit import identify

    return identify(pid)


def test_a_traced_task_is_marked_and_its_tracers_exit_clears_it(table):
    with subject(TRACED_CHILD) as s:
        child = int(s.note)
        entered = table.apply(event(Kind.TRACED, child, arg=child))  # PTRACE_TRACEME
        assert states(entered) == [(child, NOCR)] and codes(entered[0]) == ["task.traced"]
        assert f"traced by pid {s.pid}" in entered[0].reasons[0]["message"]
        left = table.apply(event(Kind.EXITED, s.pid, arg=1))
        assert states(left) == [(child, CR)]


def test_a_traced_event_for_a_task_no_longer_traced_marks_nothing(table):
    with subject("ready(); hold()") as s:
        assert table.apply(event(Kind.TRACED, 1, arg=s.pid)) == []
        assert table.apply(event(Kind.UNTRACED, 1, arg=s.pid)) == []
    assert len(table) == 0


def test_file_locks_are_read_again_on_each_change(table, kernel, tmp_path):
    code = f"""
lock = open({str(tmp_path / 'locked')!r}, 'w')
fcntl.flock(lock, fcntl.LOCK_EX)
ready(str(lock.fileno()))
signal.signal(signal.SIGUSR1, lambda *_: fcntl.flock(lock, fcntl.LOCK_UN) or ready_again())
def ready_again():
    open({str(tmp_path / 'unlocked')!r}, 'w').close()
hold()
"""
    with subject(code) as s:
        entered = table.apply(event(Kind.LOCKS_CHANGED, s.pid))
        assert codes(entered[0]) == ["lock.flock"] and entered[0].reasons[0]["severity"] == "option"
        assert ("mark_lock_holder", s.pid) in kernel.calls
        os.kill(s.pid, signal.SIGUSR1)
        _await_path(tmp_path / "unlocked")
        assert states(_locks_changed(table, s.pid)) == [(s.pid, CR)]
        assert kernel.calls.count(("locks_read", s.pid)) == 2


def _locks_changed(table: LiveTable, pid: int) -> list:
    """Apply a lock change, and the read it was deferred to if the last read was too recent."""
    transitions = table.apply(event(Kind.LOCKS_CHANGED, pid))
    due = table.next_due_ns()
    if due is not None:
        _await_monotonic(due)
        transitions += table.run_due()
    return transitions


def _await_monotonic(instant_ns: int) -> None:
    while time.monotonic_ns() < instant_ns:
        time.sleep((instant_ns - time.monotonic_ns()) / 1e9)


def test_lock_changes_within_the_read_interval_make_one_deferred_read(table, kernel, tmp_path):
    code = f"""
lock = open({str(tmp_path / 'locked')!r}, 'w')
fcntl.flock(lock, fcntl.LOCK_EX)
ready()
hold()
"""
    with subject(code) as s:
        assert states(table.apply(event(Kind.LOCKS_CHANGED, s.pid))) == [(s.pid, NOCR)]
        read_at = time.monotonic_ns()
        for _ in range(3):  # a burst of lock calls right after the read
            assert table.apply(event(Kind.LOCKS_CHANGED, s.pid)) == []
        assert table.counters.lock_reads == 1 and table.counters.lock_reads_deferred == 1
        due = table.next_due_ns()
        assert read_at < due <= read_at + LOCK_READ_INTERVAL_NS
        _await_monotonic(due)
        table.run_due()
        assert table.counters.lock_reads == 2 and table.next_due_ns() is None
        assert kernel.calls.count(("locks_read", s.pid)) == 2


def _await_path(path: Path) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.001)


@pytest.mark.root
def test_a_child_in_a_new_pid_namespace_is_nested(table):
    code = """
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x20000000) != 0:  # CLONE_NEWPID
    raise OSError(ctypes.get_errno(), "unshare")
child = os.fork()
if child == 0:
    hold()
ready(str(child))
hold()
"""
    with subject(code) as s:
        child = int(s.note)
        assert table.apply(event(Kind.NEW_PID_NS, s.pid, arg=0)) == []  # unshare: no child yet
        entered = table.apply(event(Kind.FORKED, s.pid, arg=child))
        assert states(entered) == [(child, NOCR)] and codes(entered[0]) == ["namespace.nested"]
        assert states(table.apply(event(Kind.EXITED, child, arg=1))) == [(child, CR)]


def test_sysv_shm_in_the_host_ipc_namespace(table):
    code = """
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget(0, 4096, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
address = libc.shmat(shmid, None, 0)
libc.shmctl(shmid, 0, None)  # IPC_RMID: gone once detached
ready(f"{address} {shmid}")
hold()
"""
    with subject(code) as s:
        address, shmid = map(int, s.note.split())
        entered = table.apply(event(Kind.SHM_ATTACHED, s.pid, arg=address, arg2=shmid))
        assert codes(entered[0]) == ["memory.sysv_shm.host_ipc"]
        assert states(table.apply(event(Kind.SHM_DETACHED, s.pid, arg=address))) == [(s.pid, CR)]


# ---------------------------------------------------------------- identity, churn, loss

def _write_stat(root: Path, pid: int, start_ticks: int) -> None:
    (root / str(pid)).mkdir(exist_ok=True)
    fields = ["S", "1", str(pid), str(pid), "0", "-1", "0"] + ["0"] * 12 + [str(start_ticks)]
    (root / str(pid) / "stat").write_text(f"{pid} (worker) {' '.join(fields)} 0 0\n")


def test_a_reused_pid_never_inherits_the_old_processes_marks(kernel, tmp_path):
    table = LiveTable(profile("criu", (4, 2, 1)), kernel, proc_root=tmp_path, own_pid=1)
    now_ticks = int(boot_seconds(time.monotonic_ns()) * CLOCK_TICKS)
    _write_stat(tmp_path, 4242, now_ticks - 500)
    table.apply(event(Kind.NONLINEAR, 4242, arg=0x10000, arg2=0x1000))
    old_event_ns = time.monotonic_ns() - 3 * 10**9  # before the new process started
    _write_stat(tmp_path, 4242, now_ticks - 100)  # the pid now belongs to a newer process
    dropped = table.apply(event(Kind.NONLINEAR, 4242, old_event_ns, arg=0x20000, arg2=0x1000))
    assert states(dropped) == [(4242, CR)] and dropped[0].exited
    assert table.tracked(4242) is None
    entered = table.apply(event(Kind.NONLINEAR, 4242, arg=0x30000, arg2=0x1000))
    assert states(entered) == [(4242, NOCR)]
    assert [r["message"] for r in table.tracked(4242)["reasons"]] == [
        "tid 4242: remap_file_pages() made 30000-31000 a nonlinear mapping"]


def test_events_about_processes_that_never_existed_are_ignored(table):
    gone = _gone_pid()
    for kind in set(Kind) - {Kind.LOST}:
        assert table.apply(event(kind, gone, fd=3, arg=gone)) == []
    assert len(table) == 0 and table.counters.events == len(Kind) - 1


def _gone_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.root
def test_churn_leaves_no_entry_behind(table):
    kvm = os.open("/dev/kvm", os.O_RDONLY)
    try:
        for _ in range(30):
            process = subprocess.Popen(["sleep", "60"], pass_fds=(kvm,))
            table.apply(opened(process.pid, kvm))
            process.kill()
            process.wait()
            exited = table.apply(event(Kind.EXITED, process.pid, arg=1))
            assert states(exited) == [(process.pid, CR)]
        # exits the probes never reported: the sweep finds the processes gone
        for _ in range(10):
            process = subprocess.Popen(["sleep", "60"], pass_fds=(kvm,))
            table.apply(opened(process.pid, kvm))
            process.kill()
            process.wait()
    finally:
        os.close(kvm)
    assert len(table) == 10
    assert {t.state for t in table.sweep()} == {CR}
    assert len(table) == 0 and table.counters.swept == 10


@pytest.mark.root
def test_a_loss_marks_everything_stale_and_re_audits(table, kernel):
    with subject(KVM_HOLDER) as held, subject(KVM_CLOSED) as closed:
        # judged from the event, as its fd is gone: its close is the event lost
        table.apply(opened(closed.pid, int(closed.note)))
        before = time.monotonic_ns()
        changes = table.apply(event(Kind.LOST, 0, tid=0, arg=7))
        assert (held.pid, NOCR) in states(changes) and (closed.pid, CR) in states(changes)
        reasons = table.tracked(held.pid)["reasons"]
        assert [(r["code"], r["source"]) for r in reasons] == [("device.chr.unsupported", "audit")]
        assert table.tracked(held.pid)["stale"] is False
        assert ("track_fd", held.pid, int(held.note)) in kernel.calls
        # a loss reported before that re-audit began is already covered by it
        assert table.apply(event(Kind.LOST, 0, before, tid=0, arg=3)) == []
    assert (table.counters.reaudits, table.counters.lost, table.counters.lost_reports) == (1, 10, 2)


@pytest.mark.root
def test_new_fds_queued_behind_a_loss_change_nothing_the_re_audit_read(table):
    # The re-audit after a loss read the process after its open and close: the open's
    # record, applied after it, must not mark a device the process no longer holds.
    with subject(KVM_CLOSED) as s:
        fd = int(s.note)
        opened_before = opened_with_inode(s.pid, fd, ts_ns=time.monotonic_ns())
        table.apply(event(Kind.LOST, 0, tid=0, arg=1))
        ignored = table.counters.ignored
        assert table.apply(opened_before) == []
        assert table.tracked(s.pid) is None and table.counters.ignored == ignored + 1
        # an open after the re-audit is applied as ever
        assert states(table.apply(opened_with_inode(s.pid, fd))) == [(s.pid, NOCR)]


@pytest.mark.root
def test_seed_marks_what_the_probes_would_follow(kernel):
    with subject(KVM_HOLDER) as s:
        table = LiveTable(profile("criu", (4, 2, 1)), kernel)
        seeded = table.seed()
        assert (s.pid, NOCR) in states(seeded)
        assert [r["source"] for r in table.tracked(s.pid)["reasons"]] == ["audit"]
        assert ("track_fd", s.pid, int(s.note)) in kernel.calls
        assert table.tracked(os.getpid()) is None


# ---------------------------------------------------------------- batches

def test_each_event_kind_is_applied_by_the_one_handler_family_that_owns_it():
    owned = [kind for family in handlers.FAMILIES for kind in family.HANDLERS]
    assert sorted(owned) == sorted(Kind)  # none left to be ignored, none claimed twice


def test_dup_close_pairs_only_where_nothing_else_touched_the_copy_or_its_original():
    pid, other = 100, 200
    events = [
        event(Kind.FD_DUPED, pid, fd=5, arg=3),      # 0: copy 5 of 3, closed at 3
        event(Kind.FD_DUPED, pid, fd=6, arg=3),      # 1: copy 6 of 3, closed at 4
        event(Kind.FD_OPENED, other, fd=5),          # 2: another process's fd 5
        event(Kind.FD_CLOSED, pid, fd=5),            # 3
        event(Kind.FD_CLOSED, pid, fd=6),            # 4
        event(Kind.FD_DUPED, pid, fd=7, arg=3),      # 5: its original is closed first
        event(Kind.FD_CLOSED, pid, fd=3),            # 6
        event(Kind.FD_CLOSED, pid, fd=7),            # 7
        event(Kind.FD_DUPED, pid, fd=8, arg=4),      # 8: the copy is copied again
        event(Kind.FD_DUPED, pid, fd=9, arg=8),      # 9: ... and that copy closed at once
        event(Kind.FD_CLOSED, pid, fd=9),            # 10
        event(Kind.FD_CLOSED, pid, fd=8),            # 11
        event(Kind.FD_DUPED, pid, fd=10, arg=4),     # 12: a fork in between
        event(Kind.FORKED, pid, arg=other),          # 13
        event(Kind.FD_CLOSED, pid, fd=10),           # 14
    ]
    assert dup_close_pairs(events) == {0: 3, 1: 4, 9: 10}
    assert dup_close_pairs(events + [event(Kind.LOST, 0)]) == {}


@pytest.mark.root
def test_a_copy_of_a_marked_fd_closed_untouched_is_skipped_and_counted(table):
    code = "kvm = open('/dev/kvm', 'rb', buffering=0); ready(str(kvm.fileno())); hold()"
    with subject(code) as s:
        fd = int(s.note)
        dup, close = event(Kind.FD_DUPED, s.pid, fd=fd + 1, arg=fd), \
            event(Kind.FD_CLOSED, s.pid, fd=fd + 1)
        assert not table.skip_dup_and_close(dup, close)  # the original is not marked yet
        table.apply(opened(s.pid, fd))
        assert table.skip_dup_and_close(dup, close)
        assert table.counters.coalesced == 2
        # the close is remembered: an open of that number reported late is not believed
        assert table.apply(opened(s.pid, fd + 1, ts_ns=close.ts_ns - 1)) == []
        assert [r["fd"] for r in table.tracked(s.pid)["reasons"]] == [fd]


# ---------------------------------------------------------------- start


def test_the_start_says_each_phase_and_keeps_how_long_it_took(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("tracker.live.startup.time.monotonic", lambda: now[0])
    lines: list[str] = []
    start = Startup(lines.append)
    steps = [(0.0, lambda: start.enter(PROBES, "compiling and attaching the probes")),
             (0.5, lambda: start.enter(SEEDING, "attached")),
             (1.25, lambda: start.seeded(0, 3)),     # said as it begins
             (1.5, lambda: start.seeded(1, 3)),      # too soon after
             (2.0, lambda: start.seeded(2, 3)),
             (3.0, lambda: start.enter(READY, "ready"))]
    for at, step in steps:
        now[0] = at
        step()
    assert lines == ["compiling and attaching the probes [0.0 s]", "attached [0.5 s]",
                     "seeding: 0/3 processes audited [1.2 s]",
                     "seeding: 2/3 processes audited [2.0 s]", "ready [3.0 s]"]
    assert start.as_dict() == {"phase": "ready",
                               "seconds": {"probes": 0.5, "seeding": 2.5, "total": 3.0}}
