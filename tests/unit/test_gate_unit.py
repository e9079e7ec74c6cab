"""The gate's parts one by one: drift against a live table, CRIU's command line from
reasons, CRIU's own command line read back by the hook, CRIU's log read into reasons,
when a tree owns its cgroup, and the freezer helper's reports read back as JSON."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from api.cli.criu_hook import criu_options
from api.service.errors import GateBusy
from api.service.gates import Gates
from api.service.metrics import ServiceMetrics
from probes.events import Event, Kind, Special
from tests.support.gates import cgroup2_or_skip
from tests.support.subjects import subject
from tests.support.tasks import TRACED_CHILD
from tracker.audit import audit
from tracker.criu.log import failure_findings
from tracker.criu.options import arguments_for
from tracker.criu.runner import find_criu
from tracker.gate import standalone
from tracker.gate.freeze import owned_cgroup
from tracker.gate.freeze_helper import json_text
from tracker.gate.ready_helper import HELPER
from tracker.live.model import CR, NOCR
from tracker.live.table import LiveTable
from tracker.profiles import profile

KVM_HOLDER = "fd = os.open('/dev/kvm', os.O_RDONLY)\nready(str(fd))\nhold()"
KVM_CLOSED = "fd = os.open('/dev/kvm', os.O_RDONLY)\nos.close(fd)\nready(str(fd))\nhold()"
KVM_HELD_AND_CLOSED = ("held = os.open('/dev/kvm', os.O_RDONLY)\n"
                       "closed = os.open('/dev/kvm', os.O_RDONLY)\nos.close(closed)\n"
                       "ready(f'{held} {closed}')\nhold()")


def _opened(pid: int, fd: int) -> Event:
    return Event(Kind.FD_OPENED, time.monotonic_ns(), pid, comm="python", tid=pid, fd=fd,
                 special=Special.DEVICE, path="/dev/kvm")


@pytest.mark.root
def test_reconcile_reports_a_state_the_table_missed_and_takes_it():
    table = LiveTable(profile("criu", (4, 2, 1)))
    with subject(KVM_HOLDER) as s:
        drift, transitions = table.reconcile(audit(s.pid), time.monotonic_ns())
        assert [(d["kind"], d["reason"]["code"], d["reason"]["fd"]) for d in drift] == \
            [("missed", "device.chr.unsupported", int(s.note))]
        assert [(t.pid, t.state) for t in transitions] == [(s.pid, NOCR)]
        assert table.tracked(s.pid)["state"] == NOCR
        again, _ = table.reconcile(audit(s.pid), time.monotonic_ns())
        assert again == []  # corrected: no drift the second time


@pytest.mark.root
def test_reconcile_reports_a_stale_mark_and_drops_it():
    table = LiveTable(profile("criu", (4, 2, 1)))
    with subject(KVM_CLOSED) as s:
        table.apply(_opened(s.pid, int(s.note)))  # its close never reaches the table
        assert table.tracked(s.pid)["state"] == NOCR
        drift, transitions = table.reconcile(audit(s.pid), time.monotonic_ns())
        assert [(d["kind"], d["tracked_source"]) for d in drift] == [("stale", "probe")]
        assert drift[0]["tracked_since"] and drift[0]["reason"]["fd"] == int(s.note)
        assert [(t.pid, t.state) for t in transitions] == [(s.pid, CR)]


@pytest.mark.root
def test_a_correction_that_leaves_a_process_nocr_for_other_reasons_is_told():
    # The table marked a device fd since closed (its close lost), and missed the one held
    # (passed over a socket, say): the recheck changes the reasons, not the state, and a
    # subscriber must hear of it all the same.
    table = LiveTable(profile("criu", (4, 2, 1)))
    with subject(KVM_HELD_AND_CLOSED) as s:
        held, closed = map(int, s.note.split())
        table.apply(_opened(s.pid, closed))
        assert table.tracked(s.pid)["state"] == NOCR
        _, transitions = table.reconcile(audit(s.pid), time.monotonic_ns())
        assert [(t.pid, t.state, [(r["code"], r["fd"]) for r in t.reasons])
                for t in transitions] == [(s.pid, NOCR, [("device.chr.unsupported", held)])]
        _, again = table.reconcile(audit(s.pid), time.monotonic_ns())
        assert again == []  # nothing corrected: nothing told


def test_the_gates_own_ptrace_hold_marked_meanwhile_is_no_stale_mark():
    # The subject traces its child (PTRACE_TRACEME) as a gate's holder would: the audit
    # looks through that tracer (the hold), the table marked it from the probes' event.
    from tracker.context import Hold

    with subject(TRACED_CHILD) as s:
        child = int(s.note)
        held = Hold(s.pid, {child: "S"}, {})
        for gate_tracer, stale in ((s.pid, []), (None, [("stale", "task.traced")])):
            table = LiveTable(profile("criu", (4, 2, 1)))
            table.apply(Event(Kind.TRACED, time.monotonic_ns(), child, comm="python", tid=child,
                              arg=child))
            assert table.tracked(child)["state"] == NOCR
            drift, _ = table.reconcile(audit(child, hold=held), time.monotonic_ns(), gate_tracer)
            assert [(d["kind"], d["reason"]["code"]) for d in drift] == stale


def test_criu_arguments_name_each_option_once_with_the_largest_ghost_limit():
    reasons = [{"option": "--ghost-limit", "option_value": "5M"},
               {"option": "--ghost-limit", "option_value": "12M"},
               {"option": None, "option_value": None},
               {"option": "--tcp-established", "option_value": None},
               {"option": "--tcp-established", "option_value": None},
               {"option": "--external", "option_value": "unix[11]"},
               {"option": "--external", "option_value": "unix[12]"}]
    assert arguments_for(reasons) == ["--ghost-limit", "12M", "--tcp-established",
                                      "--external", "unix[11]", "--external", "unix[12]"]


def test_criu_arguments_pass_the_network_lock_the_reason_names():
    for value in ("nftables", "skip"):
        reasons = [{"option": "--tcp-established", "option_value": None},
                   {"option": "--network-lock", "option_value": value}]
        assert arguments_for(reasons) == ["--tcp-established", "--network-lock", value]


def test_the_hook_reads_the_options_criu_was_given():
    argv = ["criu", "dump", "-t", "42", "-D", "/images", "--tcp-established", "-j",
            "--ghost-limit", "8M", "--external=unix[99]", "--leave-running", "-v4",
            "--file-locks", "--action-script", "/usr/bin/crwatch-criu-hook"]
    assert criu_options(argv) == ["--tcp-established", "--shell-job", "--ghost-limit=8M",
                                  "--external=unix[99]", "--file-locks"]


def test_the_hook_reads_the_environment_options_with_their_values():
    argv = ["criu", "dump", "-t", "42", "--unprivileged", "--network-lock", "nftables",
            "--tcp-established"]
    assert criu_options(argv) == ["--unprivileged", "--network-lock=nftables", "--tcp-established"]


@pytest.mark.criu
def test_a_real_criu_failure_is_read_into_a_reason_naming_task_and_fd(tmp_path):
    criu = find_criu()
    with subject(KVM_HOLDER) as s:
        failed = criu.dump(s.pid)
    assert not failed.ok
    findings = failure_findings(failed.log, s.pid, "/images/dump.log")
    assert [(f.code, f.pid, f.fd) for f in findings] == [("criu.dump_failed", s.pid, int(s.note))]
    assert "Can't dump file" in findings[0].message and "/images/dump.log" in findings[0].message


def test_consequence_lines_alone_still_give_one_reason():
    log = ("(00.1) Error (criu/cr-dump.c:1545): Dump files (pid: 77) failed with -1\n"
           "(00.2) Error (criu/cr-dump.c:1975): Dumping FAILED.\n")
    assert [(f.pid, f.fd) for f in failure_findings(log, 5)] == [(77, None)]


@pytest.mark.root
def test_only_a_tree_alone_in_its_cgroup_owns_it(tmp_path):
    mount = cgroup2_or_skip()
    directory = mount / f"crwatch-unit-{os.getpid()}"
    directory.mkdir()
    try:
        with subject("ready(); hold()") as s, subject("ready(); hold()") as other:
            assert owned_cgroup(s.pid, [s.pid]) is None  # the root cgroup is nobody's
            (directory / "cgroup.procs").write_text(str(s.pid))
            assert owned_cgroup(s.pid, [s.pid]) == directory
            (directory / "cgroup.procs").write_text(str(other.pid))
            assert owned_cgroup(s.pid, [s.pid]) is None  # shared: freezing it stops another
    finally:
        while "populated 1" in (directory / "cgroup.events").read_text():
            time.sleep(0.01)
        directory.rmdir()


def test_a_second_gate_of_the_same_pid_waits_for_none_and_is_refused():
    gates = Gates(criu=None, dump_root=Path("/"),
                  profile_for=lambda name: profile("criu", (4, 2, 1)),
                  reconcile=lambda result, started_ns, holder: None, probe_finder=lambda: None,
                  judged=lambda pid, document: None, metrics=ServiceMetrics())
    with gates._one_at_a_time(42):
        with pytest.raises(GateBusy):
            with gates._one_at_a_time(42):
                pass
        with gates._one_at_a_time(43):
            pass
    with gates._one_at_a_time(42):
        pass


@pytest.mark.parametrize("argv, expected", [
    (["/venv/bin/python3", "/venv/bin/crwatch", "serve", "--port", "8642"], "crwatch serve"),
    (["/venv/bin/crwatch", "gate", "--local", "12"], "crwatch gate"),
    (["/usr/bin/python3", "-I", "-S", "/src/tracker/freeze_helper.py", "cgroup", "/sys/x", "-"],
     "crwatch's freezer helper"),
    (["python3", "-m", "api.cli", "serve"], "crwatch serve"),
    # what the compiled front end (api/cli/launcher.c) runs
    (["/venv/bin/python", "-P", "-m", "api.cli", "gate", "12"], "crwatch gate"),
    (["/venv/bin/python3", "/venv/bin/crwatch-criu-hook"], "crwatch-criu-hook"),
    (["vim", "crwatch"], None),
    (["/venv/bin/python3", "-m", "pytest", "tests/gate/test_gate.py"], None),
    (["/bin/bash"], None),
    ([], None),
])
def test_crwatch_processes_are_known_by_their_command_line(argv, expected):
    from tracker.gate.own_processes import _role_in

    assert _role_in(argv) == expected


def test_the_freezer_helper_started_from_its_bytecode_is_known_too():
    from tracker.gate.own_processes import _role_in

    argv = standalone.command(HELPER, "ptrace", "12", "1", "5.0", "2.0")
    assert _role_in(argv) == "crwatch's freezer helper"
    assert _role_in([sys.executable, "-I", "-S", "-c", standalone.LOADER]) is None


def test_a_program_started_from_its_bytecode_runs_its_main_with_its_arguments(tmp_path):
    """standalone.py's loader imports the program from its directory (writing its bytecode
    there), runs main with the arguments, and exits with what main returns."""
    program = tmp_path / "echo_twice.py"
    program.write_text("import sys\n"
                       "def main(argv):\n"
                       "    sys.stdout.write(' '.join(argv * 2) + '\\n')\n"
                       "    sys.stdout.flush()\n"
                       "    return len(argv)\n")
    for _ in range(2):  # compiled, then from __pycache__
        done = subprocess.run(standalone.command(program, "a", "b c"), capture_output=True,
                              text=True, timeout=30)
        assert (done.returncode, done.stdout, done.stderr) == (2, "a b c a b c\n", "")
    assert list((tmp_path / "__pycache__").glob("echo_twice.*.pyc"))


@pytest.mark.root
def test_only_roots_processes_named_crwatch_are_crwatch(tmp_path):
    """Another user cannot make a tree ungateable by naming a process of theirs crwatch."""
    from tracker.gate.own_processes import role
    scripts = Path(tempfile.mkdtemp(prefix="crwatch-unit-"))  # where nobody may run it
    try:
        scripts.chmod(0o755)
        named = scripts / "crwatch"
        named.write_text(f"#!{sys.executable}\nimport sys\nsys.stdin.read()\n")
        named.chmod(0o755)
        as_root = subprocess.Popen([str(named), "serve"], stdin=subprocess.PIPE)
        as_nobody = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534",
                                      "--clear-groups", str(named), "serve"],
                                     stdin=subprocess.PIPE)
        try:
            for started in (as_root, as_nobody):  # until each runs the script, not setpriv
                deadline = time.monotonic() + 30
                while b"crwatch\0serve" not in Path(f"/proc/{started.pid}/cmdline").read_bytes():
                    assert time.monotonic() < deadline, "the script never started"
                    time.sleep(0.01)
            assert role(as_root.pid) == "crwatch serve"
            assert role(as_nobody.pid) is None
            assert role(os.getpid()) is None  # pytest: python -m pytest
        finally:
            for started in (as_root, as_nobody):
                started.communicate(b"", timeout=30)
    finally:
        shutil.rmtree(scripts)


@pytest.mark.parametrize("report", [
    {"event": "frozen", "freeze_ms": 0.2734, "method": "ptrace", "cgroup": None, "pids": [7, 8],
     "tasks": 2, "states": {7: "S", 8: "t"}, "stop_signals": {}, "unfrozen": [],
     "already_frozen": False, "expired": True},
    {"event": "frozen", "error": 'No such file or directory: /sys/fs/cgroup/a "b"\\c\n\t'},
    {"cgroup": "/sys/fs/cgroup/caf\u00e9/\u96ea/\U0001f600/\udcff\x7f\x00", "frozen_ms": 1e-05},
])
def test_the_helpers_reports_read_back_as_written(report):
    text = json_text(report)
    assert text.isascii() and "\n" not in text  # one line, whatever a path holds
    expected = {str(key): value for key, value in report.items()}
    if "states" in report:
        expected["states"] = {str(tid): state for tid, state in report["states"].items()}
    assert json.loads(text) == expected
