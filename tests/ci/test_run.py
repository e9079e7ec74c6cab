"""`crwatch run -- CMD` on real workloads: the whole tree followed, transient states with
their reasons and durations, the final audit, markers, reports, exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.agreement import network_lock_allowed
from tests.support.servers import Server

pytestmark = [pytest.mark.bpf]

CRWATCH = Path(sys.executable).with_name("crwatch")
PY = sys.executable

# Each step opens something a checkpoint cannot take, holds it a moment, lets it go.
PYTHON_WORKLOAD = textwrap.dedent("""
    import ctypes, fcntl, os, socket, sys, time
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    device = os.open("/dev/kvm", os.O_RDONLY); time.sleep(0.05); os.close(device)
    with open(sys.argv[1], "w") as locked:
        fcntl.lockf(locked, fcntl.LOCK_EX); time.sleep(0.1); fcntl.lockf(locked, fcntl.LOCK_UN)
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname()); accepted, _ = server.accept()
    time.sleep(0.05); client.close(); accepted.close()
    ring = syscall(425, 4, ctypes.create_string_buffer(120))
    if ring >= 0:
        time.sleep(0.05); os.close(ring)
    child = os.fork()
    if child == 0:
        device = os.open("/dev/kvm", os.O_RDONLY); time.sleep(0.1)
        os.execv("/bin/sh", ["sh", "-c", "exec 3</dev/kvm; sleep 0.1"])
    os.waitpid(child, 0)
""")


NO_SERVICE = "http://127.0.0.1:9"  # nothing listens there: a `crwatch watch` of its own


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[str]:
    """One service for the module's runs: its probes are compiled once, not per run."""
    running = Server("--db", str(tmp_path_factory.mktemp("run") / "history.sqlite3"))
    try:
        yield f"http://127.0.0.1:{running.port}"
    finally:
        running.stop()


def run(*arguments: str, service: str = NO_SERVICE, user: int | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess:
    command = [str(CRWATCH), "run", *arguments]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "CRWATCH_URL": service})


def codes_of(process: dict) -> set[str]:
    return {r["code"] for episode in process["episodes"] for r in episode["reasons"]} | \
        {r["code"] for taken in process["audits"] for r in taken["reasons"]}


def test_every_transient_state_of_the_tree_is_reported_with_when_and_how_long(tmp_path, service):
    done = run("--json", str(tmp_path / "report.json"), "--junit", str(tmp_path / "junit.xml"),
               "--", PY, "-c", PYTHON_WORKLOAD, str(tmp_path / "lockfile"), service=service)
    assert done.returncode == 1, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["schema"] == "crwatch.run/1" and report["command_status"] == 0
    assert report["exit_code"] == 1 and not report["checkpointable"]
    parent, *children = report["processes"]
    assert parent["cmdline"][:2] == [PY, "-c"] and parent["failed"]
    expected = {"device.chr.unsupported", "lock.posix", "socket.tcp.established"}
    if _io_uring_allowed():
        expected.add("anon.io_uring")
    assert expected <= codes_of(parent), parent
    assert all(e["until"] and e["duration_ms"] >= 0 for e in parent["episodes"])
    device = next(e for e in parent["episodes"]
                  if e["reasons"][0]["code"] == "device.chr.unsupported")
    assert 30 <= device["duration_ms"] < 5000  # held 50 ms
    # the forked child, before and after its exec
    (child,) = [p for p in children if p["parent"] == parent["pid"]]
    assert "device.chr.unsupported" in codes_of(child) and child["failed"]
    assert len(child["episodes"]) >= 1
    assert "result: NOT checkpointable" in done.stderr and f"pid {parent['pid']}" in done.stderr

    suite = ET.parse(tmp_path / "junit.xml").getroot()
    failing = [p for p in report["processes"] if p["failed"]]
    assert len(failing) >= 2  # the child's sleep inherits the device too
    assert suite.tag == "testsuite" and int(suite.get("failures")) == len(failing)
    failed = [case for case in suite.iter("testcase") if case.find("failure") is not None]
    assert any("device.chr.unsupported" in case.find("failure").text for case in failed)


def test_allowed_options_pass_and_a_clean_run_exits_0(tmp_path, service):
    tcp = ("import socket, time; server = socket.create_server(('127.0.0.1', 0)); "
           "c = socket.create_connection(server.getsockname()); a, _ = server.accept(); "
           "time.sleep(0.05)")
    assert run("--", PY, "-c", tcp, service=service).returncode == 1
    allowed = run("--allow=--tcp-established", *network_lock_allowed(), "--json",
                  str(tmp_path / "r.json"),
                  "--", PY, "-c", tcp, service=service)
    assert allowed.returncode == 0, allowed.stderr
    (process,) = json.loads((tmp_path / "r.json").read_text())["processes"]
    assert process["episodes"][0]["allowed"] and not process["failed"]
    clean = run("--", "sh", "-c", "echo hello; true", service=service)
    assert clean.returncode == 0 and clean.stdout == "hello\n"
    assert "result: checkpointable" in clean.stderr


def test_a_shell_workload_with_a_lock_and_exec(tmp_path, service):
    script = f"flock {tmp_path}/lock sh -c 'sleep 0.2'; exec sh -c 'exec 3</dev/kvm; sleep 0.1'"
    done = run("--json", str(tmp_path / "r.json"), "--", "sh", "-c", script, service=service)
    assert done.returncode == 1, done.stderr
    codes = set().union(*(codes_of(p) for p in
                          json.loads((tmp_path / "r.json").read_text())["processes"]))
    assert {"lock.flock", "device.chr.unsupported"} <= codes


def test_the_commands_own_failure_wins_and_a_missing_command_is_127(service):
    failed = run("--", "sh", "-c", "exec 3</dev/kvm; exit 7", service=service)
    assert failed.returncode == 7
    missing = run("--", "no-such-command-anywhere")
    assert missing.returncode == 127
    assert missing.stderr.strip() == "crwatch: no-such-command-anywhere: command not found"
    assert run().returncode == 2


def test_a_report_that_cannot_be_written_is_refused_or_printed_on_stdout_instead(tmp_path,
                                                                              service):
    ran = tmp_path / "ran"
    refused = run("--junit", str(tmp_path / "no-such-dir" / "r.xml"), "--", "touch", str(ran),
                  service=service)
    assert refused.returncode == 2 and not ran.exists()  # said before the command runs
    assert "cannot write a report to" in refused.stderr
    # /dev/full opens like a file, and every write to it fails (ENOSPC): at the end
    lost = run("--json", "/dev/full", "--", "true", service=service)
    assert "cannot write the report to /dev/full" in lost.stderr
    assert json.loads(lost.stdout)["exit_code"] == 0
    assert lost.returncode == 2  # a passing run whose report is lost must not pass
    failed = run("--json", "/dev/full", "--", "sh", "-c", "exit 7", service=service)
    assert failed.returncode == 7 and json.loads(failed.stdout)["exit_code"] == 7


def test_at_end_judges_what_still_runs_and_ignores_transients(tmp_path, service):
    transient = run("--at-end", "--", "sh", "-c", "exec 3</dev/kvm; sleep 0.05; exec 3<&-",
                    service=service)
    assert transient.returncode == 0, transient.stderr
    left = run("--at-end", "--json", str(tmp_path / "r.json"), "--", "sh", "-c",
               "sh -c 'exec 3</dev/kvm; exec sleep 30.123' >/dev/null 2>&1 & sleep 0.3",
               service=service)
    try:
        assert left.returncode == 1, left.stderr
        report = json.loads((tmp_path / "r.json").read_text())
        (daemon,) = [p for p in report["processes"] if p["failed"]]
        assert daemon["audits"][0]["cause"] == "end"
        assert "device.chr.unsupported" in {r["code"] for r in daemon["audits"][0]["reasons"]}
    finally:
        subprocess.run(["pkill", "-f", "sleep 30.123"], check=False)


def test_markers_judge_the_moments_the_workload_chooses(tmp_path, service):
    # Holds /dev/kvm at the signal, waits until it was judged, then lets it go.
    at_signal = ("import os, signal, time; device = os.open('/dev/kvm', os.O_RDONLY)\n"
                 "os.kill(int(os.environ['CRWATCH_PID']), signal.SIGUSR1)\n"
                 "while not os.path.getsize(os.environ['CRWATCH_MARKS']): time.sleep(0.01)\n"
                 "os.close(device)")
    done = run("--at-signal", "USR1", "--json", str(tmp_path / "r.json"), "--",
               PY, "-c", at_signal, service=service)
    assert done.returncode == 1, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mode"] == "marker" and report["markers"][0]["cause"] == "signal SIGUSR1"
    at_file = (f"import os, time; open('{tmp_path}/checkpoint-now', 'w').close()\n"
               "while not os.path.getsize(os.environ['CRWATCH_MARKS']): time.sleep(0.01)\n"
               "device = os.open('/dev/kvm', os.O_RDONLY); time.sleep(0.05)")  # not judged
    done = run("--at-file", str(tmp_path / "checkpoint-now"), "--", PY, "-c", at_file,
               service=service)
    assert done.returncode == 0, done.stderr
    never = run("--at-signal", "USR1", "--", "true", service=service)
    assert never.returncode == 1 and "the marker never came" in never.stderr


def test_without_root_it_explains_and_degrades_on_request(tmp_path):
    tcp = ("import socket, time; server = socket.create_server(('127.0.0.1', 0)); "
           "c = socket.create_connection(server.getsockname()); a, _ = server.accept(); "
           "time.sleep(1.5)")
    refused = run("--", PY, "-c", tcp, user=65534)
    assert refused.returncode == 2 and "run needs root" in refused.stderr
    assert "--degraded-ok" in refused.stderr
    degraded = run("--degraded-ok", "--interval", "0.1", "--", PY, "-c", tcp, user=65534)
    assert degraded.returncode == 1, degraded.stderr
    assert "warning: not root" in degraded.stderr and "socket.tcp.established" in degraded.stderr


def test_without_a_service_it_attaches_probes_of_its_own(tmp_path):
    done = run("--json", str(tmp_path / "r.json"), "--", "sh", "-c",
               "exec 3</dev/kvm; sleep 0.05")
    assert done.returncode == 1, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["source"] == "crwatch watch"
    assert "device.chr.unsupported" in codes_of(report["processes"][0])


def test_the_shortest_state_is_still_seen(tmp_path, service):
    """An fd opened and closed at once: the probes see both syscalls, whatever the gap."""
    done = run("--json", str(tmp_path / "r.json"), "--", PY, "-c",
               "import os; os.close(os.open('/dev/kvm', os.O_RDONLY))", service=service)
    assert done.returncode == 1, done.stderr
    (process,) = json.loads((tmp_path / "r.json").read_text())["processes"]
    (episode,) = process["episodes"]
    print(f"shortest detected state: {episode['duration_ms']} ms")
    assert episode["duration_ms"] is not None and episode["duration_ms"] < 50


def _io_uring_allowed() -> bool:
    """Whether this kernel lets a process make an io_uring (a sysctl can forbid it)."""
    import ctypes

    ring = ctypes.CDLL(None, use_errno=True).syscall(425, 4, ctypes.create_string_buffer(120))
    if ring < 0:
        print(f"io_uring_setup refused here: errno {ctypes.get_errno()}")
        return False
    os.close(ring)
    return True
