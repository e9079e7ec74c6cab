"""Who a caller is (api.service.peer, api.service.auth) and what it may see
(api.service.privacy): real sockets and processes of another uid for the kernel's part,
fixture documents full of hostile names for the redaction."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.requests import Request

from api.service.auth import misdirected
from api.service.peer import tcp_peer_uid
from api.service.privacy import LineView, Viewer, owner, shown
from api.service.settings import Settings, SettingsError, host_name
from tests.support.callers import BECOME_NOBODY, NOBODY, PYTHON, as_user
from tests.support.subjects import subject
from tracker.procfs import Proc

CRWATCH = Path(sys.executable).with_name("crwatch")
HOSTILE = ["/root/secret dir/x y", "/tmp/a'b", "@secret", "/root/sécret-ünï",
           "/root/line\nbreak", "/run/sock et\x00"]
ROOT_PID, OTHER_PID, CHILD_PID = 100, 200, 101


def _reason(pid: int, fd: int | None, name: str) -> dict:
    return {"code": "lock.flock", "severity": "option", "message": f"fd {fd} ({name}): flock",
            "remedy": f"release {name}", "option": "--file-locks", "option_value": None,
            "pid": pid, "tid": None, "fd": fd, "source": "audit", "since": None,
            "environment_fact": None}


def _verdict(root: int, child: int) -> dict:
    return {"schema": "crwatch.process/1", "pid": root, "start_time": 1.0, "comm": "python",
            "processes": [{"pid": root, "start_time": 1.0, "comm": "python"},
                          {"pid": child, "start_time": 2.0, "comm": "sudo"}],
            "verdict": "needs_options",
            "reasons": [_reason(pid, 3 + n, name) for n, name in enumerate(HOSTILE)
                        for pid in (root, child)],
            "tracked": {"state": "nocr", "reasons": [_reason(root, 3, HOSTILE[0])]},
            "cmdline": ["cat", *HOSTILE], "cgroup": "/user.slice"}


def _owners(mapping: dict[tuple[int, float], int | None]):
    return lambda pid, start_time: mapping.get((pid, start_time))


def _leaked(document) -> list[str]:
    text = json.dumps(document, ensure_ascii=False)
    return [name for name in HOSTILE + ["secret", "x y", "a'b", "ünï", "sock et"]
            if name.strip("\x00") in text or json.dumps(name)[1:-1] in text]


def test_a_restricted_viewer_sees_the_detail_of_its_own_processes_only():
    owners = _owners({(ROOT_PID, 1.0): NOBODY, (CHILD_PID, 2.0): None})
    document = _verdict(ROOT_PID, CHILD_PID)
    seen = shown(document, Viewer(NOBODY), owners)
    own = [r for r in seen["reasons"] if r["pid"] == ROOT_PID]
    others = [r for r in seen["reasons"] if r["pid"] == CHILD_PID]
    assert own == [r for r in document["reasons"] if r["pid"] == ROOT_PID]
    assert seen["cmdline"] == document["cmdline"] and seen["tracked"] == document["tracked"]
    assert not _leaked(others)
    assert [(r["code"], r["fd"], r["severity"], r["option"]) for r in others] == [
        (r["code"], r["fd"], r["severity"], r["option"]) for r in document["reasons"]
        if r["pid"] == CHILD_PID]
    assert others[0]["message"].startswith("A flock() lock held by the tree, fd 3 (hidden")
    assert shown(document, Viewer(0, everything=True), owners) is document


def test_an_unidentified_viewer_sees_no_detail_of_anyone():
    owners = _owners({(ROOT_PID, 1.0): NOBODY, (CHILD_PID, 2.0): NOBODY})
    seen = shown(_verdict(ROOT_PID, CHILD_PID), Viewer(None), owners)
    assert seen["cmdline"] == [] and not _leaked(seen)
    assert seen["verdict"] == "needs_options" and seen["cgroup"] == "/user.slice"


def test_a_process_that_is_not_the_documents_identity_any_more_is_hidden():
    # the owner is asked with the document's start time: a pid reused since answers None
    owners = _owners({(ROOT_PID, 999.0): NOBODY})
    assert not _leaked(shown(_verdict(ROOT_PID, CHILD_PID), Viewer(NOBODY), owners))


def test_fd_targets_and_history_of_other_processes_are_hidden():
    owners = _owners({(ROOT_PID, 1.0): NOBODY})
    fds = {"schema": "crwatch.fds/1", "pid": ROOT_PID, "start_time": 1.0, "comm": "python",
           "fds": [{"fd": n, "target": name, "kind": "reg", "reasons": [_reason(ROOT_PID, n, name)]}
                   for n, name in enumerate(HOSTILE)]}
    assert shown(fds, Viewer(NOBODY), owners) == fds
    hidden = shown(fds, Viewer(1000), owners)
    assert not _leaked(hidden) and [e["kind"] for e in hidden["fds"]] == ["reg"] * len(HOSTILE)
    # A tree's verdict recorded in the history names its members by pid only: their
    # identity is unknown now, so only the root's own reasons are shown to its owner.
    history = {"schema": "crwatch.history/1", "pid": ROOT_PID, "start_time": 1.0, "comm": "x",
               "alive": True, "identities": [1.0],
               "entries": [{"kind": "verdict", "comm": "x", "ts": "t",
                            "reasons": [_reason(ROOT_PID, 3, "/tmp/mine"),
                                        _reason(CHILD_PID, 4, HOSTILE[0])]}]}
    reasons = shown(history, Viewer(NOBODY), owners)["entries"][0]["reasons"]
    assert "/tmp/mine" in reasons[0]["message"] and not _leaked(reasons)


def test_the_services_own_environment_paths_are_hidden_from_restricted_viewers():
    environment = {"schema": "crwatch.environment/1", "kernel": "6.18",
                   "criu": {"path": "/root/criu/bin/criu", "version": "4.2.1"},
                   "network_lock": {"path": "/root/secret dir/bin:/usr/bin",
                                    "tools": {"iptables": "/root/secret dir/bin/iptables",
                                              "ip6tables": None}}}
    document = {"schema": "crwatch.process/1", "pid": ROOT_PID, "start_time": 1.0,
                "environment": environment}
    seen = shown(document, Viewer(NOBODY), _owners({(ROOT_PID, 1.0): NOBODY}))["environment"]
    assert "secret" not in json.dumps(seen) and "/root" not in json.dumps(seen)
    assert seen["network_lock"]["tools"]["ip6tables"] is None and seen["kernel"] == "6.18"


def test_event_lines_are_judged_once_however_many_clients_read_them():
    asked = []

    def owner_of(pid, start_time):
        asked.append(pid)
        return NOBODY
    line = {"schema": "crwatch.event/1", "kind": "transition", "pid": ROOT_PID,
            "start_time": 1.0, "reasons": [_reason(ROOT_PID, 3, HOSTILE[0])]}
    view = LineView(line, owner_of)
    for _ in range(200):
        assert view.shown(Viewer(NOBODY)) is line
        assert not _leaked(view.shown(Viewer(1000)))
    assert asked == [ROOT_PID]
    ready = {"kind": "ready"}
    assert LineView(ready, owner_of).shown(Viewer(1000)) is ready


@pytest.mark.root
def test_viewers_that_see_everything():
    assert Viewer.of(0).everything and Viewer.of(os.geteuid()).everything
    assert Viewer.of(NOBODY, token=True).everything
    assert not Viewer.of(NOBODY).everything and not Viewer.of(None).everything
    assert not Viewer(None).sees(None) and not Viewer(NOBODY).sees(None)


# ---------------------------------------------------------------- the kernel's part

NOBODY_HOLDER = BECOME_NOBODY + """
if os.environ.get("DUMPABLE"):
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
ready(); hold()
"""


@pytest.mark.root
def test_the_owner_of_a_process_follows_the_kernels_rule():
    with (subject(NOBODY_HOLDER, env={"DUMPABLE": "1"}) as dumpable,
          subject(NOBODY_HOLDER) as not_dumpable):
        start = Proc(dumpable.pid).stat.start_time
        assert owner(dumpable.pid, start) == NOBODY
        assert owner(dumpable.pid, start + 1) is None  # another identity of the pid
        assert owner(not_dumpable.pid, Proc(not_dumpable.pid).stat.start_time) is None
    assert owner(dumpable.pid, start) is None  # gone
    # root's own process holds capabilities: only root may read it
    assert owner(os.getpid(), Proc(os.getpid()).stat.start_time) is None


CONNECT = """
import socket, sys
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print(connection.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
@pytest.mark.root
def test_the_peer_of_a_loopback_connection_is_known_by_the_uid_of_its_socket(address):
    family = socket.AF_INET if address == "127.0.0.1" else socket.AF_INET6
    with socket.socket(family) as listener:
        listener.bind((address, 0))
        listener.listen()
        server = listener.getsockname()[:2]
        with socket.create_connection(server):
            accepted, client = listener.accept()
            assert tcp_peer_uid(client[:2], server) == 0
            accepted.close()
        theirs = subprocess.Popen([PYTHON, "-I", "-c", CONNECT, address, str(server[1])],
                                  preexec_fn=as_user(NOBODY), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE)
        theirs.stdout.readline()
        accepted, client = listener.accept()
        assert tcp_peer_uid(client[:2], server) == NOBODY
        theirs.communicate(b"")
        # its socket is gone: what the kernel keeps of the connection identifies nobody
        assert tcp_peer_uid(client[:2], server) is None
        accepted.close()
        assert tcp_peer_uid(client[:2], server) is None
    assert tcp_peer_uid(("10.1.2.3", 40000), server) is None  # not on this host
    assert tcp_peer_uid(None, server) is None


# ---------------------------------------------------------------- the Host header

def _request(host: str | None, server=("127.0.0.1", 8642)) -> Request:
    headers = [(b"host", host.encode())] if host is not None else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers,
                    "server": server, "client": ("127.0.0.1", 40000)})


def test_hosts_given_with_allow_host_and_the_address_reached_are_accepted():
    settings = Settings(allowed_hosts=("crwatch.internal",))
    assert misdirected(settings, _request("crwatch.internal:8642")) is None
    assert misdirected(settings, _request("CRWATCH.internal")) is None
    assert misdirected(settings, _request("crwatch.internal:8643")) is not None
    assert misdirected(settings, _request("crwatch.internal.evil")) is not None
    everywhere = Settings(host="0.0.0.0", token="t")
    assert misdirected(everywhere, _request("10.1.2.3:8642", ("10.1.2.3", 8642))) is None
    assert misdirected(everywhere, _request("10.1.2.4:8642", ("10.1.2.3", 8642))) is not None
    assert misdirected(everywhere, _request("evil.example", ("10.1.2.3", 8642))) is not None
    assert misdirected(everywhere, _request(None)) is None


@pytest.mark.parametrize("name,expected", [("Crwatch.Internal", "crwatch.internal"),
                                           ("[::1]", "::1"), ("10.0.0.1", "10.0.0.1")])
def test_allow_host_names_are_compared_as_host_headers_are(name, expected):
    assert host_name(name) == expected


@pytest.mark.parametrize("name", ["", "a/b", "host:8642", "user@host", "[host]", "a b"])
def test_an_allow_host_that_is_no_host_name_is_refused_in_one_line(name):
    with pytest.raises(SettingsError):
        host_name(name)
    done = subprocess.run([str(CRWATCH), "serve", "--allow-host", name, "--no-probes"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("crwatch: --allow-host")
    assert "Traceback" not in done.stderr
