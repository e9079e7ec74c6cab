"""The service over real HTTP: `crwatch serve` with its probes, real subjects, real audits."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.service.models import EventLine
from tests.support.agreement import network_lock_options
from tests.support.callers import NOBODY, get_as
from tests.support.namespaces import NESTED_PID_NS
from tests.support.servers import EventStream, Server, metrics
from tests.support.subjects import subject
from tests.support.tasks import THREADED
from tracker.criu.runner import find_criu

pytestmark = [pytest.mark.bpf, pytest.mark.criu]

CRWATCH = Path(sys.executable).with_name("crwatch")
ARRIVAL_TIMEOUT = 10.0

KVM_HOLDER = "fd = os.open('/dev/kvm', os.O_RDONLY)\nready(str(fd))\nhold()"
TCP_PAIR = """
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
client = socket.create_connection(listener.getsockname()); served, _ = listener.accept()
ready(); hold()
"""


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("service") / "history.sqlite3"


@pytest.fixture(scope="module")
def server(database) -> Iterator[Server]:
    running = Server("--db", str(database))
    try:
        yield running
    finally:
        stderr = running.stop()
        assert "Traceback" not in stderr, stderr


def _codes(reasons: list[dict]) -> list[str]:
    return [reason["code"] for reason in reasons]


def test_healthz_says_the_probes_are_attached(server):
    health = server.ok("/healthz")
    assert health["status"] == "ok" and health["degraded"] is None
    states = {probe["name"]: probe["state"] for probe in health["probes"]}
    # the futex probe is left out: the service's profile (criu) rates PI futexes info
    assert states["required"] == "attached" and states["futex"] == "disabled"
    (futex,) = [probe for probe in health["probes"] if probe["name"] == "futex"]
    assert "no served profile (criu)" in futex["why"] and "task.pi_futex" in futex["why"]
    assert health["device_filter"]["state"] == "in kernel"
    assert health["startup"]["phase"] == "ready"
    assert set(health["startup"]["seconds"]) == {"probes", "seeding", "total"}
    assert health["counters"]["lost"] == {"kernel": 0, "queue_overflow": 0, "decode_errors": 0,
                                         "out_of_fds": 0}


def test_a_device_holder_is_blocked_by_the_audit_and_marked_by_the_probes(server):
    with subject(KVM_HOLDER) as s:
        document = server.ok(f"/processes/{s.pid}/checkpointable")
        assert (document["schema"], document["pid"], document["verdict"],
                document["checkpointable"]) == ("crwatch.verdict/1", s.pid, "blocked", False)
        (device,) = [r for r in document["reasons"] if r["code"] == "device.chr.unsupported"]
        assert (device["fd"], device["source"]) == (int(s.note), "audit")
        # the probes' view of the same process, once its open has been applied
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while "device.chr.unsupported" not in _codes((document["tracked"] or {}).get("reasons",
                                                                                    [])):
            assert time.monotonic() < deadline, "the probes never marked the process"
            time.sleep(0.01)
            document = server.ok(f"/processes/{s.pid}/checkpointable")
        tracked = document["tracked"]
        assert tracked["state"] == "nocr" and tracked["start_time"] == document["start_time"]
        assert [(r["code"], r["source"]) for r in tracked["reasons"]] == [
            ("device.chr.unsupported", "probe")]


def test_allowed_options_make_a_needs_options_process_checkpointable(server):
    with subject(TCP_PAIR) as s:
        plain = server.ok(f"/processes/{s.pid}/checkpointable")
        assert plain["verdict"] == "needs_options" and not plain["checkpointable"]
        lock = network_lock_options()
        assert plain["required_options"] == sorted(["--tcp-established", *lock[:1]])
        lock_allowed = f"&allow={urllib.parse.quote('='.join(lock))}" if lock else ""
        allowed = server.ok(f"/processes/{s.pid}/checkpointable?allow=--tcp-established"
                            f"{lock_allowed}")
        assert allowed["checkpointable"]
        assert allowed["allowed_options"] == sorted(["--tcp-established", *lock[:1]])
        strict = server.ok(f"/processes/{s.pid}/checkpointable?profile=strict")
        assert strict["profile"] == "strict"


def test_a_profile_needing_a_probe_not_attached_gets_a_verdict_saying_what_it_misses(server):
    with subject("ready()\nhold()") as s:
        criu = server.ok(f"/processes/{s.pid}/checkpointable")
        assert criu["verdict"] == "ok" and "audit.probe_not_attached" not in _codes(criu["reasons"])
        strict = server.ok(f"/processes/{s.pid}/checkpointable?profile=strict")
        assert (strict["profile"], strict["verdict"], strict["checkpointable"]) == (
            "strict", "unknown", False)
        (unseen,) = [r for r in strict["reasons"] if r["code"] == "audit.probe_not_attached"]
        assert "futex probe is not attached" in unseen["message"]
        assert "task.pi_futex" in unseen["message"]


def test_a_tree_is_judged_with_its_descendants(server):
    code = """
child = os.fork()
if child == 0:
    fd = os.open('/dev/kvm', os.O_RDONLY)
    signal.pause()
ready(str(child))
hold()
"""
    with subject(code) as s:
        child = int(s.note)
        alone = server.ok(f"/processes/{s.pid}/checkpointable?tree=false")
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while True:  # the child opens the device after the parent reported ready
            tree = server.ok(f"/processes/{s.pid}/checkpointable")  # the tree, by default
            if tree["verdict"] == "blocked" or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert alone["verdict"] == "ok" and alone["tree"] is False
        assert tree["verdict"] == "blocked" and tree["tree"] is True
        assert child in [p["pid"] for p in tree["processes"]]
        assert ("device.chr.unsupported", child) in [(r["code"], r["pid"]) for r in tree["reasons"]]
        detail = server.ok(f"/processes/{s.pid}")
        assert detail["tree"] is True and detail["verdict"] == "blocked"
        assert server.ok(f"/processes/{s.pid}?tree=false")["verdict"] == "ok"


def test_a_root_whose_child_nests_a_pid_namespace_is_blocked_as_criu_refuses_it(server):
    criu = find_criu()
    assert criu is not None, "no CRIU: scripts/setup.sh provides one"
    with subject(NESTED_PID_NS) as s:
        tree = server.ok(f"/processes/{s.pid}/checkpointable")
        alone = server.ok(f"/processes/{s.pid}/checkpointable?tree=false")
        dumped = criu.dump(s.pid)
        row = _listed(server, s.pid, lambda row: row["tree_size"] == 3)
        blocked_trees = server.ok("/processes?tree_verdict=blocked&limit=1000")["processes"]
    assert tree["tree"] is True and tree["verdict"] == "blocked" and not tree["checkpointable"]
    assert "namespace.nested" in _codes(tree["reasons"]) and len(tree["processes"]) == 3
    assert not dumped.ok and "Can't dump nested pid namespace for" in dumped.log
    assert alone["tree"] is False and alone["verdict"] == "ok"
    # the row: its own findings, and the verdict of the tree rooted there
    assert (row["verdict"], row["checkpointable"]) == ("ok", True)
    assert (row["tree_verdict"], row["tree_checkpointable"]) == ("blocked", False)
    assert row["tree_nested_namespace"] is True and row["ppid"] == os.getpid()
    assert s.pid in [r["pid"] for r in blocked_trees]
    assert all(r["tree_verdict"] == "blocked" for r in blocked_trees)


def test_an_orphans_row_follows_it_to_its_new_parent(server):
    code = """
signal.signal(signal.SIGCHLD, lambda *_: os.waitpid(-1, os.WNOHANG))  # reap the middle one
r, w = os.pipe()
middle = os.fork()
if middle == 0:
    orphan = os.fork()
    if orphan == 0:
        hold()
    os.write(w, f"{orphan}\\n".encode())
    hold()
os.close(w)
ready(f"{middle} {int(os.read(r, 32))}")
hold()
"""
    with subject(code) as s:
        middle, orphan = map(int, s.note.split())
        assert _listed(server, s.pid, lambda row: row["tree_size"] == 3)["ppid"] == os.getpid()
        os.kill(middle, signal.SIGKILL)
        alone = _listed(server, s.pid, lambda row: row["tree_size"] == 1)
        rows = {row["pid"]: row for row in server.ok("/processes?limit=1000")["processes"]}
        reaper = int(Path(f"/proc/{orphan}/stat").read_text().rpartition(")")[2].split()[1])
    assert alone["tree_verdict"] == alone["verdict"] and middle not in rows
    assert reaper != middle and rows[orphan]["ppid"] == reaper


def test_a_thread_id_gets_a_422_naming_its_process(server):
    with subject(THREADED) as s:
        tid = next(int(t) for t in os.listdir(f"/proc/{s.pid}/task") if int(t) != s.pid)
        for path in (f"/processes/{tid}/checkpointable", f"/processes/{tid}",
                     f"/processes/{tid}/fds"):
            status, body = server.get(path)
            assert status == 422 and body["thread_group_leader"] == s.pid, (path, body)
            assert body["detail"].startswith(f"{tid} is a thread of process {s.pid}")


def _listed(server, pid: int, settled=lambda row: True) -> dict:
    """The process list's row of pid, once it is there (the list is refreshed every second)
    and `settled` holds for it."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while True:
        rows = server.ok("/processes?limit=1000")["processes"]
        row = next((row for row in rows if row["pid"] == pid), None)
        if row is not None and settled(row):
            return row
        assert time.monotonic() < deadline, f"pid {pid} never appeared settled: {row}"
        time.sleep(0.05)


def test_a_process_document_adds_its_command_line_and_cgroup(server):
    with subject(KVM_HOLDER) as s:
        document = server.ok(f"/processes/{s.pid}")
        expected = Path(f"/proc/{s.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        assert document["cmdline"] == [part.decode() for part in expected]
        assert document["schema"] == "crwatch.process/1" and document["verdict"] == "blocked"
        cgroup = Path(f"/proc/{s.pid}/cgroup").read_text().split("::")[-1].strip()
        assert document["cgroup"] == cgroup
    status, body = server.get(f"/processes/{s.pid}")
    assert status == 404 and body["detail"] == f"no process with pid {s.pid}"


def test_the_fd_report_lists_every_fd_with_its_reasons(server):
    with subject(KVM_HOLDER) as s:
        report = server.ok(f"/processes/{s.pid}/fds")
        by_fd = {entry["fd"]: entry for entry in report["fds"]}
        assert set(by_fd) == {int(name) for name in os.listdir(f"/proc/{s.pid}/fd")}
        device = by_fd[int(s.note)]
        assert (device["target"], device["kind"]) == ("/dev/kvm", "chr")
        assert _codes(device["reasons"]) == ["device.chr.unsupported"]
        assert all(not entry["reasons"] for fd, entry in by_fd.items() if fd != int(s.note))


@pytest.mark.parametrize("pid", ["abc", "-1", "0", "1.5", "99999999999", "%20", "0x10"])
def test_malformed_pids_get_a_json_422(server, pid):
    for path in (f"/processes/{pid}", f"/processes/{pid}/checkpointable",
                 f"/processes/{pid}/fds", f"/processes/{pid}/history"):
        status, body = server.get(path)
        assert status == 422 and body["status"] == 422 and "pid" in body["detail"], (path, body)


def test_bad_parameters_get_a_json_422(server):
    status, body = server.get(f"/processes/{os.getpid()}/checkpointable?profile=lenient")
    assert status == 422 and "profile" in body["detail"]
    status, body = server.get(f"/processes/{os.getpid()}/checkpointable?tree=perhaps")
    assert status == 422 and "tree" in body["detail"]


def test_a_process_gone_gets_a_json_404(server):
    gone = subprocess.Popen(["true"])
    gone.wait()
    for path in (f"/processes/{gone.pid}/checkpointable", f"/processes/{gone.pid}/fds"):
        status, body = server.get(path)
        assert (status, body) == (404, {"status": 404, "detail": f"no process with pid {gone.pid}"})


def test_rules_and_openapi_describe_the_service(server):
    rules = server.ok("/rules")
    assert rules["schema"] == "crwatch.rules/1"
    assert "device.chr.unsupported" in _codes(rules["rules"])
    assert server.ok("/rules?profile=strict")["profile"] == "strict"
    schema = server.ok("/openapi.json")
    paths = schema["paths"]
    assert {"/processes/{pid}/checkpointable", "/processes/{pid}/fds", "/rules",
            "/healthz"} <= set(paths)
    tree = next(p for p in paths["/processes/{pid}/checkpointable"]["get"]["parameters"]
                if p["name"] == "tree")
    assert tree["schema"]["default"] is True  # the scope of a checkpoint: the tree
    components = schema["components"]["schemas"]
    assert {"tree_verdict", "tree_checkpointable", "ppid"} <= set(
        components["ProcessRow"]["properties"])
    assert components["GateRequestBody"]["properties"]["tree"]["default"] is True
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/docs", timeout=30) as page:
        assert page.status == 200 and b"swagger" in page.read().lower()


def test_listening_beyond_loopback_needs_a_token():
    result = subprocess.run([str(CRWATCH), "serve", "--host", "0.0.0.0"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "CRWATCH_TOKEN": ""})
    assert result.returncode == 2
    assert result.stderr.startswith("crwatch: listening on 0.0.0.0 needs a token")


def test_events_stream_ready_then_the_transitions_of_a_process(server):
    stream = EventStream(server)
    try:
        ready = stream.next()
        assert (ready["schema"], ready["kind"]) == ("crwatch.event/1", "ready")
        # The subject is forked by this test process, whose connection to the service the
        # probes see (and the child holds until it execs): the transition that matters is
        # the one with /dev/kvm.
        with subject(KVM_HOLDER) as s:
            entered = stream.await_transition(s.pid, "nocr", "device.chr.unsupported")
        left = stream.await_transition(s.pid, "cr")
        assert left["exited"] is True and left["start_time"] == entered["start_time"]
        for line in (ready, entered, left):  # the documented model (OpenAPI) fits them
            EventLine.model_validate(line)
    finally:
        stream.close()


def test_several_event_clients_each_get_every_line(server):
    streams = [EventStream(server) for _ in range(3)]
    try:
        for stream in streams:
            assert stream.next()["kind"] == "ready"
        with subject(KVM_HOLDER) as s:
            for stream in streams:
                assert stream.await_transition(s.pid, "nocr", "device.chr.unsupported")
    finally:
        for stream in streams:
            stream.close()


def test_metrics_count_what_the_service_did(server):
    before = metrics(server)
    with subject(KVM_HOLDER) as s:
        server.ok(f"/processes/{s.pid}/checkpointable")
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while server.ok(f"/processes/{s.pid}/checkpointable")["tracked"] is None:
            assert time.monotonic() < deadline, "the probes never marked the process"
        during = metrics(server)
    blocked = 'crwatch_verdicts_served_total{verdict="blocked"}'
    assert during[blocked] >= before.get(blocked, 0) + 2
    assert during['crwatch_tracked_reasons{code="device.chr.unsupported"}'] >= 1
    assert during['crwatch_tracked_processes{state="nocr"}'] >= 1
    # the first request audits; later ones may reuse that audit
    assert during["crwatch_audit_seconds_count"] >= before["crwatch_audit_seconds_count"] + 1
    assert during["crwatch_events_applied_total"] > before["crwatch_events_applied_total"]
    assert during['crwatch_probe_attached{probe="required",state="attached"}'] == 1
    assert during["crwatch_degraded"] == 0
    assert sum(during[f'crwatch_processes{{verdict="{name}"}}']
               for name in ("ok", "needs_options", "blocked", "unknown")) >= 2
    assert any(name.startswith("crwatch_process_reasons{") for name in during)
    assert during['crwatch_events_lost_total{where="kernel"}'] == 0


def test_history_is_kept_across_a_restart_and_after_the_process_exited(tmp_path):
    database = tmp_path / "history.sqlite3"
    first = Server("--db", str(database))
    try:
        with subject(KVM_HOLDER) as s:
            deadline = time.monotonic() + ARRIVAL_TIMEOUT
            while not any(e["kind"] == "transition" and e["state"] == "nocr"
                          for e in first.ok(f"/processes/{s.pid}/history")["entries"]):
                assert time.monotonic() < deadline, "no nocr transition was recorded"
                time.sleep(0.01)
            verdict = first.ok(f"/processes/{s.pid}/checkpointable")
            live = first.ok(f"/processes/{s.pid}/history")
        assert live["alive"] is True and live["start_time"] == verdict["start_time"]
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while not any(e.get("exited") for e in first.ok(f"/processes/{s.pid}/history")["entries"]):
            assert time.monotonic() < deadline, "the exit was not recorded"
            time.sleep(0.01)
    finally:
        assert "Traceback" not in first.stop()
    second = Server("--db", str(database))
    try:
        kept = second.ok(f"/processes/{s.pid}/history")
        status, _ = second.get(f"/processes/{s.pid}/history?start_time=1.5")
    finally:
        second.stop()
    assert kept["alive"] is False and kept["start_time"] == verdict["start_time"]
    kinds = [(e["kind"], e.get("state") or e.get("verdict")) for e in kept["entries"]]
    assert ("transition", "nocr") in kinds and ("verdict", "blocked") in kinds
    assert kinds.index(("transition", "nocr")) < kinds.index(("transition", "cr"))
    assert [e["exited"] for e in kept["entries"] if e["kind"] == "transition"][-1] is True
    assert status == 404  # an identity never recorded


def test_a_history_database_that_cannot_be_opened_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = subprocess.run([str(CRWATCH), "serve", "--no-probes", "--db",
                             str(blocker / "history.sqlite3")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("crwatch: cannot open the history database")
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_process_list_is_judged_filtered_and_paginated(server):
    with subject(KVM_HOLDER) as s:
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        # The list is refreshed every second: a new process shows up then, and its row
        # may be one audited while it started (blocked for what it held then), until
        # the pass after its open of /dev/kvm audits it again.
        while True:
            blocked = server.ok("/processes?verdict=blocked&limit=1000")
            row = next((row for row in blocked["processes"] if row["pid"] == s.pid), None)
            if row is not None and "device.chr.unsupported" in row["codes"]:
                break
            assert time.monotonic() < deadline, f"the kvm holder's row never came: {row}"
            time.sleep(0.05)
        assert all(row["verdict"] == "blocked" for row in blocked["processes"])
        assert row["checkpointable"] is False
        assert (row["tree_verdict"], row["tree_size"]) == ("blocked", 1)
        assert row["tree_checkpointable"] is False and row["tree_nested_namespace"] is False
        # the tree rooted at this test process holds the blocked subject
        mine = next(r for r in server.ok("/processes?limit=1000")["processes"]
                    if r["pid"] == os.getpid())
        assert mine["tree_verdict"] in ("blocked", "unknown") and mine["tree_size"] >= 2
        everything = server.ok("/processes?limit=1000")
        assert everything["total"] >= blocked["total"] + 1
        pids = [row["pid"] for row in everything["processes"]]
        assert pids == sorted(pids) and os.getpid() in pids
        page = server.ok("/processes?offset=1&limit=2")
        assert [r["pid"] for r in page["processes"]] == pids[1:3] and page["limit"] == 2
        by_comm = server.ok("/processes?comm=python&limit=1000")
        assert all("python" in r["comm"] for r in by_comm["processes"])
        own_cgroup = Path(f"/proc/{os.getpid()}/cgroup").read_text().split("::")[-1].strip()
        in_cgroup = server.ok(f"/processes?cgroup={urllib.parse.quote(own_cgroup)}&limit=1000")
        assert os.getpid() in [r["pid"] for r in in_cgroup["processes"]]
    for query in ("verdict=fine", "limit=0", "limit=5000", "offset=-1", "comm=" + "x" * 65):
        status, body = server.get(f"/processes?{query}")
        assert status == 422 and body["status"] == 422, (query, body)


def test_an_audit_is_reused_until_a_probe_event_comes_for_its_process(server):
    code = """
held = []
signal.signal(signal.SIGUSR1, lambda *_: held.append(os.open('/dev/kvm', os.O_RDONLY)))
ready(); hold()
"""
    with subject(code) as s:
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while True:  # idle, it gets no event: its audit is kept (once its start-up's are in)
            document = server.ok(f"/processes/{s.pid}/checkpointable?tree=false")
            if document["audit_reused"]:
                break
            assert time.monotonic() < deadline, "the audit was never reused"
        assert document["verdict"] == "ok"
        os.kill(s.pid, signal.SIGUSR1)
        while (document := server.ok(f"/processes/{s.pid}/checkpointable?tree=false")
               )["verdict"] == "ok":
            assert time.monotonic() < deadline + ARRIVAL_TIMEOUT, "the device open was not seen"
        assert document["verdict"] == "blocked" and document["audit_reused"] is False


def _get(port: int, path: str, token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[Server]:
    """A service with a token, listening on every address."""
    database = tmp_path_factory.mktemp("guarded") / "history.sqlite3"
    running = Server("--host", "0.0.0.0", "--token", "s3cret", "--db", str(database))
    try:
        yield running
    finally:
        running.stop()


def test_state_changing_requests_need_a_token_even_on_loopback(server):
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/processes", method="POST",
                                     data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403
    assert json.loads(refused.value.read())["detail"].startswith("changing state needs a token")


def test_a_gate_under_a_profile_needing_a_probe_not_attached_is_not_ok(guarded):
    with subject("ready()\nhold()") as s:
        status, document = guarded.post(f"/processes/{s.pid}/gate", {"profile": "strict"},
                                        token="s3cret")
        assert status == 200, document
        judged = document["verdict"]
        assert (judged["profile"], judged["verdict"]) == ("strict", "unknown")
        assert "audit.probe_not_attached" in _codes(judged["reasons"])


def test_off_loopback_every_request_needs_the_token(guarded):
    assert _get(guarded.port, "/healthz")[0] == 401
    status, body = _get(guarded.port, "/processes", token="wrong")
    assert (status, body) == (403, {"status": 403, "detail": "wrong token"})
    status, body = _get(guarded.port, "/healthz", token="s3cret")
    assert status == 200 and body["status"] == "ok"


@pytest.fixture(scope="module")
def loopback_with_token(tmp_path_factory) -> Iterator[Server]:
    database = tmp_path_factory.mktemp("loopback") / "history.sqlite3"
    running = Server("--token", "s3cret", "--db", str(database))
    try:
        yield running
    finally:
        running.stop()


def test_paths_and_command_lines_are_shown_only_with_the_token(loopback_with_token, tmp_path):
    """Asked by an unprivileged uid (root sees everything, token or not): a root process's
    paths, in any spelling, and socket names are shown only with the token."""
    port = loopback_with_token.port
    secret_file = tmp_path / "private name's dir" / "x y.lock"  # under root's own tmp_path
    secret_file.parent.mkdir()
    code = f"""
import fcntl
held = open({str(secret_file)!r}, "w"); fcntl.flock(held, fcntl.LOCK_EX)
listener = socket.socket(socket.AF_UNIX); listener.bind("\\0private-abstract"); listener.listen()
ready(str(held.fileno())); hold()
"""
    with subject(code) as s:
        fd = int(s.note)
        seen = json.loads(get_as(NOBODY, port, f"/processes/{s.pid}",
                                 {"Authorization": "Bearer s3cret"})[1])
        fds = json.loads(get_as(NOBODY, port, f"/processes/{s.pid}/fds",
                                {"Authorization": "Bearer s3cret"})[1])
        status, hidden_raw = get_as(NOBODY, port, f"/processes/{s.pid}")  # served, redacted
        hidden_fds_raw = get_as(NOBODY, port, f"/processes/{s.pid}/fds")[1]
        by_root = _get(port, f"/processes/{s.pid}")[1]  # root needs no token to see it
    hidden = json.loads(hidden_raw)
    assert status == 200 and seen["cmdline"] and hidden["cmdline"] == [] and by_root["cmdline"]
    flock = next(r for r in seen["reasons"] if r["code"] == "lock.flock")
    assert str(secret_file) in flock["message"] and flock == next(
        r for r in by_root["reasons"] if r["code"] == "lock.flock")
    assert any("@private-abstract" in r["message"] for r in seen["reasons"])
    hidden_flock = next(r for r in hidden["reasons"] if r["code"] == "lock.flock")
    assert f"fd {fd}" in hidden_flock["message"]
    assert next(e for e in fds["fds"] if e["fd"] == fd)["target"] == str(secret_file)
    for raw in (hidden_raw, hidden_fds_raw):
        for secret in ("private", "x y", "name's", "name\\u0027s"):
            assert secret.encode() not in raw, (secret, raw)


# ---------------------------------------------------------------- no 5xx, whatever the input


ANY_VALUE = st.one_of(st.integers(min_value=-2**70, max_value=2**70), st.text(max_size=40),
                      st.sampled_from(["", "0", "-0", "1e9", "nan", "true", "null", "%00",
                                       "../..", "1.5", " 1", "0x1f", "--tcp-established"]))


def _get_operations(server: Server) -> list[tuple[str, list[str]]]:
    """(path template, query parameter names) of every GET the schema declares."""
    paths = server.ok("/openapi.json")["paths"]
    return [(template, [p["name"] for p in spec["get"].get("parameters", [])
                        if p["in"] == "query"])
            for template, spec in sorted(paths.items())
            if "get" in spec and template != "/events"]  # a stream: it never ends


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_input_makes_the_service_fail(server, data):
    operations = _operations_of(server)
    template, names = data.draw(st.sampled_from(operations))
    path = template
    for placeholder in ("{pid}",):
        if placeholder in path:
            value = data.draw(st.one_of(st.integers(min_value=-5, max_value=2**40).map(str),
                                        st.just(str(os.getpid())), ANY_VALUE.map(str)))
            path = path.replace(placeholder, urllib.parse.quote(value, safe="") or "%20")
    query = data.draw(st.lists(st.tuples(st.sampled_from(names + ["unknown"]) if names
                                         else st.just("unknown"), ANY_VALUE.map(str)),
                               max_size=4))
    target = f"{path}?{urllib.parse.urlencode(query)}" if query else path
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{target}",
                                    timeout=60) as reply:
            status, body = reply.status, reply.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    assert status < 500, (target, status, body[:300])
    # /check answers with what `crwatch check` prints, text unless asked for JSON
    if template not in ("/metrics", "/docs") and not (template == "/check" and status == 200):
        json.loads(body)  # errors are JSON too


_OPERATIONS: dict[int, list] = {}


def _operations_of(server: Server) -> list[tuple[str, list[str]]]:
    if server.port not in _OPERATIONS:
        _OPERATIONS[server.port] = _get_operations(server)
    return _OPERATIONS[server.port]
