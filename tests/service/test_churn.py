"""Trees under churn: descendants that exit while the tree is read, and processes on their
way out whose /proc files answer errors of their own.

A tree is judged by its root: a descendant that exits mid-audit is no longer part of
it (a dump begun now would not meet it), never a reason to say the root is gone.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.live_tables import RecordingKernel, opened
from tests.support.servers import CRWATCH, Server
from tracker.clock import boot_seconds
from tracker.live.table import LiveTable
from tracker.procfs import CLOCK_TICKS, Proc, ProcessGone
from tracker.profiles import profile

REQUESTS = 30
# What the shell itself may show at any moment: dash runs each command with vfork().
ROOT_BLOCKERS = {"task.vfork"}


@pytest.fixture
def churning_shell():
    """A shell that runs /bin/true as fast as it can: its child comes and goes all the time."""
    shell = subprocess.Popen(["sh", "-c", "while :; do /bin/true; done"], start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    yield shell
    os.killpg(shell.pid, signal.SIGKILL)
    shell.wait()


@pytest.mark.root
def test_tree_answers_judge_the_root_while_its_descendants_exit(churning_shell, tmp_path):
    server = Server("--no-probes", "--db", str(tmp_path / "history.sqlite3"))
    try:
        answers = [server.get(f"/processes/{churning_shell.pid}/checkpointable?tree=true")
                   for _ in range(REQUESTS)]
    finally:
        server.stop()
    assert [status for status, _ in answers] == [200] * REQUESTS, answers
    documents = [document for _, document in answers]
    assert {document["pid"] for document in documents} == {churning_shell.pid}
    assert_judged_by_the_root(documents, churning_shell.pid)
    # the churn was met: some children exited while their tree was read
    assert any(document["departed"] for document in documents)


@pytest.mark.root
def test_check_judges_the_root_while_its_descendants_exit(churning_shell):
    checked = subprocess.run([str(CRWATCH), "check", "--json", *[str(churning_shell.pid)] * REQUESTS],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode in (0, 1), checked.stderr
    documents = json.loads(checked.stdout)
    assert len(documents) == REQUESTS
    assert_judged_by_the_root(documents, churning_shell.pid)
    assert checked.returncode == (0 if all(d["checkpointable"] for d in documents) else 1)


def assert_judged_by_the_root(documents: list[dict], root: int) -> None:
    """Each verdict is the shell's own at that moment: ok, or blocked while it waits in
    vfork(); never unknown, and no departed child's findings."""
    for document in documents:
        blockers = {(reason["code"], reason["pid"]) for reason in document["reasons"]
                    if reason["severity"] == "blocker"}
        assert {code for code, _ in blockers} <= ROOT_BLOCKERS, document["reasons"]
        assert {pid for _, pid in blockers} <= {root}
        assert document["verdict"] in ({"ok", "blocked"} if blockers else {"ok"}), document
        assert not {reason["pid"] for reason in document["reasons"]} & set(document["departed"])


# ---------------------------------------------------------------- processes on their way out

@pytest.fixture
def zombie():
    """A child that exited and is not reaped yet: it has given its namespaces up."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    while Proc(pid).stat.state != "Z":
        time.sleep(0.001)
    yield pid
    os.waitpid(pid, 0)


@pytest.mark.root
def test_the_mount_table_of_an_exiting_process_is_a_process_gone(zombie):
    with pytest.raises(OSError) as refused:
        open(f"/proc/{zombie}/mountinfo").close()
    assert refused.value.errno == 22  # EINVAL, on this kernel, for a task without namespaces
    for table in ("mountinfo", "mounts", "mountstats"):
        with pytest.raises(ProcessGone):
            Proc(zombie).read(table)


def test_the_live_table_applies_an_event_whose_mount_table_is_gone(zombie, tmp_path):
    # A process caught in its exit: its fd still reads, its mount table (the zombie's, the
    # kernel's own EINVAL) no longer does.
    pid = 4242
    (tmp_path / str(pid) / "fd").mkdir(parents=True)
    (tmp_path / str(pid) / "ns").mkdir()
    start_ticks = int(boot_seconds(time.monotonic_ns()) * CLOCK_TICKS) - 100
    fields = ["S", "1", str(pid), str(pid), "0", "-1", "0"] + ["0"] * 12 + [str(start_ticks)]
    (tmp_path / str(pid) / "stat").write_text(f"{pid} (worker) {' '.join(fields)} 0 0\n")
    os.symlink("/etc/hostname", tmp_path / str(pid) / "fd" / "3")
    os.symlink("mnt:[1]", tmp_path / str(pid) / "ns" / "mnt")  # no namespace of the auditor's
    os.symlink(f"/proc/{zombie}/mountinfo", tmp_path / str(pid) / "mountinfo")
    os.symlink(f"/proc/{os.getpid()}", tmp_path / "self")
    table = LiveTable(profile("criu", (4, 2, 1)), RecordingKernel(), proc_root=Path(tmp_path),
                      own_pid=1)
    assert table.apply(opened(pid, 3, "/etc/hostname")) == []
