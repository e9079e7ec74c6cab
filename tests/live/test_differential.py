"""Differential test: the tracker's live state against a fresh /proc audit.

Several real processes (tests/support/differential_subject.py) change their state on
command in a randomized sequence (seeded; the seed is printed, and
CRWATCH_DIFF_SEED replays one): they open device nodes, perf_event and
userfaultfd fds and TCP connections, dup, dup2, close and close_range them,
take and release flock and POSIX locks and PI futexes, attach and detach SysV shm, fork
children that inherit all that and obey commands of their own, exec keeping
some fds, and exit. A real Tracker runs meanwhile.

At random instants, once every subject has answered (it then keeps still)
and the tracker has applied every event up to that point, the tracked state
of each process (nocr/cr and its reasons, as (code, fd) pairs) is compared
with what a fresh audit finds, filtered to the kinds of state the tracker
follows. PI futexes held are compared with what the process says it holds
(the audit sees only waiters, and a subject never waits). "Applied every event"
is awaited with a barrier: a helper process
opens and closes /dev/kvm, and the tracker is done with everything before
once it publishes the helper's `cr` transition (the probes' ring buffer is
read in order, and events are applied in order).

A comparison that differs is awaited and made again (a second barrier). The
sequences steer clear of the limits documented in docs/tracking-limits.md
that would make a difference last (each is shown by a test_limit_* test
below), so a difference that stays fails the test: it is a bug, or a limit
to document.
"""
from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.differential_subject import PI_FUTEXES
from tests.support.subjects import Subject, start
from tests.support.trackers import attached_tracker
from tracker.audit import audit
from tracker.live import reads
from tracker.live.applier import Tracker
from tracker.live.model import CR, Transition
from tracker.procfs import Proc, ProcessGone

pytestmark = [pytest.mark.bpf]

SUBJECT = Path(__file__).resolve().parents[1] / "support" / "differential_subject.py"
SUBJECTS = 4
MAX_PROCESSES = 8
ROUNDS = 120
LOOP_BUDGET = 25.0                   # seconds of rounds at most, on a slow runner
CHECK_PROBABILITY = 0.5
MIN_AGREEMENT = 0.99
MIN_CHECKS = 200
ANSWER_TIMEOUT = 10.0
BARRIER_TIMEOUT = 30.0               # a burst of events from elsewhere on the host may queue up
MESSAGE_BYTES = 65536
# Findings the tracker follows that carry no fd; the others are fd findings of the
# files the probes follow (reads.probe_visible) and the held locks.
# namespace.net_lock: the live table asks for the lock wherever it tracks a connection.
PROCESS_CODES = frozenset({"task.traced", "task.pi_futex", "memory.sysv_shm.host_ipc",
                           "namespace.nested", "namespace.net_lock"})

BARRIER = """
requests = int(os.environ["BARRIER_FD"])
ready()
while os.read(requests, 1):
    os.close(os.open('/dev/kvm', os.O_RDONLY))
"""


# ---------------------------------------------------------------- the tracker and its barrier

class Barrier:
    """Returns once the tracker has applied every event the kernel recorded before the call."""

    def __init__(self):
        self.tracker: Tracker | None = None  # set once it runs; notice() must see it start
        self._changed = threading.Condition()
        self._helper_cr_ns = 0
        read_end, self._requests = os.pipe()
        try:
            self._helper: Subject = start(BARRIER, pass_fds=(read_end,),
                                          env={"BARRIER_FD": str(read_end)})
        finally:
            os.close(read_end)

    def notice(self, notice) -> None:
        if isinstance(notice, Transition) and notice.pid == self._helper.pid and notice.state == CR:
            with self._changed:
                self._helper_cr_ns = max(self._helper_cr_ns, notice.cause_ns)
                self._changed.notify_all()

    def __call__(self) -> None:
        # The helper's close is recorded after this instant, so after every record
        # reserved before it; its `cr` is published once all of them are applied.
        asked = time.monotonic_ns()
        os.write(self._requests, b".")
        with self._changed:
            if not self._changed.wait_for(lambda: self._helper_cr_ns > asked, BARRIER_TIMEOUT):
                pytest.fail(f"the tracker applied no barrier within {BARRIER_TIMEOUT} s")
        # Lock reads put off to the end of their interval
        # (tracker.live.handlers.locks.LOCK_READ_INTERVAL_NS) are still to come: they run
        # within that interval, once due.
        deadline = time.monotonic() + BARRIER_TIMEOUT
        while (due := self.tracker.table.next_due_ns()) is not None:
            assert time.monotonic() < deadline, "deferred lock reads never ran"
            time.sleep(max(due - time.monotonic_ns(), 100_000) / 1e9)

    def close(self) -> None:
        os.close(self._requests)
        self._helper.stop()


@pytest.fixture(scope="module")
def tracking() -> Iterator[tuple[Tracker, Barrier]]:
    barrier = Barrier()
    try:
        with attached_tracker(barrier.notice) as running:
            barrier.tracker = running
            yield running, barrier
    finally:
        barrier.close()


# ---------------------------------------------------------------- the processes driven

@dataclass
class Driven:
    """One process obeying commands, and what it said it holds after the last one."""

    pid: int
    channel: socket.socket
    root: bool                       # started by the test (else forked by a subject)
    # A child acts only once the tracker has applied its fork: until then the probes
    # do not follow the fds it inherited (docs/tracking-limits.md, "the fork window").
    settled: bool = True
    channel_fd: int = -1             # the channel's number in the process
    fds: dict[int, str] = field(default_factory=dict)
    shm: list[int] = field(default_factory=list)
    pi: dict[int, int] = field(default_factory=dict)   # index: address of each PI futex held
    history: list[str] = field(default_factory=list)

    def send(self, command: dict) -> None:
        self.history.append(json.dumps(command))
        self.channel.send(json.dumps(command).encode())

    def receive(self) -> tuple[dict, list[int]]:
        ready, _, _ = select.select([self.channel], [], [], ANSWER_TIMEOUT)
        assert ready, f"pid {self.pid} did not answer {self.history[-1:]}"
        message, fds, _, _ = socket.recv_fds(self.channel, MESSAGE_BYTES, 1)
        assert message, f"pid {self.pid} died on {self.history[-1:]}"
        answer = json.loads(message)
        self.pid, self.channel_fd = answer["pid"], answer["channel"]
        self.fds = {int(fd): target for fd, target in answer["fds"].items()}
        self.shm = answer["shm"]
        self.pi = {int(index): address for index, address in answer["pi"].items()}
        return answer, fds

    def await_end(self) -> None:
        """The channel closes when the process has exited (its fds are released then)."""
        ready, _, _ = select.select([self.channel], [], [], ANSWER_TIMEOUT)
        assert ready and not self.channel.recv(MESSAGE_BYTES), f"pid {self.pid} did not exit"
        self.channel.close()


class Fleet:
    """The subjects and their descendants."""

    def __init__(self, lock_dir: Path, tcp_port: int):
        self.lock_dir, self.tcp_port = lock_dir, tcp_port
        self.live: list[Driven] = []
        self.popens: list[subprocess.Popen] = []

    def spawn(self) -> Driven:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        popen = subprocess.Popen(
            [sys.executable, str(SUBJECT), str(theirs.fileno()), str(self.lock_dir),
             str(self.tcp_port)], pass_fds=(theirs.fileno(),), start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        theirs.close()
        self.popens.append(popen)
        driven = Driven(popen.pid, ours, root=True)
        driven.receive()
        self.live.append(driven)
        return driven

    def shared(self, driven: Driven, target: str) -> bool:
        """Does another live process hold this file (lock files are opened once each,
        so only through an inherited fd: the same open file description)?"""
        return any(target in other.fds.values() for other in self.live if other is not driven)

    def close(self) -> None:
        for driven in self.live:
            driven.channel.close()
        for popen in self.popens:
            try:
                os.killpg(popen.pid, signal.SIGKILL)  # its session holds its descendants too
            except ProcessLookupError:
                pass
            popen.wait(timeout=10)


@pytest.fixture
def fleet(tmp_path) -> Iterator[Fleet]:
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    driven = Fleet(tmp_path, listener.getsockname()[1])
    try:
        yield driven
    finally:
        driven.close()
        listener.close()


# ---------------------------------------------------------------- the randomized commands

def next_command(rng: random.Random, driven: Driven, fleet: Fleet) -> dict:
    channel = driven.channel_fd
    lock_files = sorted(fd for fd, target in driven.fds.items()
                        if target.startswith(str(fleet.lock_dir)))
    # A lock file another process shares (an inherited open file description) is
    # neither closed nor flock'ed: the tracker would not see the other process's
    # locks change (docs/tracking-limits.md, "flock through a shared open file").
    shared = {fd for fd in lock_files if fleet.shared(driven, driven.fds[fd])}
    fds = sorted(driven.fds)
    closable = [fd for fd in fds if fd not in shared]
    choices: list[tuple[float, dict]] = [
        (4, {"op": "open", "kind": rng.choice(["/dev/kvm", "/dev/kvm", "/dev/null", "perf_event",
                                               "userfaultfd", "tcp"])}),
        (1, {"op": "lock", "kind": rng.choice(["flock", "posix"])}),
        (1 if len(driven.shm) < 3 else 0, {"op": "shmat"}),
    ]
    if fds:
        choices += [(2, {"op": "dup", "fd": rng.choice(fds)}),
                    (0.4, {"op": "exec", "keep": rng.sample(fds, rng.randint(0, len(fds)))})]
    if closable:
        low = rng.choice(closable)
        high = low + rng.randint(0, 3)
        spans_kept = any(low <= fd <= high for fd in (channel, *shared))
        source = rng.choice(fds)
        onto = [fd for fd in closable if fd != source] + [max(fds + [channel]) + 1]
        choices += [
            (4, {"op": "close", "fd": rng.choice(closable)}),
            (1, {"op": "dup2", "fd": source, "to": rng.choice(onto)}),
            (0 if spans_kept else 1, {"op": "close_range", "low": low, "high": high}),
        ]
    if lock_files:
        fd = rng.choice(lock_files)
        kind = "posix" if fd in shared else rng.choice(["flock", "posix"])
        choices += [(1, {"op": "unlock", "fd": fd, "kind": kind}),
                    (0.5, {"op": "relock", "fd": fd, "kind": kind})]
    if driven.shm:
        choices.append((1, {"op": "shmdt", "address": rng.choice(driven.shm)}))
    free_pi = [index for index in range(PI_FUTEXES) if index not in driven.pi]
    if free_pi:
        choices.append((1, {"op": "pi_lock", "index": rng.choice(free_pi)}))
    if driven.pi:
        choices.append((1, {"op": "pi_unlock", "index": rng.choice(sorted(driven.pi))}))
    if len(fleet.live) < MAX_PROCESSES:
        choices.append((1, {"op": "fork"}))
    if not driven.root:
        choices.append((0.6, {"op": "exit"}))
    weights, commands = zip(*[(weight, command) for weight, command in choices if weight])
    return rng.choices(commands, weights)[0]


# ---------------------------------------------------------------- the comparison

Reasons = frozenset  # of (code, fd, or the futex address for task.pi_futex, or None)
PI_ADDRESS = re.compile(r"holds the PI futex at (0x[0-9a-f]+)")


def reason_key(code: str, fd: int | None) -> tuple[str, int | None]:
    # A lock reason names the fd through which the lock showed at the process's last
    # lock call; a dup2 or close since may have moved it (docs/tracking-limits.md).
    return (code, None if code in reads.HELD_LOCK_CODES else fd)


def tracked_reasons(tracker: Tracker, pid: int) -> Reasons:
    tracked = tracker.table.tracked(pid)
    if tracked is None:
        return Reasons()
    found = set()
    for reason in tracked["reasons"]:
        held = PI_ADDRESS.search(reason["message"]) if reason["code"] == "task.pi_futex" else None
        found.add(("task.pi_futex", int(held[1], 16)) if held
                  else reason_key(reason["code"], reason["fd"]))
    return Reasons(found)


def true_reasons(driven: Driven) -> Reasons | None:
    """The audit's reasons, and the PI futexes the process says it holds."""
    audited = audited_reasons(driven.pid)
    if audited is None:
        return None
    return audited | {("task.pi_futex", address) for address in driven.pi.values()}


def audited_reasons(pid: int) -> Reasons | None:
    """What a fresh audit finds of the states the tracker follows; None: the process is gone."""
    try:
        result = audit(pid)
    except ProcessGone:
        return None
    proc = Proc(pid)
    found: set[tuple[str, int | None]] = set()
    by_fd: dict[int, set[str]] = defaultdict(set)
    for finding in result.findings:
        code = finding.code
        if code == "audit.exited":
            return None
        if code == "task.pi_futex":
            continue  # a waiter, which the subjects never are: held ones come from the subject
        if code in reads.HELD_LOCK_CODES or code in PROCESS_CODES:
            found.add(reason_key(code, finding.fd))
        elif finding.fd is not None and not code.startswith(("lock.", "terminal.")):
            by_fd[finding.fd].add(code)
    for fd, codes in by_fd.items():
        target = reads.fd_target(proc, fd)
        if target is not None and reads.probe_visible(target, codes):
            found |= {(code, fd) for code in codes}
    return Reasons(found)


@dataclass
class Tally:
    agreed: int = 0
    settled_on_recheck: int = 0      # differed at first, agreed after awaiting once more
    exits_checked: int = 0
    errors: Counter = field(default_factory=Counter)   # commands the kernel refused
    ops: Counter = field(default_factory=Counter)
    disagreements: list[dict] = field(default_factory=list)

    @property
    def checks(self) -> int:
        return self.agreed + self.settled_on_recheck + len(self.disagreements)


def compare(tracker: Tracker, barrier: Barrier, driven: Driven, tally: Tally) -> None:
    for attempt in range(2):
        audited = true_reasons(driven)
        tracked = tracked_reasons(tracker, driven.pid)
        assert audited is not None, f"pid {driven.pid} vanished while it should be alive"
        if tracked == audited:
            if attempt:
                tally.settled_on_recheck += 1
            else:
                tally.agreed += 1
            return
        if not attempt:
            barrier()  # an event still in flight is applied by now
    tally.disagreements.append({
        "pid": driven.pid, "only_tracked": sorted(tracked - audited, key=str),
        "only_audited": sorted(audited - tracked, key=str), "fds": driven.fds,
        "history": driven.history[-6:]})


def collect(driven: Driven, command: dict, fleet: Fleet, exited: list[int],
            tally: Tally) -> None:
    answer, passed = driven.receive()
    tally.ops[command["op"]] += 1
    if "error" in answer:
        tally.errors[answer["error"]] += 1
    if command["op"] == "fork" and "child" in answer:
        child = Driven(answer["child"], socket.socket(fileno=passed[0]), root=False,
                       settled=False, history=[f"forked from {driven.pid}"])
        child.receive()
        fleet.live.append(child)
    elif command["op"] == "exit":
        driven.await_end()
        fleet.live.remove(driven)
        exited.append(driven.pid)


def test_tracked_state_agrees_with_a_fresh_audit(tracking, fleet):
    tracker, barrier = tracking
    seed = int(os.environ.get("CRWATCH_DIFF_SEED") or random.randrange(1 << 32))
    print(f"\ndifferential test seed {seed} (replay with CRWATCH_DIFF_SEED={seed})")
    rng = random.Random(seed)
    for _ in range(SUBJECTS):
        fleet.spawn()
    tally = Tally()
    exited: list[int] = []
    started = time.monotonic()
    for _ in range(ROUNDS):
        if time.monotonic() - started > LOOP_BUDGET:
            break
        settled = [driven for driven in fleet.live if driven.settled]
        movers = rng.sample(settled, rng.randint(1, min(3, len(settled))))
        commands = [(driven, next_command(rng, driven, fleet)) for driven in movers]
        for driven, command in commands:
            driven.send(command)
        for driven, command in commands:
            collect(driven, command, fleet, exited, tally)
        if rng.random() < CHECK_PROBABILITY:
            barrier()
            for driven in fleet.live:
                driven.settled = True
            for driven in rng.sample(fleet.live, len(fleet.live)):
                compare(tracker, barrier, driven, tally)
            for pid in exited:
                assert tracker.table.tracked(pid) is None, f"pid {pid} exited but is still tracked"
                tally.exits_checked += 1
            exited.clear()
    agreement = (tally.agreed + tally.settled_on_recheck) / max(tally.checks, 1)
    print(f"{tally.checks} checks in {time.monotonic() - started:.1f} s: agreement "
          f"{agreement:.2%} ({tally.agreed} at once, {tally.settled_on_recheck} on a re-check, "
          f"{len(tally.disagreements)} disagreements); {tally.exits_checked} exits checked; "
          f"commands {dict(tally.ops)}; refused {dict(tally.errors)}; "
          f"tracker {tracker.counters()}")
    for disagreement in tally.disagreements:
        print(json.dumps(disagreement))
    assert tally.checks >= MIN_CHECKS
    assert agreement >= MIN_AGREEMENT
    # The sequences steer clear of the documented limits (see next_command and the
    # settling of forks): a disagreement left is a bug, or a limit to document in
    # docs/tracking-limits.md.
    assert not tally.disagreements
    assert tracker.counters()["lost"] == {"kernel": 0, "queue_overflow": 0, "decode_errors": 0,
                                           "out_of_fds": 0}


# ---------------------------------------------------------------- the documented limits, shown
# Each of these asserts that a limit of docs/tracking-limits.md is still there: the
# audit sees a state the tracker does not (or the reverse). One that fails means
# the limit is gone: update the document (and let the sequences above drive it).

def order(driven: Driven, command: dict) -> dict:
    driven.send(command)
    answer, _ = driven.receive()
    assert "error" not in answer, answer["error"]
    return answer


def fork(driven: Driven, fleet: Fleet) -> Driven:
    driven.send({"op": "fork"})
    answer, passed = driven.receive()
    child = Driven(answer["child"], socket.socket(fileno=passed[0]), root=False)
    child.receive()
    fleet.live.append(child)
    return child


def now_and_then(tracker: Tracker, barrier: Barrier, driven: Driven) -> tuple[Reasons, Reasons]:
    """(tracked, audited) once the tracker has applied everything so far."""
    barrier()
    return tracked_reasons(tracker, driven.pid), audited_reasons(driven.pid)


def new_fd(before: dict[int, str], driven: Driven) -> int:
    (fd,) = set(driven.fds) - set(before)
    return fd


@pytest.mark.parametrize("op", ["open_relative", "pass_to_self"])
def test_limit_device_fds_no_probe_sees(tracking, fleet, op):
    """"fds received through SCM_RIGHTS": the audit sees the device, the tracker does
    not. A device opened by a relative path was once such a limit; the kernel side now
    looks at every open's new fd (docs/tracking-limits.md, 5): seen, and rightly."""
    driven = fleet.spawn()
    before = dict(driven.fds)
    order(driven, {"op": op})
    fd = new_fd(before, driven)
    tracked, audited = now_and_then(*tracking, driven)
    assert ("device.chr.unsupported", fd) in audited
    seen_when_it_slept = Reasons({("device.chr.unsupported", fd)})
    assert tracked == Reasons() or (op == "open_relative" and tracked == seen_when_it_slept)


def test_limit_flock_released_through_a_shared_description(tracking, fleet):
    """"flock through a shared open file description": the child's LOCK_UN releases
    the parent's lock too, and the parent stays marked."""
    parent = fleet.spawn()
    order(parent, {"op": "lock", "kind": "flock"})
    (locked,) = parent.fds
    child = fork(parent, fleet)
    tracking[1]()  # the fork is applied: the child is marked too
    order(child, {"op": "unlock", "fd": locked, "kind": "flock"})
    tracked, audited = now_and_then(*tracking, parent)
    assert ("lock.flock", None) in tracked and audited == Reasons()


def test_limit_flock_taken_through_a_shared_description(tracking, fleet):
    """The child's flock through the description it shares makes the parent hold the
    lock too, and the parent is not marked."""
    parent = fleet.spawn()
    order(parent, {"op": "lock", "kind": "flock"})
    (locked,) = parent.fds
    order(parent, {"op": "unlock", "fd": locked, "kind": "flock"})
    child = fork(parent, fleet)
    tracking[1]()
    order(child, {"op": "relock", "fd": locked, "kind": "flock"})
    tracked, audited = now_and_then(*tracking, parent)
    assert ("lock.flock", None) in audited and tracked == Reasons()


def test_limit_closing_a_shared_flocked_fd(tracking, fleet):
    """The child closes its copy of a flocked description the parent still holds: no
    lock call happens, the child holds no lock any more, and it stays marked."""
    parent = fleet.spawn()
    order(parent, {"op": "lock", "kind": "flock"})
    (locked,) = parent.fds
    child = fork(parent, fleet)
    tracking[1]()
    order(child, {"op": "close", "fd": locked})
    tracked, audited = now_and_then(*tracking, child)
    assert ("lock.flock", None) in tracked and audited == Reasons()
