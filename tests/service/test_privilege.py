"""Least privilege over real HTTP: a real `crwatch serve`, real subjects of root and of
an unprivileged uid, and callers of that uid asking every endpoint; each raw body is
searched for the names only root may read."""
from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from api.service.privacy import HIDDEN
from tests.support.callers import BECOME_NOBODY, NOBODY, StreamAs, get_as, kernel_shows
from tests.support.servers import Server
from tests.support.subjects import subject

pytestmark = [pytest.mark.bpf]

HISTORY_TIMEOUT = 10.0
MARK = f"crw{secrets.token_hex(4)}"
# A directory only root may list, with names that no regex over "a path" gets whole.
SECRET_DIR = Path(f"/root/{MARK} secret dir")
SECRET_FILE = "x y"
QUOTED_FILE = "a'b \"q\""
ACCENTED_FILE = "sécret-ünï"
ABSTRACT = f"{MARK}-abstract"
SOCKET_FILE = "sock et"
# What must never reach the unprivileged caller, however a body spells it.
SECRETS = (ABSTRACT, MARK, "secret dir", SECRET_FILE, "a'b", "ünï", "\\u00fcn\\u00ef", "sock et")

ROOT_SUBJECT = f"""
base = {str(SECRET_DIR)!r}
held = open(base + "/" + {SECRET_FILE!r}, "w"); fcntl.flock(held, fcntl.LOCK_EX)
quoted = open(base + "/" + {QUOTED_FILE!r}, "w"); fcntl.flock(quoted, fcntl.LOCK_SH)
accented = open(base + "/" + {ACCENTED_FILE!r}, "w")
abstract = socket.socket(socket.AF_UNIX); abstract.bind("\\0" + {ABSTRACT!r}); abstract.listen()
named = socket.socket(socket.AF_UNIX); named.bind(base + "/" + {SOCKET_FILE!r}); named.listen()
peer, client = socket.socketpair()
os.chdir(base)
ready(str(held.fileno())); hold()
"""


def _own_subject(path: Path, dumpable: bool) -> str:
    """A process of uid NOBODY (made by dropping root's uids: the kernel then marks it not
    dumpable unless it says otherwise) holding a lock on a file of its own."""
    return BECOME_NOBODY + f"""
if {dumpable}:
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
held = open({str(path)!r}, "w"); fcntl.flock(held, fcntl.LOCK_EX)
ready(str(held.fileno())); hold()
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    running = Server("--db", str(tmp_path_factory.mktemp("privilege") / "history.sqlite3"))
    try:
        yield running
    finally:
        stderr = running.stop()
        # (other tests' hostile processes may trouble other parts meanwhile: not these)
        for module in ("api/service/auth.py", "api/service/peer.py", "api/service/privacy.py",
                       "api/service/event_hub.py"):
            assert module not in stderr, stderr


@pytest.fixture
def secret_dir() -> Iterator[Path]:
    SECRET_DIR.mkdir(mode=0o700)
    try:
        yield SECRET_DIR
    finally:
        shutil.rmtree(SECRET_DIR)


@pytest.fixture
def own_dir() -> Iterator[Path]:
    """A directory of NOBODY's (pytest's own are root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="crwatch-own-"))
    directory.chmod(0o755)
    os.chown(directory, NOBODY, NOBODY)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def _endpoints(pid: int) -> list[str]:
    return [f"/processes/{pid}", f"/processes/{pid}?tree=false",
            f"/processes/{pid}/checkpointable", f"/processes/{pid}/checkpointable?tree=false",
            f"/processes/{pid}/checkpointable?profile=strict", f"/processes/{pid}/fds",
            f"/processes/{pid}/history", "/processes?comm=python&limit=1000"]


def _leaks(body: bytes) -> list[str]:
    text = body.decode("utf-8", "replace")
    decoded = json.dumps(json.loads(body), ensure_ascii=False) if body.startswith(b"{") else ""
    return [secret for secret in SECRETS if secret in text or secret in decoded]


def _get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"}
                           if token else {})
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


def test_an_unprivileged_caller_never_sees_what_only_root_may_read(server, secret_dir):
    with subject(ROOT_SUBJECT) as s:
        fd = int(s.note)
        # root asks first: the verdicts it is answered are recorded in the history too
        for path in _endpoints(s.pid):
            status, body = _get(server.port, path)
            assert status == 200, (path, body)
        root_view = _get(server.port, f"/processes/{s.pid}/fds")[1]
        assert any(entry["target"] == f"{SECRET_DIR}/{SECRET_FILE}"
                   for entry in json.loads(root_view)["fds"])
        assert _leaks(_get(server.port, f"/processes/{s.pid}")[1]), "root sees every name"
        deadline = time.monotonic() + HISTORY_TIMEOUT  # the writer batches every 50 ms
        while not _leaks(_get(server.port, f"/processes/{s.pid}/history")[1]):
            assert time.monotonic() < deadline, "root's verdicts were not recorded"
            time.sleep(0.05)

        for path in _endpoints(s.pid):
            status, body = get_as(NOBODY, server.port, path)
            assert status == 200, (path, body)
            assert not _leaks(body), (path, _leaks(body), body[:2000])
        shown = json.loads(get_as(NOBODY, server.port, f"/processes/{s.pid}")[1])
        assert shown["cmdline"] == [] and shown["verdict"] == json.loads(
            _get(server.port, f"/processes/{s.pid}")[1])["verdict"]
        lock = next(r for r in shown["reasons"] if r["code"] == "lock.flock" and r["fd"] == fd)
        assert lock["message"].startswith("A flock") or f"fd {fd}" in lock["message"]
        fds = json.loads(get_as(NOBODY, server.port, f"/processes/{s.pid}/fds")[1])["fds"]
        assert {entry["fd"] for entry in fds} >= {fd} and all(
            entry["target"].startswith("(hidden") for entry in fds)



def test_a_forwarded_for_header_does_not_lend_a_caller_roots_connection(server, secret_dir):
    """The caller names the port of root's open connection to the service (any local user
    reads it in /proc/net/tcp): it is still judged by its own socket."""
    with subject(ROOT_SUBJECT) as s:
        roots = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            roots.request("GET", "/healthz")
            roots.getresponse().read()  # kept alive: root's socket stays open
            root_port = roots.sock.getsockname()[1]
            for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
                value = (f"for=127.0.0.1:{root_port}" if header == "Forwarded"
                         else f"127.0.0.1:{root_port}")
                status, body = get_as(NOBODY, server.port, f"/processes/{s.pid}/fds",
                                      {header: value})
                assert status == 200 and not _leaks(body), (header, body[:500])
        finally:
            roots.close()


def _await(lines: Iterator[dict], pid: int, state: str, code: str | None = None) -> dict:
    """The first transition of pid to `state` (with a reason of `code`, when given)."""
    for line in lines:
        if (line.get("kind") == "transition" and line["pid"] == pid and line["state"] == state
                and (code is None or code in [reason["code"] for reason in line["reasons"]])):
            return line
    raise AssertionError(f"the stream ended before a {state} transition of {pid}")


def test_event_lines_show_an_unprivileged_caller_its_own_processes_only(server, secret_dir,
                                                                        own_dir):
    nobody, root = StreamAs(NOBODY, server.port), StreamAs(0, server.port)
    try:
        nobody_lines, root_lines = nobody.lines(), root.lines()
        assert next(nobody_lines)["kind"] == next(root_lines)["kind"] == "ready"
        with subject(ROOT_SUBJECT) as s, subject(_own_subject(own_dir / "mine p q", True)) as mine:
            seen_by_root = _await(root_lines, s.pid, "nocr")
            seen_by_nobody = _await(nobody_lines, s.pid, "nocr")
            # its lock, taken once it is uid NOBODY (a transition before, of what it
            # inherited while it was root's, is root's to see)
            own = _await(nobody_lines, mine.pid, "nocr", "lock.flock")
    finally:
        nobody.close()
        root.close()
    # Which words a reason carries depends on when the tracker could read the fd; whether
    # they are the caller's to see does not: root and the owner get them, nobody else.
    assert seen_by_root["reasons"] and not any(HIDDEN in r["message"]
                                               for r in seen_by_root["reasons"]), seen_by_root
    assert [r["code"] for r in seen_by_nobody["reasons"]] == [
        r["code"] for r in seen_by_root["reasons"]]
    assert all(HIDDEN in r["message"] for r in seen_by_nobody["reasons"]), seen_by_nobody
    leaked = [line for line in nobody.raw if _leaks(line)]
    assert not leaked, leaked
    assert own["reasons"] and not any(HIDDEN in r["message"] for r in own["reasons"]), own


def test_a_caller_sees_its_own_process_in_full_exactly_when_the_kernel_lets_it(server, own_dir):
    with (subject(_own_subject(own_dir / "mine p q", dumpable=True)) as mine,
          subject(_own_subject(own_dir / "locked p q", dumpable=False)) as locked):
        for running, name in ((mine, "mine p q"), (locked, "locked p q")):
            fd = int(running.note)
            document = json.loads(get_as(NOBODY, server.port, f"/processes/{running.pid}/fds")[1])
            target = next(entry["target"] for entry in document["fds"] if entry["fd"] == fd)
            detail = json.loads(get_as(NOBODY, server.port, f"/processes/{running.pid}")[1])
            if kernel_shows(NOBODY, running.pid, fd):
                assert running is mine
                assert target == f"{own_dir}/{name}" and detail["cmdline"]
                assert any(name in reason["message"] for reason in detail["reasons"])
            else:
                assert running is locked
                assert target.startswith("(hidden") and detail["cmdline"] == []
                assert not any(name in reason["message"] for reason in detail["reasons"])
            # root sees both in full
            assert f"{own_dir}/{name}" in _get(server.port, f"/processes/{running.pid}/fds")[
                1].decode()


def _with_host(port: int, host: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("GET", "/healthz", skip_host=True)
        connection.putheader("Host", host)
        connection.endheaders()
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "127.0.0.1", "localhost", "LocalHost:{port}",
                                  "[::1]:{port}", "[::1]"])
def test_the_bound_address_and_loopback_names_are_accepted_as_host(server, host):
    status, body = _with_host(server.port, host.format(port=server.port))
    assert status == 200, body


def test_a_request_without_host_comes_from_no_browser_and_is_served(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        answer = b"".join(iter(lambda: connection.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 200 "), answer


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1",
                                  "localhost.evil.example", "127.0.0.1.nip.io:{port}",
                                  "localhost:{port}x", "[::1", ""])
def test_any_other_host_is_refused_against_dns_rebinding(server, host):
    status, body = _with_host(server.port, host.format(port=server.port))
    assert status == 421 and "DNS rebinding" in body["detail"], body
    assert _get(server.port, "/healthz")[0] == 200  # the service goes on serving
