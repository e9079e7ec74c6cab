"""A dump's CRIU started before the verdict: it waits at pre-dump, and only `dump` lets it on.

dump_answer.py is run as CRIU runs it, through the gate's loader (its parent standing
for CRIU), answered through its FIFO by this test, with a separate process standing for
the gate. Then the real CRIU held by a real gate that is killed before it answers.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.gates import AWAIT_S, CRWATCH, await_exited, gate
from tests.support.subjects import subject
from tracker.gate import standalone
from tracker.gate.held_dump import SCRIPT, action_script


def start_answer(fifo: Path, gate_pid: int, action: str = "pre-dump") -> subprocess.Popen:
    return subprocess.Popen(standalone.command(SCRIPT, str(fifo), str(gate_pid)),
                            env={"CRTOOLS_SCRIPT_ACTION": action})


def await_waiting(script: subprocess.Popen) -> None:
    """Until the script sits in its wait (select) on the answer."""
    deadline = time.monotonic() + AWAIT_S
    while "poll" not in Path(f"/proc/{script.pid}/wchan").read_text():  # select(2) polls
        assert script.poll() is None and time.monotonic() < deadline, "it never waited"
        time.sleep(0.005)


@pytest.fixture
def answer(tmp_path):
    """The FIFO (in a scratch directory of its own) and its writer, held as the gate holds
    it, and a process standing for the gate."""
    (tmp_path / "scratch").mkdir()
    fifo = tmp_path / "scratch" / "answer"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)
    stand_in = subprocess.Popen(["sleep", "60"])
    yield fifo, writer, stand_in
    stand_in.kill()
    stand_in.wait()
    try:
        os.close(writer)
    except OSError:
        pass  # the test closed it


@pytest.mark.parametrize("line, code", [(b"dump\n", 0), (b"stop\n", 1), (b"dumped\n", 1)])
def test_only_the_answer_dump_lets_criu_on(answer, line, code):
    fifo, writer, gate = answer
    script = start_answer(fifo, gate.pid)
    await_waiting(script)
    os.write(writer, line)
    assert script.wait(timeout=AWAIT_S) == code
    assert fifo.exists()  # the gate's to remove


def test_a_gate_that_closes_without_a_word_stops_the_dump(answer):
    fifo, writer, gate = answer
    script = start_answer(fifo, gate.pid)
    await_waiting(script)
    os.close(writer)
    assert script.wait(timeout=AWAIT_S) == 1


def test_a_gate_that_dies_stops_the_dump_though_its_fifo_stays_open(answer):
    fifo, _, gate = answer  # the writer stays open here: only the gate's death tells
    script = start_answer(fifo, gate.pid)
    await_waiting(script)
    gate.kill()
    gate.wait()
    assert script.wait(timeout=AWAIT_S) == 1
    assert not fifo.parent.exists()  # nobody else is left to remove the gate's scratch


def test_a_gate_gone_before_the_script_runs_stops_the_dump(answer):
    fifo, _, gate = answer
    gate.kill()
    gate.wait()
    assert start_answer(fifo, gate.pid).wait(timeout=AWAIT_S) == 1
    assert not fifo.parent.exists()


def start_wrapper(fifo: Path, early: bytes, gate_pid: int) -> subprocess.Popen:
    """The shell wrapper as CRIU runs it at pre-dump, with `early` in its answer file."""
    answered = fifo.with_name("answered")
    answered.write_bytes(early)
    wrapper = fifo.with_name("pre-dump")
    wrapper.write_text(action_script(fifo, answered, gate_pid))
    wrapper.chmod(0o700)
    return subprocess.Popen([str(wrapper)], env={"CRTOOLS_SCRIPT_ACTION": "pre-dump"})


def test_a_dump_answered_before_pre_dump_lets_criu_on_without_the_wait(answer):
    """Nothing is written to the FIFO: only the answer file can let it on."""
    fifo, _, gate = answer
    assert start_wrapper(fifo, b"dump\n", gate.pid).wait(timeout=AWAIT_S) == 0


@pytest.mark.parametrize("early", [b"", b"dum", b"dump", b"stop\n", b"dumped\n"])
def test_anything_but_a_whole_dump_line_in_the_answer_file_leaves_it_to_the_fifo(answer, early):
    fifo, writer, gate = answer
    wrapper = start_wrapper(fifo, early, gate.pid)
    await_waiting(wrapper)  # it waits in dump_answer.py
    os.write(writer, b"stop\n")
    assert wrapper.wait(timeout=AWAIT_S) == 1


def test_every_other_action_passes_at_once(answer):
    fifo, _, gate = answer
    assert start_answer(fifo, gate.pid, action="post-dump").wait(timeout=AWAIT_S) == 0


@pytest.mark.criu
def test_a_gate_killed_before_its_verdict_leaves_criu_to_abort_untouched(tmp_path):
    """The gate holds the tree frozen (--hold) with CRIU waiting; killed there, CRIU ends
    without seizing or writing anything and the tree runs on."""
    images = tmp_path / "images"
    with subject("ready(); hold()") as held:
        gating = subprocess.Popen([str(CRWATCH), "gate", "--local", "--json", str(held.pid),
                                   "--dump", str(images), "--hold", "60", "--watchdog", "90"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            criu = _criu_waiting_under(gating.pid)
            command = Path(f"/proc/{criu}/cmdline").read_bytes().split(b"\0")
            scratch = Path(os.fsdecode(command[command.index(b"-o") + 1])).parent
            assert _tracer(held.pid) != 0  # frozen by the gate's helper meanwhile
            gating.kill()
            gating.wait()
            await_exited(criu)
            deadline = time.monotonic() + AWAIT_S
            while _tracer(held.pid) != 0:  # the helper's tracees are detached as it ends
                assert time.monotonic() < deadline, "the tree stayed traced"
                time.sleep(0.01)
            assert held.process.poll() is None
            assert not list(images.glob("*.img")) and not scratch.exists()
        finally:
            if gating.poll() is None:
                gating.kill()
                gating.wait()


def _criu_waiting_under(gate_pid: int) -> int:
    """The gate's `criu dump` once its pre-dump script waits for the answer."""
    deadline = time.monotonic() + AWAIT_S
    while True:
        for kid in Path(f"/proc/{gate_pid}/task/{gate_pid}/children").read_text().split():
            try:
                scripts = Path(f"/proc/{kid}/task/{kid}/children").read_text().split()
                if any(b"dump_answer.py" in Path(f"/proc/{script}/cmdline").read_bytes()
                       for script in scripts):
                    return int(kid)
            except (FileNotFoundError, ProcessLookupError):
                continue
        assert time.monotonic() < deadline, "CRIU never waited for the gate"
        time.sleep(0.005)


def _tracer(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("TracerPid:")[1].split()[0])



@pytest.mark.criu
def test_a_refused_tree_ends_its_criu_and_every_process_of_it(tmp_path):
    """Refused while CRIU may still be starting up: CRIU is answered, never killed (killed
    there, the children of its kernel probes would be left behind), and ends, with all
    its children, before the gate answers; the images directory is gone again."""
    images = tmp_path / "images"
    with subject("device = os.open('/dev/loop-control', os.O_RDWR); ready(); hold()") as held:
        for _ in range(3):
            gating = subprocess.Popen([str(CRWATCH), "gate", "--local", "--json", str(held.pid),
                                       "--dump", str(images)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            command = _criu_command_under(gating)
            assert gating.wait(timeout=AWAIT_S) == 1  # refused
            assert not [pid for pid in os.listdir("/proc") if pid.isdigit()
                        and _command_of(int(pid)) == command]
            assert not images.exists() and held.process.poll() is None


def _criu_command_under(gating: subprocess.Popen) -> bytes:
    """The command line of the gate's `criu dump` (its scratch directory makes it unique)."""
    deadline = time.monotonic() + AWAIT_S
    while True:
        for kid in Path(f"/proc/{gating.pid}/task/{gating.pid}/children").read_text().split():
            command = _command_of(int(kid))
            if b"crwatch-gate-" in command:
                return command
        assert gating.poll() is None and time.monotonic() < deadline, "CRIU never ran"
        time.sleep(0.001)


def _command_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


@pytest.mark.criu
def test_a_checkpointable_tree_is_dumped_by_the_criu_that_waited(tmp_path):
    """No option needed: the dump is the waiting CRIU's, its log kept with the images."""
    images = tmp_path / "images"
    with subject("ready(); hold()") as held:
        status, document = gate(str(held.pid), "--dump", str(images))
        assert status == 0 and document["outcome"] == "dumped", document
        command = document["dump"]["command"]
        script = Path(command[command.index("--action-script") + 1])
        assert not script.exists()  # its scratch directory is gone with it
        log = (images / "dump.log").read_text()
        assert document["dump"]["log"] == str(images / "dump.log")
        assert f"[{script}]" in log and "Dumping finished successfully" in log
        assert held.process.poll() is None
