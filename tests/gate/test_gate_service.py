"""POST /processes/{pid}/gate on the real service: drift against the probes' tracked
state, its correction, /metrics, the token, bad input, and `crwatch gate` asking it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from api.service.models import Gate
from tests.support.servers import EventStream, Server, metrics
from tests.support.subjects import subject
from tests.support.tasks import THREADED

pytestmark = [pytest.mark.bpf, pytest.mark.criu]

CRWATCH = Path(sys.executable).with_name("crwatch")
TOKEN = "s3cret"
KVM_HOLDER = "fd = os.open('/dev/kvm', os.O_RDONLY)\nready(str(fd))\nhold()"
# /dev/kvm passed to itself through a unix socket, the original closed: the copy arrives
# by recvmsg, which no probe sees (docs/tracking-limits.md, section 6).
KVM_PASSED_TO_SELF = """
kvm = os.open('/dev/kvm', os.O_RDONLY)
here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
socket.send_fds(here, [b"x"], [kvm])
_, (received,), _, _ = socket.recv_fds(there, 1, 1)
os.close(kvm)
ready(str(received))
hold()
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    running = Server("--token", TOKEN, "--db", str(tmp_path_factory.mktemp("gate") / "h.sqlite3"),
                     "--dump-root", str(tmp_path_factory.getbasetemp()))  # tests' images
    try:
        yield running
    finally:
        assert "Traceback" not in running.stop()


def test_a_gate_finds_what_the_probes_missed_corrects_the_table_and_counts_it(server):
    stream = EventStream(server)
    try:
        assert stream.next()["kind"] == "ready"
        with subject(KVM_PASSED_TO_SELF) as s:
            received = int(s.note)
            stream.await_transition(s.pid, "nocr", "device.chr.unsupported")
            stream.await_transition(s.pid, "cr")  # the original's close: tracked as clean
            before = metrics(server)
            status, document = server.post(f"/processes/{s.pid}/gate", {}, token=TOKEN)
            assert status == 200, document
            Gate.model_validate(document)
            assert document["outcome"] == "refused" and document["drift"]["tracked"]
            missed = [(item["reason"]["code"], item["reason"]["fd"])
                      for item in document["drift"]["missed"]]
            assert ("device.chr.unsupported", received) in missed
            assert _not_ours(document["drift"]["stale"], server) == []
            corrected = stream.await_transition(s.pid, "nocr", "device.chr.unsupported")
            assert corrected["reasons"][0]["source"] == "audit"
            tracked = server.ok(f"/processes/{s.pid}/checkpointable")["tracked"]
            assert tracked["state"] == "nocr"
            after = metrics(server)
    finally:
        stream.close()
    missed_metric = 'crwatch_gate_drift_total{kind="missed"}'
    assert after[missed_metric] >= before.get(missed_metric, 0) + 1
    refused = 'crwatch_gates_total{outcome="refused"}'
    assert after[refused] == before.get(refused, 0) + 1
    frozen = 'crwatch_gate_frozen_seconds_count{method="ptrace"}'
    assert after[frozen] == before.get(frozen, 0) + 1


def test_a_tracked_state_that_agrees_has_no_drift(server):
    stream = EventStream(server)
    try:
        assert stream.next()["kind"] == "ready"
        with subject(KVM_HOLDER) as s:
            stream.await_transition(s.pid, "nocr", "device.chr.unsupported")
            status, document = server.post(f"/processes/{s.pid}/gate",
                                            {"watchdog_seconds": 10}, token=TOKEN)
    finally:
        stream.close()
    drift = document["drift"]
    assert status == 200 and drift["tracked"] and drift["missed"] == drift["criu"] == []
    assert _not_ours(drift["stale"], server) == []
    assert document["freeze"]["watchdog_seconds"] == 10 and document["tree"] is True  # default


def _not_ours(stale: list[dict], server: Server) -> list[dict]:
    """Stale marks but the test's own connections to the service, which a subject holds
    between its fork and its exec (docs/tracking-limits.md, section 12)."""
    return [item for item in stale
            if not (item["reason"]["code"] == "socket.tcp.established"
                    and f"127.0.0.1:{server.port}" in item["reason"]["message"])]


def test_a_gate_can_hand_off_to_criu_over_http(server, tmp_path):
    with subject("ready(); hold()") as s:
        status, document = server.post(f"/processes/{s.pid}/gate",
                                       {"dump": {"directory": str(tmp_path / "images")}},
                                       token=TOKEN)
        assert status == 200 and document["outcome"] == "dumped", document
        assert (tmp_path / "images" / "dump.log").exists() and s.process.poll() is None


def test_the_gate_needs_the_token_and_refuses_bad_input_clearly(server):
    with subject("ready(); hold()") as s:
        assert server.post(f"/processes/{s.pid}/gate", {})[0] == 401
        assert server.post(f"/processes/{s.pid}/gate", {}, token="wrong")[0] == 403
        for body in ({"dump": {"directory": "relative/dir"}}, {"bogus": 1},
                     {"watchdog_seconds": 0}, {"allow": "--file-locks"}, {"tree": "maybe"}):
            status, problem = server.post(f"/processes/{s.pid}/gate", body, token=TOKEN)
            assert status == 422 and problem["status"] == 422 and problem["detail"], body
    status, problem = server.post("/processes/4194304/gate", {}, token=TOKEN)
    assert (status, problem["detail"]) == (404, "no process with pid 4194304")


def test_a_dump_directory_must_be_inside_the_dump_root_and_is_made_only_for_a_dump(
        server, tmp_path, tmp_path_factory):
    root = tmp_path_factory.getbasetemp()
    outside = f"crwatch-outside-{os.getpid()}"
    (tmp_path / "link").symlink_to("/")
    with subject("ready(); hold()") as s:
        for directory in (f"/{outside}", f"{root}/../{outside}", f"{tmp_path}/link/{outside}"):
            status, problem = server.post(f"/processes/{s.pid}/gate",
                                          {"dump": {"directory": directory}}, token=TOKEN)
            assert status == 422 and "is outside the dump root" in problem["detail"], problem
            assert (" (that is /" in problem["detail"]) == (directory != f"/{outside}")
        assert not Path(f"/{outside}").exists() and not (root.parent / outside).exists()

        inside = tmp_path / "images"
        status, problem = server.post("/processes/4194304/gate",
                                      {"dump": {"directory": str(inside)}}, token=TOKEN)
        assert status == 404 and not inside.exists()
    with subject(KVM_HOLDER) as blocked:
        status, refused = server.post(f"/processes/{blocked.pid}/gate",
                                      {"dump": {"directory": str(inside)}}, token=TOKEN)
    assert status == 200 and refused["outcome"] == "refused" and not inside.exists()


def test_a_relative_dump_root_is_refused_at_start():
    done = subprocess.run([str(CRWATCH), "serve", "--dump-root", "dumps", "--port", "9"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == "crwatch: the dump root must be an absolute path: dumps\n"


def test_the_gate_refuses_init_the_service_and_a_tree_holding_it_before_freezing(server,
                                                                                 tmp_path):
    service = server.process.pid
    before = metrics(server)
    started = time.monotonic()
    images = {"directory": str(tmp_path / "images")}
    for pid, body, expected in (
            (1, {"dump": images}, "pid 1 is init: freezing it would hold the whole host"),
            (service, {"tree": False}, f"pid {service} is crwatch itself (crwatch serve)"),
            (os.getpid(), {"dump": images},  # this test's process: the service is its child
             f"the tree of pid {os.getpid()} contains crwatch itself: pid {service} "
             f"(crwatch serve)")):
        status, problem = server.post(f"/processes/{pid}/gate",
                                      {"watchdog_seconds": 60, **body}, token=TOKEN)
        assert status == 422 and problem["detail"].startswith(expected), problem
    # A frozen service would have answered only when its 60 s watchdog thawed it.
    assert time.monotonic() - started < 30
    after = metrics(server)
    for name in ('crwatch_gate_frozen_seconds_count{method="ptrace"}',
                 'crwatch_gate_frozen_seconds_count{method="cgroup"}'):
        assert after.get(name, 0) == before.get(name, 0), name  # nothing was frozen
    assert not (tmp_path / "images").exists()

    # `crwatch gate` asking the service says no for its own tree before it asks.
    own = subprocess.run(["sh", "-c", '"$0" gate --service "$1" $$; echo "status $?"',
                          str(CRWATCH), f"http://127.0.0.1:{server.port}"],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, CRWATCH_TOKEN=TOKEN))
    assert own.stdout.strip() == "status 2" and "(crwatch gate)" in own.stderr, own


def test_the_gate_judges_the_tree_and_refuses_a_dump_of_the_pid_alone(server, tmp_path):
    code = """
child = os.fork()
if child == 0:
    fd = os.open('/dev/kvm', os.O_RDONLY)
    os.write(int(os.environ["SUBJECT_READY_FD"]), f"{os.getpid()}\\n".encode())
    hold()
os.close(int(os.environ["SUBJECT_READY_FD"]))  # the child says ready, with its device open
hold()
"""
    with subject(code) as s, subject(THREADED) as t:
        status, whole = server.post(f"/processes/{s.pid}/gate", {}, token=TOKEN)
        status_alone, alone = server.post(f"/processes/{s.pid}/gate", {"tree": False},
                                          token=TOKEN)
        status_dump, problem = server.post(
            f"/processes/{s.pid}/gate",
            {"tree": False, "dump": {"directory": str(tmp_path / "images")}}, token=TOKEN)
        tid = next(int(n) for n in os.listdir(f"/proc/{t.pid}/task") if int(n) != t.pid)
        status_thread, thread = server.post(f"/processes/{tid}/gate", {}, token=TOKEN)
    assert status == 200 and whole["tree"] is True and whole["outcome"] == "refused"
    assert sorted(whole["freeze"]["pids"]) == sorted([s.pid, int(s.note)])
    assert ("device.chr.unsupported", int(s.note)) in [
        (r["code"], r["pid"]) for r in whole["verdict"]["reasons"]]
    assert status_alone == 200 and alone["tree"] is False and alone["outcome"] == "passed"
    assert status_dump == 422 and problem["detail"].startswith(
        f"a dump takes pid {s.pid} with all its descendants")
    assert not (tmp_path / "images").exists()
    assert status_thread == 422 and thread["thread_group_leader"] == t.pid


def test_crwatch_gate_asks_a_running_service_and_gets_its_drift_report(server):
    with subject(KVM_HOLDER) as s:
        done = subprocess.run([str(CRWATCH), "gate", str(s.pid), "--json", "--service",
                               f"http://127.0.0.1:{server.port}"],
                              capture_output=True, text=True,
                              env=dict(os.environ, CRWATCH_TOKEN=TOKEN))
        assert done.returncode == 1, done.stderr
        document = json.loads(done.stdout)
        assert document["drift"]["tracked"] is True and document["outcome"] == "refused"
        human = subprocess.run([str(CRWATCH), "gate", str(s.pid), "--service",
                                f"http://127.0.0.1:{server.port}"],
                               capture_output=True, text=True)  # no token: a clear refusal
        assert human.returncode == 2 and "refused the gate" in human.stderr
        assert "Traceback" not in human.stderr
