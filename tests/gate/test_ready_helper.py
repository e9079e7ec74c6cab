"""A freezer helper started ahead (the service keeps one): the gate that takes it freezes
with it, a cgroup whose path holds spaces too; one that died while it waited is
replaced by a helper of the gate's own; one nobody takes ends with its owner."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.gates import AWAIT_S, await_exited, cgroup2_or_skip
from tests.support.subjects import subject
from tracker.gate.freeze import Freeze
from tracker.gate.ready_helper import ReadyHelper

pytestmark = [pytest.mark.root]


def helpers(count: int) -> list[int]:
    """This process's `count` freezer helpers (its main thread's children running
    freeze_helper.py), once that many are seen: a child just started may not show its
    command line yet."""
    deadline = time.monotonic() + AWAIT_S
    while True:
        found = []
        for kid in Path(f"/proc/self/task/{os.getpid()}/children").read_text().split():
            try:
                if b"freeze_helper.py" in Path(f"/proc/{kid}/cmdline").read_bytes():
                    found.append(int(kid))
            except (FileNotFoundError, ProcessLookupError):
                continue
        if len(found) == count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} freezer helpers, not {count}"
        time.sleep(0.001)


def tracer(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("TracerPid:")[1].split()[0])


def test_the_ready_helper_freezes_and_the_next_one_waits_holding_nothing():
    ready = ReadyHelper()
    try:
        ready.replenish()
        [waiting] = helpers(1)
        with subject("ready(); hold()") as held:
            assert tracer(held.pid) == 0  # ready, it holds nothing
            with Freeze(held.pid, tree=True, ready=ready) as frozen:
                assert frozen.method == "ptrace" and frozen.complete
                assert tracer(held.pid) == waiting
            assert tracer(held.pid) == 0
            await_exited(waiting)
            ready.replenish()
            [following] = helpers(1)
            assert following != waiting and tracer(held.pid) == 0
            assert held.process.poll() is None
    finally:
        ready.close()
    helpers(0)


def test_a_cgroup_whose_path_holds_spaces_is_frozen_by_the_ready_helper():
    mount = cgroup2_or_skip()
    directory = mount / f"crwatch test {os.getpid()} a b"
    directory.mkdir()
    ready = ReadyHelper()
    try:
        with subject("ready(); hold()") as held:
            (directory / "cgroup.procs").write_text(str(held.pid))
            try:
                ready.replenish()
                with Freeze(held.pid, tree=True, ready=ready) as frozen:
                    assert (frozen.method, frozen.cgroup) == ("cgroup", str(directory))
                    assert "frozen 1" in (directory / "cgroup.events").read_text()
                assert (directory / "cgroup.freeze").read_text().strip() == "0"
            finally:
                (mount / "cgroup.procs").write_text(str(held.pid))
    finally:
        ready.close()
        directory.rmdir()


def test_a_ready_helper_that_died_is_replaced_by_one_of_the_gates_own():
    ready = ReadyHelper()
    try:
        ready.replenish()
        [waiting] = helpers(1)
        os.kill(waiting, signal.SIGKILL)
        await_exited(waiting)
        with subject("ready(); hold()") as held:
            with Freeze(held.pid, tree=True, ready=ready) as frozen:
                assert frozen.method == "ptrace" and frozen.complete
                assert tracer(held.pid) not in (0, waiting)
            assert tracer(held.pid) == 0
    finally:
        ready.close()


def test_a_ready_helper_ends_with_its_owner():
    """Its owner ends without a word (os._exit): the helper's stdin reaches end of file."""
    owner = subprocess.run(
        [sys.executable, "-c", "import os\n"
                               "from tracker.gate.ready_helper import ReadyHelper\n"
                               "ready = ReadyHelper()\n"
                               "ready.replenish()\n"
                               "print(ready._ready.pid, flush=True)\n"
                               "os._exit(0)\n"],
        capture_output=True, text=True, timeout=AWAIT_S)
    waiting = int(owner.stdout)
    await_exited(waiting)  # its stdin reached end of file: nothing was ever frozen
