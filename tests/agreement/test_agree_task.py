"""Task states against the real CRIU: threads, zombies, tracers, stops, vfork, CLONE_VM, PI."""
from __future__ import annotations

import os
import select
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.agreement import assert_agrees
from tests.support.subjects import subject
from tests.support.tasks import SEIZE, state_of, wait_for_state
from tracker.audit import audit
from tracker.criu.runner import find_criu
from tracker.profiles import profile
from tracker.verdict import document

pytestmark = [pytest.mark.criu]

NATIVE_SOURCE = Path(__file__).resolve().parents[1] / "support" / "native" / "task_states.c"
CLONE_VM, CLONE_FS = 0x100, 0x200


# A child in a process group of its own, in the subject's session, so that
# job-control stop signals (SIGTSTP, SIGTTIN) are not discarded as they are
# for an orphaned group.
CHILD_IN_OWN_GROUP = """
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    hold()
os.setpgid(pid, pid)
ready(str(pid))
hold()
"""


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("native") / "task_states"
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(binary), str(NATIVE_SOURCE)], check=True)
    return binary


def exec_native(binary: Path, *args: str) -> str:
    """Subject code that becomes the C helper, which reports readiness itself."""
    argv = [str(binary), *args]
    return f"os.execv({str(binary)!r}, {argv!r})"


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_threads_dump():
    code = """
import threading
for _ in range(3):
    threading.Thread(target=hold, daemon=True).start()
ready()
hold()
"""
    with subject(code) as s:
        document = assert_agrees(s.pid, "three extra threads", expect="ok", codes={"task.threads"})
    assert any("4 threads" in r["message"] for r in document["reasons"])


def test_zombie_child_dumps():
    code = """
pid = os.fork()
if pid == 0:
    os._exit(0)
while open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] != "Z":
    time.sleep(0.01)
ready(str(pid))
hold()
"""
    with subject(code) as s:
        assert_agrees(s.pid, "zombie child", expect="ok", codes={"task.zombie"}, tree=True)


def test_zombie_leader_with_running_threads_is_blocked():
    code = """
import threading
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    threading.Thread(target=hold).start()
    os.write(w, b"x")
    ctypes.CDLL(None).syscall(60, 0)  # exit(): only the main thread ends
os.read(r, 1)
while open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] != "Z":
    time.sleep(0.01)
ready(str(pid))
hold()
"""
    with subject(code) as s:
        assert_agrees(s.pid, "zombie leader with a running thread", expect="blocked",
                      codes={"task.zombie_threads"}, tree=True,
                      criu_error="Zombies with threads are not supported")


def test_traced_by_a_process_outside_the_tree_is_blocked():
    with subject("ready(); hold()") as target:
        with subject(SEIZE + f"seize({target.pid})\nready()\nhold()") as tracer:
            document = assert_agrees(target.pid, "traced from outside the tree", expect="blocked",
                                     codes={"task.traced"}, criu_error="Unable to interrupt task")
            assert any(f"traced by pid {tracer.pid} (outside" in r["message"]
                       for r in document["reasons"])


def test_traced_by_its_parent_inside_the_tree_is_blocked():
    code = SEIZE + """
pid = os.fork()
if pid == 0:
    hold()
seize(pid)
ready(str(pid))
hold()
"""
    with subject(code) as s:
        assert_agrees(s.pid, "traced by its parent in the tree", expect="blocked",
                      codes={"task.traced"}, tree=True, criu_error="Unseizable non-zombie")


def test_stopped_by_sigstop_dumps():
    with subject("ready(); hold()") as s:
        os.kill(s.pid, signal.SIGSTOP)
        wait_for_state(s.pid, "T")
        assert_agrees(s.pid, "stopped by SIGSTOP", expect="ok", codes={"task.stopped"})


def test_stopped_by_sigtstp_dumps():
    with subject(CHILD_IN_OWN_GROUP) as s:
        child = int(s.note)
        try:
            os.kill(child, signal.SIGTSTP)
            wait_for_state(child, "T")
            assert_agrees(s.pid, "child stopped by SIGTSTP", expect="ok", codes={"task.stopped"},
                          tree=True)
        finally:
            kill_quietly(child)


def test_stopped_by_sigttin_is_blocked():
    with subject(CHILD_IN_OWN_GROUP) as s:
        child = int(s.note)
        try:
            os.kill(child, signal.SIGTTIN)
            wait_for_state(child, "T")
            assert_agrees(s.pid, "child stopped by SIGTTIN", expect="blocked",
                          codes={"task.stop_signal"}, tree=True,
                          criu_error=f"SEIZE {child}: unsupported stop signal 21")
        finally:
            kill_quietly(child)


# The parent stops its child and takes the stop's report with waitpid(WUNTRACED): the
# child's exit_code field in /proc is 0 from then on, while the kernel keeps the signal.
# The parent then reports whether the audit and CRIU made the child report a stop again.
STOP_REAPED_BY_PARENT = """
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    hold()
os.setpgid(pid, pid)
os.kill(pid, signal.{signal})
waited, status = os.waitpid(pid, os.WUNTRACED)
assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.{signal}
ready(str(pid))
signal.sigwait({{signal.SIGUSR1}})
again = os.waitpid(pid, os.WUNTRACED | os.WNOHANG)[0]
with open({report!r}, "w") as fifo:
    fifo.write("reported again" if again else "quiet")
hold()
"""


def exit_code_field(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as file:
        return int(file.read().rpartition(")")[2].split()[49])


@pytest.mark.parametrize(("stop", "expect", "code", "criu_error"), [
    ("SIGSTOP", "ok", "task.stopped", None),
    ("SIGTTIN", "blocked", "task.stop_signal", "unsupported stop signal 21"),
], ids=["SIGSTOP", "SIGTTIN"])
def test_a_stop_its_parent_reaped_is_judged_by_its_signal(tmp_path, stop, expect, code, criu_error):
    report = tmp_path / "report"
    os.mkfifo(report)
    code_text = STOP_REAPED_BY_PARENT.format(signal=stop, report=str(report))
    with subject("signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n" + code_text) as s:
        child = int(s.note)
        try:
            assert state_of(child) == "T" and exit_code_field(child) == 0
            document = assert_agrees(s.pid, f"child stopped by {stop}, stop reaped by its parent",
                                     expect=expect, codes={code}, tree=True, criu_error=criu_error)
            assert f"pid {child} is stopped by {stop} (its parent has already reaped the stop)" in [
                r["message"] for r in document["reasons"]]
            assert state_of(child) == "T"       # seized and let go: still in its group stop
            assert parents_report(s.pid, report) == "quiet"
        finally:
            kill_quietly(child)


def parents_report(parent: int, fifo: Path) -> str:
    """Ask the parent (SIGUSR1) whether its child reported a stop again, and read the answer."""
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.kill(parent, signal.SIGUSR1)
        # A FIFO reader is woken once the writer has written and closed.
        assert select.select([reader], [], [], 30)[0], "the parent never answered"
        answer = b""
        while chunk := _read_ready(reader):
            answer += chunk
        return answer.decode()
    finally:
        os.close(reader)


def _read_ready(fd: int) -> bytes:
    select.select([fd], [], [], 30)
    return os.read(fd, 64)


@pytest.mark.parametrize("send", ["os.kill(os.getpid(), signal.SIGTRAP)",
                                  "signal.pthread_kill(threading.get_ident(), signal.SIGTRAP)"],
                         ids=["process", "thread"])
def test_pending_sigtrap_is_blocked(send):
    code = f"""
import threading
signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTRAP}})
{send}
ready()
hold()
"""
    with subject(code) as s:
        assert_agrees(s.pid, "pending SIGTRAP", expect="blocked", codes={"task.pending_sigtrap"},
                      criu_error="with a pending SIGTRAP")


def test_vfork_in_progress_is_blocked(native, tmp_path, monkeypatch):
    # The vfork parent cannot be interrupted: CRIU gives up after --timeout.
    # A short one (via CRIU's config file) keeps the test quick.
    config = tmp_path / "criu.conf"
    config.write_text("timeout 2\n")
    monkeypatch.setenv("CRIU_CONFIG_FILE", str(config))
    # The parent keeps its copy of the ready pipe: only the child could close one.
    with subject(exec_native(native, "vfork"), ready_pipe_closes=False) as s:
        document = assert_agrees(s.pid, "parent blocked in vfork()", expect="blocked",
                                 codes={"task.vfork"}, tree=True,
                                 criu_error=f"Unseizable non-zombie {s.pid} found, state D")
    assert f"child pid {s.note}" in next(r["message"] for r in document["reasons"]
                                         if r["code"] == "task.vfork")


@pytest.mark.parametrize(("flags", "code", "message"), [
    (CLONE_VM, "task.shared_mm", "Can't make VM id"),
    (CLONE_FS, "task.shared_fs", "Can't make FS id"),
], ids=["CLONE_VM", "CLONE_FS"])
def test_sharing_without_being_threads_is_blocked(native, flags, code, message):
    with subject(exec_native(native, "clone", hex(flags))) as s:
        assert_agrees(s.pid, f"child cloned with {hex(flags)} but not CLONE_THREAD",
                      expect="blocked", codes={code}, tree=True,
                      criu_error=f"{message} for {s.note}")


def test_pi_futex_waiter_dumps_but_strict_blocks(native):
    with subject(exec_native(native, "pi-futex")) as s:
        document = assert_agrees(s.pid, "thread waiting on a PI futex", expect="ok",
                                 codes={"task.pi_futex"})
        strict = document_for(s.pid, "strict")
    message = next(r["message"] for r in document["reasons"] if r["code"] == "task.pi_futex")
    assert f"tid {s.note} waits in FUTEX_LOCK_PI" in message
    assert f"held by tid {s.pid}" in message
    assert strict["verdict"] == "blocked"


def document_for(pid: int, profile_name: str) -> dict:
    criu = find_criu()
    assert criu is not None
    return document(audit(pid), profile(profile_name, criu.version))
