"""The pytest plugin (`pytest --crwatch`), run in pytest sessions of its own (pytester)."""
from __future__ import annotations

import pytest

from tests.support.agreement import network_lock_options
from tests.support.servers import Server

pytestmark = [pytest.mark.bpf]

# Where CRIU locks TCP connections only with nftables, allowing them allows that too.
LOCK = ["=".join(network_lock_options())] if network_lock_options() else []

TESTS = '''
import subprocess, sys
import pytest

LOCK = __LOCK__

HOLD_KVM = "import os, time; fd = os.open('/dev/kvm', os.O_RDONLY); time.sleep(0.05)"
TCP = ("import socket, time; s = socket.create_server(('127.0.0.1', 0)); "
       "c = socket.create_connection(s.getsockname()); a, _ = s.accept(); time.sleep(0.05)")

def test_a_device_in_a_child():
    subprocess.run([sys.executable, "-c", HOLD_KVM], check=True)

def test_nothing_special():
    subprocess.run(["true"], check=True)

def test_tcp_not_allowed():
    subprocess.run([sys.executable, "-c", TCP], check=True)

@pytest.mark.crwatch_allow("--tcp-established", *LOCK)
def test_tcp_allowed_by_marker():
    subprocess.run([sys.executable, "-c", TCP], check=True)

def test_a_daemonized_grandchild():
    subprocess.run(["sh", "-c", "(exec 3</dev/kvm; sleep 0.1) & exit 0"], check=True)
    subprocess.run([sys.executable, "-c", "import time; time.sleep(0.3)"], check=True)
'''.replace("__LOCK__", repr(LOCK))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    running = Server("--db", str(tmp_path_factory.mktemp("plugin") / "history.sqlite3"))
    try:
        yield f"http://127.0.0.1:{running.port}"
    finally:
        running.stop()


def test_tests_whose_processes_became_non_checkpointable_fail_with_the_reasons(pytester,
                                                                              service):
    pytester.makepyfile(test_workloads=TESTS)
    result = pytester.runpytest_subprocess("--crwatch", "--crwatch-service", service, "-p",
                                           "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=3)
    text = result.stdout.str()
    for failing in ("test_a_device_in_a_child", "test_tcp_not_allowed",
                    "test_a_daemonized_grandchild"):
        assert f"FAILED test_workloads.py::{failing}" in text
    assert "processes of this test became non-checkpointable" in text
    assert "device.chr.unsupported" in text and "socket.tcp.established" in text
    assert "fix: close the device before checkpointing" in text


def test_allowing_for_every_test_and_opting_out(pytester, service):
    pytester.makepyfile(test_workloads=TESTS)
    allowed = pytester.runpytest_subprocess("--crwatch", "--crwatch-service", service,
                                            "--crwatch-allow=--tcp-established",
                                            *[f"--crwatch-allow={lock}" for lock in LOCK])
    allowed.assert_outcomes(passed=3, failed=2)
    plain = pytester.runpytest_subprocess()  # without --crwatch: nothing is watched
    plain.assert_outcomes(passed=5)


def test_with_its_own_probes_when_no_service_answers(pytester, monkeypatch):
    monkeypatch.setenv("CRWATCH_URL", "http://127.0.0.1:9")  # nothing listens there
    pytester.makepyfile(test_workloads=TESTS)
    result = pytester.runpytest_subprocess("--crwatch", "-k", "device or nothing")
    result.assert_outcomes(passed=1, failed=1)
