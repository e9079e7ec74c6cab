"""The checkpoint-time gate with real trees, the real CRIU and real kills.

Each subject tree answers pings on FIFOs (one pair per process), so a test can
tell that it runs: after a refused gate, after crwatch is killed mid-gate, and
after `criu restore` brought it back. Trees are frozen either with ptrace or,
moved into a cgroup of their own first, with the cgroup v2 freezer.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.agreement import network_lock_allowed, network_lock_options
from tests.support.gates import AWAIT_S, await_exited, cgroup2_or_skip, gate
from tests.support.subjects import Subject, start, subject
from tracker.criu.runner import find_criu
from tracker.gate.freeze import Freeze

CRWATCH = Path(sys.executable).with_name("crwatch")
PR_SET_CHILD_SUBREAPER = 36

# A root with two threads and a child with one; each serves pings on its FIFOs with
# the number of its threads.
TREE = """
import threading
fifos = os.environ["FIFO_DIR"]
def serve(name):
    requests = os.open(f"{fifos}/{name}.in", os.O_RDWR)
    replies = os.open(f"{fifos}/{name}.out", os.O_RDWR)
    while True:
        os.read(requests, 1)
        os.write(replies, f"{threading.active_count()}\\n".encode())
def idle():
    threading.Thread(target=threading.Event().wait, daemon=True).start()
%(setup)s
child = os.fork()
if child == 0:
    os.close(int(os.environ["SUBJECT_READY_FD"]))
    idle()
    serve("child")
signal.signal(signal.SIGCHLD, lambda *_: os.waitpid(-1, os.WNOHANG))  # reap a killed child
# Only the main thread may take SIGCHLD: one blocked in a read must be woken to run the handler.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
idle(); idle()
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
ready(str(child))
serve("root")
"""
TCP_AND_GHOST = """
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
client = socket.create_connection(listener.getsockname()); server, _ = listener.accept()
ghost = open(os.path.join(fifos, "ghost"), "wb+"); ghost.write(os.urandom(5 << 20)); ghost.flush()
os.unlink(os.path.join(fifos, "ghost"))
"""
LOOP_CONTROL = "device = os.open('/dev/loop-control', os.O_RDWR)"


# ---------------------------------------------------------------- trees and their pings

class Tree:
    def __init__(self, subject: Subject, fifos: Path):
        self.subject, self.fifos = subject, fifos
        self.root, self.child = subject.pid, int(subject.note)

    @property
    def pids(self) -> list[int]:
        return [self.root, self.child]

    def ping(self, name: str = "root", timeout: float = AWAIT_S) -> int:
        """The thread count the process answers with; fails if it does not answer."""
        deadline = time.monotonic() + timeout
        while True:  # until the FIFO has its reader again (it may be being restored)
            try:
                requests = os.open(self.fifos / f"{name}.in", os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as error:
                assert error.errno == errno.ENXIO and time.monotonic() < deadline, error
                time.sleep(0.01)
        replies = os.open(self.fifos / f"{name}.out", os.O_RDONLY | os.O_NONBLOCK)
        try:
            os.write(requests, b"?")
            assert select.select([replies], [], [], max(0.0, deadline - time.monotonic()))[0], \
                f"{name} did not answer within {timeout:g} s"
            return int(os.read(replies, 64).split()[-1])
        finally:
            os.close(requests)
            os.close(replies)

    def assert_running(self) -> None:
        """Answering, and no task held: not stopped, not traced."""
        for name in ("root", "child"):
            self.ping(name)
        for pid in self.pids:
            for tid in os.listdir(f"/proc/{pid}/task"):
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
                assert "TracerPid:\t0\n" in status, status
                assert "\nState:\tt" not in status and "\nState:\tT" not in status, status


@contextmanager
def tree(tmp_path: Path, setup: str = "", cgroup: Path | None = None) -> Iterator[Tree]:
    fifos = tmp_path / "fifos"
    fifos.mkdir()
    for name in ("root", "child"):
        for end in ("in", "out"):
            os.mkfifo(fifos / f"{name}.{end}")
    running = Tree(start(TREE % {"setup": setup}, env={"FIFO_DIR": str(fifos)}), fifos)
    try:
        running.ping("root"), running.ping("child")  # serving: the tree is set up
        if cgroup is not None:
            for pid in running.pids:
                (cgroup / "cgroup.procs").write_text(str(pid))
        yield running
    finally:
        kill_tree(running)


def kill_tree(running: Tree) -> None:
    """The child first, which the root reaps, then the root, which is ours to reap (or a
    restoring CRIU's)."""
    for pid in (running.child, running.root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        if pid == running.child:
            await_gone(pid)
    running.subject.stop()


def await_gone(pid: int) -> None:
    """Until the pid is free (reaped), so that a restore can take it again."""
    deadline = time.monotonic() + AWAIT_S
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"pid {pid} still exists"
        time.sleep(0.01)


@contextmanager
def orphans_come_to_us() -> Iterator[None]:
    """This process is the child subreaper meanwhile: orphans of its subjects become its
    children (else init's, which may reap them seconds later)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture(params=["ptrace", "cgroup"])
def method(request) -> str:
    return request.param


@pytest.fixture
def cgroup(method: str, request) -> Iterator[Path | None]:
    """A cgroup v2 of the test's own when the tree is to be frozen by cgroup."""
    if method == "ptrace":
        yield None
        return
    mount = cgroup2_or_skip()
    directory = mount / f"crwatch-test-{os.getpid()}-{abs(hash(request.node.name)) % 10**8}"
    directory.mkdir()
    try:
        yield directory
    finally:
        events = directory / "cgroup.events"
        deadline = time.monotonic() + AWAIT_S
        while "populated 1" in events.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        directory.rmdir()


@pytest.fixture(scope="module")
def criu():
    found = find_criu()
    assert found is not None and found.supported, "no CRIU >= 4.2: scripts/setup.sh provides one"
    return found


# ---------------------------------------------------------------- the three verdicts

@pytest.mark.criu
def test_a_checkpointable_tree_is_dumped_and_restored(tmp_path, method, cgroup, criu):
    images = tmp_path / "images"
    with tree(tmp_path, cgroup=cgroup) as running:
        with orphans_come_to_us():  # CRIU ends the tree after the dump: reap it at once
            status, document = gate(str(running.root), "--dump", str(images),
                                    "--no-leave-running")
            running.subject.process.wait(timeout=AWAIT_S)
            os.waitpid(running.child, 0)
        assert status == 0, document
        assert document["outcome"] == "dumped" and document["verdict"]["verdict"] == "ok"
        freeze = document["freeze"]
        assert freeze["method"] == method and sorted(freeze["pids"]) == sorted(running.pids)
        assert freeze["tasks"] == 5 and freeze["unfrozen"] == [] and not freeze["expired"]
        dump = document["dump"]
        assert dump["ok"] and dump["while_frozen"] == (method == "cgroup")
        assert ("--freeze-cgroup" in dump["command"]) == (method == "cgroup")
        assert "--leave-running" not in dump["command"]

        restore = subprocess.Popen([criu.path, "restore", "-D", str(images), "-v4",
                                    "-o", "restore.log"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            assert running.ping("root") == 3, (images / "restore.log").read_text()[-3000:]
            assert running.ping("child") == 2
            assert Path(f"/proc/{running.child}/stat").read_text().split(")")[1].split()[1] \
                == str(running.root)  # the same tree: same pids, same parent
        finally:
            kill_tree(running)
            restore.wait(timeout=AWAIT_S)


@pytest.mark.criu
def test_a_tree_needing_options_dumps_with_exactly_the_computed_ones(tmp_path, method, cgroup,
                                                                     criu):
    with tree(tmp_path, setup=TCP_AND_GHOST, cgroup=cgroup) as running:
        status, refused = gate(str(running.root), "--dump", str(tmp_path / "refused"))
        assert status == 1 and refused["outcome"] == "refused", refused
        assert refused["verdict"]["verdict"] == "needs_options"
        lock = network_lock_options()
        assert refused["verdict"]["required_options"] == sorted(
            ["--ghost-limit", "--tcp-established", *lock[:1]])
        assert not refused["dump"]["ran"] and not (tmp_path / "refused").exists()
        running.assert_running()

        ghost = next(r["option_value"] for r in refused["verdict"]["reasons"]
                     if r["option"] == "--ghost-limit")
        status, document = gate(str(running.root), "--dump", str(tmp_path / "images"),
                                "--allow=--tcp-established", "--allow=--ghost-limit=64M",
                                *network_lock_allowed())
        assert status == 0 and document["outcome"] == "dumped", document
        command = document["dump"]["command"]
        assert "--tcp-established" in command and "--leave-running" in command
        # Exactly the verdict's options: the network lock only where the verdict names it.
        assert ("--network-lock" in command) == bool(lock)
        if lock:
            assert command[command.index("--network-lock") + 1] == lock[1]
        assert command[command.index("--ghost-limit") + 1] == ghost  # what it needs, no more
        running.assert_running()


@pytest.mark.criu
def test_a_blocked_tree_is_refused_before_criu_runs_and_keeps_running(tmp_path, method, cgroup):
    images = tmp_path / "images"
    with tree(tmp_path, setup=LOOP_CONTROL, cgroup=cgroup) as running:
        status, document = gate(str(running.root), "--dump", str(images))
        assert status == 1 and document["outcome"] == "refused", document
        codes = {r["code"] for r in document["verdict"]["reasons"]}
        assert "device.chr.unsupported" in codes and document["verdict"]["verdict"] == "blocked"
        assert document["freeze"]["method"] == method
        assert not document["dump"]["ran"] and not images.exists()  # made only for a dump
        running.assert_running()


@pytest.mark.criu
def test_a_gate_judges_the_whole_tree_unless_asked_for_the_pid_alone(tmp_path):
    with tree(tmp_path, setup=LOOP_CONTROL) as running:
        status, whole = gate(str(running.root))
        assert status == 1 and whole["tree"] is True
        assert sorted(whole["freeze"]["pids"]) == sorted(running.pids)
        assert whole["freeze"]["tasks"] == 5
        assert {r["pid"] for r in whole["verdict"]["reasons"]} >= {running.root}
        status, alone = gate(str(running.root), "--only")
        assert status == 1 and alone["tree"] is False and alone["freeze"]["pids"] == [running.root]
        assert alone["freeze"]["tasks"] == 3
        status, aliased = gate(str(running.root), "--tree")  # the default, still accepted
        assert aliased["tree"] is True and sorted(aliased["freeze"]["pids"]) == sorted(running.pids)
        running.assert_running()


@pytest.mark.criu
def test_the_gate_names_no_holder_outside_the_tree_and_judges_as_check_with_holders_does():
    """A pipe whose other end this test holds: the frozen recheck says so without walking
    every fd of the host for who holds it, and judges the tree as `crwatch check --holders`
    does after that walk."""
    read_end, write_end = os.pipe()
    try:
        with subject("ready(); hold()", pass_fds=(write_end,)) as held:
            status, document = gate(str(held.pid))
            checked = json.loads(subprocess.run(
                [str(CRWATCH), "check", "--json", "--holders", str(held.pid)],
                capture_output=True, text=True, timeout=120).stdout)
    finally:
        os.close(read_end)
        os.close(write_end)
    judged = document["verdict"]
    pipe = next(r for r in judged["reasons"] if r["code"] == "file.pipe.external")
    assert "its holders were not looked up" in pipe["message"], pipe
    assert f"pid {os.getpid()}" not in pipe["message"]
    assert (judged["verdict"], sorted(r["code"] for r in judged["reasons"])) == \
        (checked["verdict"], sorted(r["code"] for r in checked["reasons"]))
    assert status == 0 and document["outcome"] == "passed", document


def test_a_dump_of_the_pid_alone_is_refused_clearly(tmp_path):
    images = tmp_path / "images"
    refused = subprocess.run([str(CRWATCH), "gate", "--local", "--only", "--dump", str(images),
                              str(os.getpid())], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith(f"crwatch: a dump takes pid {os.getpid()} with all its "
                                     f"descendants"), refused.stderr
    assert refused.stderr.count("\n") == 1 and not images.exists()


# ---------------------------------------------------------------- nothing strands a tree

def _frozen(running: Tree, method: str, cgroup: Path | None) -> bool:
    if method == "cgroup":
        return "frozen 1" in (cgroup / "cgroup.events").read_text()
    statuses = [Path(f"/proc/{pid}/task/{tid}/status").read_text()
                for pid in running.pids for tid in os.listdir(f"/proc/{pid}/task")]
    return all("TracerPid:\t0\n" not in status for status in statuses)


@pytest.mark.criu
def test_crwatch_killed_mid_gate_leaves_the_tree_running(tmp_path, method, cgroup):
    with tree(tmp_path, cgroup=cgroup) as running:
        gating = subprocess.Popen([str(CRWATCH), "gate", "--local", "--tree", str(running.root),
                                   "--hold", "600", "--watchdog", "900"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + AWAIT_S
        while not _frozen(running, method, cgroup):  # the state itself is what we await
            assert gating.poll() is None and time.monotonic() < deadline, "never frozen"
            time.sleep(0.01)
        with pytest.raises(AssertionError, match="did not answer"):
            running.ping("child", timeout=0.2)  # frozen indeed

        gating.send_signal(signal.SIGKILL)
        gating.wait()
        running.assert_running()  # thawed by the holder, long before its watchdog


def _helper_of(gating: subprocess.Popen) -> int:
    """The freezer helper the gate started: the child of its main thread running
    freeze_helper.py."""
    deadline = time.monotonic() + AWAIT_S
    while True:
        for kid in Path(f"/proc/{gating.pid}/task/{gating.pid}/children").read_text().split():
            try:
                if b"freeze_helper.py" in Path(f"/proc/{kid}/cmdline").read_bytes():
                    return int(kid)
            except (FileNotFoundError, ProcessLookupError):
                continue  # a short-lived child (criu --version) ended meanwhile
        assert gating.poll() is None and time.monotonic() < deadline, "no helper started"
        time.sleep(0.01)


SYS_SELECT, SYS_PSELECT6 = 23, 270  # x86_64
SELECT_ON_STDIN = [[str(SYS_SELECT), "0x1"], [str(SYS_PSELECT6), "0x1"]]


def _await_hold(helper: int, gating: subprocess.Popen) -> None:
    """Until the helper has reported the tree frozen and waits for commands: blocked in
    select(1, [stdin], ...). The syscall's number counts, not only its first argument:
    freezing, the helper sleeps in clock_nanosleep(CLOCK_MONOTONIC = 1, ...)."""
    deadline = time.monotonic() + AWAIT_S
    while Path(f"/proc/{helper}/syscall").read_text().split()[:2] not in SELECT_ON_STDIN:
        assert gating.poll() is None and time.monotonic() < deadline, "the hold never began"
        time.sleep(0.01)


@pytest.mark.criu
def test_a_killed_helper_leaves_the_tree_running_and_the_gate_says_so(tmp_path, method, cgroup):
    """The helper holds the tree; SIGKILL of it (the OOM killer's way) must not strand it:
    crwatch thaws a cgroup itself, the kernel detaches a dead tracer's tracees."""
    with tree(tmp_path, cgroup=cgroup) as running:
        gating = subprocess.Popen([str(CRWATCH), "gate", "--local", "--json", str(running.root),
                                   "--hold", "600", "--watchdog", "900"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            helper = _helper_of(gating)
            _await_hold(helper, gating)
            assert _frozen(running, method, cgroup)
            os.kill(helper, signal.SIGKILL)
            out, err = gating.communicate(timeout=AWAIT_S)  # long before hold or watchdog
        finally:
            gating.kill()  # on a failure, no gate left holding for the tests that follow
        running.assert_running()
        if cgroup is not None:
            assert (cgroup / "cgroup.freeze").read_text().strip() == "0"
        document = json.loads(out)
    assert gating.returncode == 1 and document["outcome"] == "refused", err
    freeze = document["freeze"]
    assert freeze["helper_died"] and not freeze["expired"]
    assert freeze["thawed_by"] == {"cgroup": "owner", "ptrace": "kernel"}[method]
    assert 0 < freeze["frozen_ms"] < AWAIT_S * 1e3  # measured by crwatch, the helper's gone
    assert document["verdict"]["verdict"] == "unknown"
    assert "gate.helper_died" in {r["code"] for r in document["verdict"]["reasons"]}


@pytest.mark.parametrize("method", ["cgroup"])
@pytest.mark.criu
def test_the_owner_thaws_a_dead_helpers_cgroup_at_once_while_busy_elsewhere(tmp_path, method,
                                                                             cgroup):
    """The owner's watch is a thread of its own: the cgroup thaws while the owner's code
    (this test, as a gate's audit would) is busy, before it releases the hold."""
    with tree(tmp_path, cgroup=cgroup) as running:
        freeze = Freeze(running.root, tree=True, watchdog_s=600)
        frozen = freeze.__enter__()
        try:
            assert frozen.method == "cgroup" and _frozen(running, method, cgroup)
            events = os.open(cgroup / "cgroup.events", os.O_RDONLY)
            try:
                poller = select.poll()
                poller.register(events, select.POLLPRI)
                os.kill(frozen_helper(), signal.SIGKILL)
                deadline = time.monotonic() + AWAIT_S
                while "frozen 0" not in os.pread(events, 4096, 0).decode():
                    assert time.monotonic() < deadline, "the cgroup stayed frozen"
                    poller.poll(1000)  # cgroup.events changes raise POLLPRI
            finally:
                os.close(events)
            running.assert_running()
        finally:
            freeze.release()
        assert frozen.helper_died and frozen.thawed_by == "owner" and frozen.frozen_ms > 0


def frozen_helper() -> int:
    """This process's freezer helper (its main thread's child running freeze_helper.py)."""
    (helper,) = [int(kid) for kid in
                 Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()
                 if b"freeze_helper.py" in Path(f"/proc/{kid}/cmdline").read_bytes()]
    return helper


@pytest.mark.parametrize("method", ["cgroup"])
@pytest.mark.criu
def test_a_helper_killed_while_criu_holds_the_cgroup_is_thawed_for_once_criu_ends(
        tmp_path, method, cgroup, criu):
    """Handed to CRIU frozen, the cgroup stays frozen under CRIU when the helper dies;
    crwatch thaws it once CRIU has ended, and the dump stands."""
    with tree(tmp_path, cgroup=cgroup) as running:
        gating = subprocess.Popen([str(CRWATCH), "gate", "--local", "--json", str(running.root),
                                   "--dump", str(tmp_path / "images"), "--watchdog", "60"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        helper = _helper_of(gating)
        dumping = _held_criu_of(gating)
        os.kill(dumping, signal.SIGSTOP)  # CRIU is kept where it is, before or after pre-dump
        try:
            _await_answered(dumping)  # the gate's answer: CRIU holds the cgroup
            os.kill(helper, signal.SIGKILL)
            await_exited(helper)
            # The gate's watch over the helper (its one other thread) has seen it die ...
            deadline = time.monotonic() + AWAIT_S
            while len(os.listdir(f"/proc/{gating.pid}/task")) > 1:
                assert time.monotonic() < deadline, "the gate never saw its helper die"
                time.sleep(0.01)
            # ... and left the cgroup to CRIU.
            assert (cgroup / "cgroup.freeze").read_text().strip() == "1"
        finally:
            os.kill(dumping, signal.SIGCONT)
        out, err = gating.communicate(timeout=120)
        running.assert_running()
        assert (cgroup / "cgroup.freeze").read_text().strip() == "0"
    document = json.loads(out)
    assert gating.returncode == 0 and document["outcome"] == "dumped", err
    assert document["dump"]["while_frozen"] and document["dump"]["ok"]
    freeze = document["freeze"]
    assert freeze["helper_died"] and freeze["thawed_by"] == "owner"
    assert "gate.helper_died" not in {r["code"] for r in document["verdict"]["reasons"]}


def _held_criu_of(gating: subprocess.Popen) -> int:
    """The `criu dump` the gate started (it starts with the freeze)."""
    deadline = time.monotonic() + AWAIT_S
    while True:
        for kid in Path(f"/proc/{gating.pid}/task/{gating.pid}/children").read_text().split():
            try:
                argv = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
            except (FileNotFoundError, ProcessLookupError):
                continue
            if b"dump" in argv and any(word.endswith(b"criu") for word in argv):
                return int(kid)
        assert gating.poll() is None and time.monotonic() < deadline, "CRIU never started"
        time.sleep(0.001)


def _await_answered(criu: int) -> None:
    """Until the gate has answered `dump` to its held CRIU: the answer file in the gate's
    scratch directory (where CRIU's log goes meanwhile) says so."""
    argv = Path(f"/proc/{criu}/cmdline").read_bytes().split(b"\0")
    answered = Path(os.fsdecode(argv[argv.index(b"-o") + 1])).with_name("answered")
    deadline = time.monotonic() + AWAIT_S
    while answered.read_bytes() != b"dump\n":
        assert time.monotonic() < deadline, "the gate never answered"
        time.sleep(0.001)



@pytest.mark.parametrize("method", ["cgroup"])
@pytest.mark.criu
def test_a_freeze_found_in_place_outlives_a_killed_helper(tmp_path, method, cgroup):
    """crwatch undoes only its own freeze: a cgroup frozen before the gate stays frozen."""
    with tree(tmp_path, cgroup=cgroup) as running:
        (cgroup / "cgroup.freeze").write_text("1")
        deadline = time.monotonic() + AWAIT_S
        while not _frozen(running, method, cgroup):
            assert time.monotonic() < deadline, "never frozen"
            time.sleep(0.01)
        gating = subprocess.Popen([str(CRWATCH), "gate", "--local", "--json", str(running.root),
                                   "--hold", "600", "--watchdog", "900"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.kill(_helper_of(gating), signal.SIGKILL)
        out, err = gating.communicate(timeout=AWAIT_S)
        try:
            assert gating.returncode == 1 and json.loads(out)["outcome"] == "refused", err
            assert (cgroup / "cgroup.freeze").read_text().strip() == "1"
            with pytest.raises(AssertionError, match="did not answer"):
                running.ping("child", timeout=0.2)
        finally:
            (cgroup / "cgroup.freeze").write_text("0")
        running.assert_running()


@pytest.mark.criu
def test_the_gate_refuses_init_and_a_tree_holding_crwatch_before_freezing_anything(tmp_path):
    images = tmp_path / "images"
    init = subprocess.run([str(CRWATCH), "gate", "--local", "1", "--dump", str(images)],
                          capture_output=True, text=True, timeout=AWAIT_S)
    assert init.returncode == 2 and init.stdout == "", init.stderr
    assert init.stderr.startswith("crwatch: pid 1 is init: freezing it would hold the whole host")
    # A shell gating itself: its tree holds this very gate. Frozen, the gate would wait for
    # its 60 s watchdog, past the timeout.
    own = subprocess.run(["sh", "-c", '"$0" gate --local --watchdog 60 --dump "$1" $$; '
                          'echo "status $?"', str(CRWATCH), str(images)],
                         capture_output=True, text=True, timeout=AWAIT_S)
    assert own.stdout.strip() == "status 2", own
    assert "contains crwatch itself: pid " in own.stderr and "(crwatch gate)" in own.stderr
    assert own.stderr.count("\n") == 1 and not images.exists()


@pytest.mark.criu
def test_the_gate_refuses_a_freezer_helper_and_its_hold_goes_on(tmp_path):
    with tree(tmp_path) as running:
        gating = subprocess.Popen([str(CRWATCH), "gate", "--local", str(running.root),
                                   "--hold", "600", "--watchdog", "900"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            helper = _helper_of(gating)
            refused = subprocess.run([str(CRWATCH), "gate", "--local", "--only", str(helper)],
                                     capture_output=True, text=True, timeout=AWAIT_S)
            assert refused.returncode == 2, refused.stderr
            assert refused.stderr == (f"crwatch: pid {helper} is crwatch itself (crwatch's "
                                      f"freezer helper): the gate never freezes the crwatch "
                                      f"that must thaw it\n")
            assert "TracerPid:\t0\n" in Path(f"/proc/{helper}/status").read_text()
        finally:
            gating.kill()
            gating.wait()
        running.assert_running()


@pytest.mark.criu
def test_a_tree_nothing_could_freeze_is_not_called_frozen():
    """A kernel thread refuses PTRACE_SEIZE: no "frozen ... (0 tasks)"."""
    kernel_thread = next(pid for pid in sorted(int(n) for n in os.listdir("/proc") if n.isdigit())
                         if _is_kernel_thread(pid))
    done = subprocess.run([str(CRWATCH), "gate", "--local", "--only", str(kernel_thread)],
                          capture_output=True, text=True, timeout=AWAIT_S)
    assert done.returncode == 1, done.stderr
    first = done.stdout.splitlines()[0]
    assert first == "gate: nothing could be frozen with ptrace (see gate.freeze_incomplete below)"


def _is_kernel_thread(pid: int) -> bool:
    try:
        flags = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[6])
    except (OSError, IndexError, ValueError):
        return False
    return bool(flags & 0x00200000)  # PF_KTHREAD


@pytest.mark.criu
def test_the_watchdog_bounds_the_frozen_time(tmp_path, method, cgroup):
    with tree(tmp_path, cgroup=cgroup) as running:
        status, document = gate("--tree", str(running.root), "--hold", "30", "--watchdog", "0.5")
        freeze = document["freeze"]
        assert freeze["expired"] and 500 <= freeze["frozen_ms"] < 30_000, freeze
        assert document["verdict"]["verdict"] == "unknown" and status == 1
        assert "gate.watchdog_expired" in {r["code"] for r in document["verdict"]["reasons"]}
        running.assert_running()


# ---------------------------------------------------------------- CRIU's own refusals

@pytest.mark.criu
def test_a_criu_failure_after_the_gate_becomes_a_reason_with_its_resource(tmp_path, criu):
    """Images into a read-only directory: the gate passes, CRIU fails, its log is read."""
    images = tmp_path / "readonly"
    images.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1M", "crwatch-test", str(images)],
                   check=True)
    try:
        with tree(tmp_path) as running:
            status, document = gate(str(running.root), "--dump", str(images))
            assert status == 3 and document["outcome"] == "dump_failed", document
            assert document["checkpointable"] is False
            assert document["dump"]["ran"] and not document["dump"]["ok"]
            failures = document["drift"]["criu"]
            assert failures and all(f["code"] == "criu.dump_failed" for f in failures)
            assert all(f["source"] == "criu" for f in failures)
            assert "Read-only file system" in " ".join(f["message"] for f in failures)
            running.assert_running()
    finally:
        subprocess.run(["umount", str(images)], check=True)


@pytest.mark.criu
def test_criu_hook_aborts_a_dump_with_crwatchs_reasons_and_passes_a_good_one(tmp_path, criu):
    hook = Path(sys.executable).with_name("crwatch-criu-hook")
    with tree(tmp_path, setup=TCP_AND_GHOST) as running:
        aborted = subprocess.run(
            [criu.path, "dump", "-t", str(running.root), "-D", str(tmp_path),
             "--leave-running", "--tcp-established", "--network-lock", "nftables",
             "--action-script", str(hook)], capture_output=True, text=True, timeout=120)
        assert aborted.returncode != 0
        assert "file.deleted.over_ghost_limit" in aborted.stderr, aborted.stderr
        assert "socket.tcp.established" in aborted.stderr  # every reason, also the allowed one
        assert "Pre dump script failed" in aborted.stderr
        running.assert_running()

        passed = subprocess.run(
            [criu.path, "dump", "-t", str(running.root), "-D", str(tmp_path),
             "--leave-running", "--tcp-established", "--network-lock", "nftables",
             "--ghost-limit", "64M", "--action-script", str(hook)],
            capture_output=True, text=True, timeout=120)
        assert passed.returncode == 0, passed.stderr
        assert "is checkpointable" in passed.stderr
        running.assert_running()


def test_criu_hook_outside_criu_says_how_to_use_it():
    done = subprocess.run([str(CRWATCH), "criu-hook"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items()
                               if k != "CRTOOLS_SCRIPT_ACTION"})
    assert done.returncode == 2 and "--action-script" in done.stderr


# ---------------------------------------------------------------- bad input

@pytest.mark.criu
def test_bad_gate_input_gets_a_clear_error(tmp_path):
    missing = subprocess.run([str(CRWATCH), "gate", "--local", "4194304"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.strip() == \
        "crwatch: no process with pid 4194304"
    for bad in (["0"], ["12", "--watchdog", "soon"]):
        done = subprocess.run([str(CRWATCH), "gate", *bad], capture_output=True, text=True)
        assert done.returncode == 2 and "Traceback" not in done.stderr
    with subject("ready(); hold()") as alone:  # a tree without crwatch in it
        no_criu = subprocess.run([str(CRWATCH), "gate", "--local", str(alone.pid), "--criu",
                                  "/bin/false", "--dump", str(tmp_path / "images")],
                                 capture_output=True, text=True)
        unreachable = subprocess.run([str(CRWATCH), "gate", str(alone.pid), "--service",
                                      "http://127.0.0.1:9"], capture_output=True, text=True)
    assert no_criu.returncode == 2 and "no CRIU that runs was found" in no_criu.stderr
    assert not (tmp_path / "images").exists()
    assert unreachable.returncode == 2 and "no crwatch service answers" in unreachable.stderr


@pytest.mark.criu
def test_without_root_the_gate_says_what_it_needs(tmp_path):
    with tree(tmp_path) as running:
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               str(CRWATCH), "gate", "--local", str(running.root)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "the gate needs root" in done.stderr, done.stderr
        running.assert_running()
