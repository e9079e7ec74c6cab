"""The compiled `crwatch` front end: with a service on its socket, `crwatch check` is the
service's answer, byte for byte what the audit here prints (but for the audit's time
and the mark of where it came from), with the same exit status; anything the service
cannot answer as the command would is run by the Python command line."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.support import launchers
from tests.support.callers import NOBODY
from tests.support.servers import CRWATCH, Server
from tests.support.subjects import DEVICE, PLAIN, TCP_PAIR, subject
from tests.support.tasks import THREADED

pytestmark = [pytest.mark.root, pytest.mark.bpf]

REPO = Path(__file__).resolve().parents[2]
# A listener that connects to itself on SIGUSR1: checkpointable, then needing options.
CONNECTS_ON_SIGNAL = """
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
held = []
def connect(*_):
    held.append(socket.create_connection(server.getsockname())); held.append(server.accept()[0])
signal.signal(signal.SIGUSR1, connect)
ready(); hold()
"""
HOSTILE_NAME = b"<s>\x1b[31m\xff\n\xfe"    # a comm: escapes, bytes that are not UTF-8
HOSTILE_DIRECTORY = b"/dir-\xff\n\x1b[2Jx"
# The same, with a unix socket connected to a listener outside its tree.
UNIX_CONNECTS_ON_SIGNAL = """
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
held = []
def connect(*_):
    held.append(socket.socket(socket.AF_UNIX)); held[0].connect({path!r})
signal.signal(signal.SIGUSR1, connect)
ready(); hold()
"""


@pytest.fixture(scope="module")
def place():
    """A directory every user may enter, for the socket and the front end."""
    directory = Path(tempfile.mkdtemp(prefix="crwatch-launcher-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def program(place):
    return launchers.build(place)


@pytest.fixture(scope="module")
def service(place):
    """A real service with probes, listening on a socket of its own."""
    sock = place / "service.sock"
    running = Server("--db", str(place / "history.sqlite3"), "--socket", str(sock))
    running.socket = sock
    yield running
    running.stop()


def check(program: Path, service, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return launchers.run(program, "check", *args, socket=service.socket, **kwargs)


def assert_same_as_local(program: Path, service, *args: str) -> subprocess.CompletedProcess:
    """The service's answer to `crwatch check ARGS`, as JSON and as text, against the
    audit here (--local) of the same process, asked right after."""
    served = check(program, service, "--json", *args)
    local = check(program, service, "--json", "--local", *args)
    assert launchers.answered_by_service(served, as_json=True), served.stderr
    assert not launchers.answered_by_service(local, as_json=True)
    assert (served.returncode, served.stderr) == (local.returncode, local.stderr)
    assert (launchers.comparable(json.loads(served.stdout))
            == launchers.comparable(json.loads(local.stdout)))
    served_text = check(program, service, *args)
    local_text = check(program, service, "--local", *args)
    assert launchers.answered_by_service(served_text, as_json=False)
    assert (served_text.returncode, served_text.stderr) == (local_text.returncode,
                                                            local_text.stderr)
    assert (served_text.stdout.replace(launchers.SERVICE_MARK, "]") == local_text.stdout)
    return served


@pytest.mark.parametrize("code, verdict, status", [
    (PLAIN, "ok", 0), (TCP_PAIR, "needs_options", 1), (DEVICE, "blocked", 1)],
    ids=["ok", "needs_options", "blocked"])
def test_the_service_prints_what_the_audit_here_prints(program, service, code, verdict, status):
    with subject(code) as running:
        served = assert_same_as_local(program, service, str(running.pid))
    assert served.returncode == status
    assert json.loads(served.stdout)["verdict"] == verdict


def test_names_that_are_not_text_are_printed_as_here(program, service, place):
    """A name with terminal escapes and bytes that are not UTF-8, and a locked file under
    a directory named so: shown the same escaped way, byte for byte."""
    directory = bytes(place) + HOSTILE_DIRECTORY
    hostile = f"""
ctypes.CDLL(None).prctl(15, ctypes.c_char_p({HOSTILE_NAME!r}), 0, 0, 0)
os.mkdir({directory!r})
lock = os.open({directory!r} + b"/locked", os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(lock, fcntl.LOCK_EX)
ready(); hold()
"""
    try:
        with subject(hostile) as running:
            served = assert_same_as_local(program, service, str(running.pid))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert "\\xff" in served.stdout and "\x1b" not in served.stdout


def test_options_the_service_is_told_change_its_answer_as_they_change_the_audit(program,
                                                                              service):
    with subject(TCP_PAIR) as tcp, subject(PLAIN) as plain:
        allowed = assert_same_as_local(program, service, "--allow=--tcp-established",
                                       "--allow=--network-lock=nftables", "--allow",
                                       "network-lock=iptables", str(tcp.pid))
        assert_same_as_local(program, service, "--only", "--profile", "criu", str(tcp.pid),
                             str(plain.pid))
        assert_same_as_local(program, service, "--holders", str(tcp.pid))
    assert allowed.returncode == 0


def test_a_pid_that_does_not_exist_and_a_thread_id_are_refused_as_here(program, service):
    missing = 4_194_000
    while psutil.pid_exists(missing):
        missing -= 1
    with subject(THREADED) as threaded:
        thread = next(int(t) for t in os.listdir(f"/proc/{threaded.pid}/task")
                      if int(t) != threaded.pid)
        for args in ([str(missing)], [str(thread)], ["--json", str(missing), str(thread)]):
            served, local = (check(program, service, *args),
                             check(program, service, "--local", *args))
            assert (served.returncode, served.stdout, served.stderr) == (
                local.returncode, local.stdout, local.stderr)
            assert served.returncode == 2 and served.stdout == ""
    assert f"no process with pid {missing}" in served.stderr
    assert f"{thread} is a thread of process {threaded.pid}" in served.stderr


def test_another_user_sees_only_what_privacy_lets_it_see(program, service):
    with subject(TCP_PAIR) as tcp:
        served = check(program, service, "--json", str(tcp.pid), user=NOBODY)
        address = tcp_address(tcp.pid)
    document = json.loads(served.stdout)
    assert served.returncode == 1 and document["answered_by"] == "service"
    assert document["verdict"] == "needs_options"  # what it is, never what it is called
    established = [r for r in document["reasons"] if r["code"] == "socket.tcp.established"]
    assert established and all("hidden" in r["message"] for r in established)
    assert address not in served.stdout
    assert document["environment"]["criu"]["path"].startswith("(hidden")


@pytest.mark.parametrize("connects", ["tcp", "unix"])
def test_a_process_that_changes_gets_its_new_verdict(program, service, place, connects):
    """A TCP connection (the probes see it) or a unix socket connected to a listener
    outside the tree (no probe sees it): the next check finds it, as an audit here would."""
    outside = socket.socket(socket.AF_UNIX)
    outside.bind(str(place / f"outside-{connects}.sock"))
    outside.listen()
    code = CONNECTS_ON_SIGNAL if connects == "tcp" else UNIX_CONNECTS_ON_SIGNAL.format(
        path=str(place / f"outside-{connects}.sock"))
    with outside, subject(code) as changing:
        before = [json.loads(check(program, service, "--json", str(changing.pid)).stdout)
                  for _ in range(3)]
        os.kill(changing.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while len(psutil.Process(changing.pid).net_connections("all")) < (
                3 if connects == "tcp" else 2):
            assert time.monotonic() < deadline, "the subject did not connect"
            time.sleep(0.01)
        if connects == "unix":
            accepted = outside.accept()[0]  # the other end is held outside the tree
        changed = check(program, service, "--json", str(changing.pid))
        local = check(program, service, "--json", "--local", str(changing.pid))
    assert [document["verdict"] for document in before] == ["ok"] * 3
    document = json.loads(changed.stdout)
    assert changed.returncode == 1 and document["answered_by"] == "service"
    assert document["verdict"] == "needs_options"
    assert launchers.comparable(document) == launchers.comparable(json.loads(local.stdout))
    if connects == "unix":
        accepted.close()


@pytest.mark.parametrize("args, env", [
    (["--js"], {}),                          # an abbreviation only argparse knows
    (["--local"], {}),
    ([], {"CRWATCH_LOCAL": "1"}),
    ([], {"CRWATCH_REFRESH_CRIU": "1"}),     # CRIU asked afresh: here
    (["--profile=strict"], {}),              # a profile whose probes the service lacks
    (["--criu-version", "4.1"], {}),         # another CRIU than the service judges for
    ([], {"PATH": f"{REPO}/.deps/iptables-bin:{os.environ['PATH']}"}),  # another dumper
], ids=["abbreviation", "local", "local-variable", "refresh", "strict", "criu-4.1",
        "other-path"])
def test_what_the_service_cannot_answer_as_asked_is_audited_here(program, service, args, env):
    as_json = args if "--js" in args else ["--json", *args]
    with subject(TCP_PAIR) as tcp:
        result = check(program, service, *as_json, str(tcp.pid), env=env)
    document = json.loads(result.stdout)
    assert "answered_by" not in document and result.returncode == 1
    assert (document["pid"], document["checkpointable"]) == (tcp.pid, False)


def test_a_caller_in_another_pid_namespace_is_not_answered_for_its_pids(program, service):
    """Its pid 1 is itself (as the check here finds), not the host's init."""
    inside = launchers.run(Path("unshare"), "--pid", "--fork", "--mount-proc", str(program),
                           "check", "--json", "--only", "1", socket=service.socket)
    document = json.loads(inside.stdout)
    assert "answered_by" not in document and document["pid"] == 1
    assert "task.crwatch_itself" in {r["code"] for r in document["reasons"]}


def test_usage_errors_are_the_command_line_s_own(program, service):
    for args in (["check", "12", "--json", "13"], ["check"], ["check", "--profile", "x", "1"],
                 ["check", "0"], ["nonsense"]):
        served = launchers.run(program, *args, socket=service.socket)
        direct = subprocess.run([str(CRWATCH), *args], capture_output=True, text=True,
                                timeout=60)
        assert (served.returncode, served.stdout, served.stderr) == (
            direct.returncode, direct.stdout, direct.stderr)
        assert served.returncode == 2
    helped = launchers.run(program, "check", "--help", socket=service.socket)
    assert helped.returncode == 0 and "--local" in helped.stdout


def test_no_service_a_stopped_one_or_a_stale_socket_means_an_audit_here(program, place):
    sock = place / "stopped.sock"
    stopped = Server("--no-probes", "--db", str(place / "stopped.sqlite3"), "--socket", str(sock))
    stopped.socket = sock
    with subject(PLAIN) as plain:
        assert launchers.answered_by_service(check(program, stopped, "--json", str(plain.pid)),
                                             as_json=True)
        stopped.stop()
        assert not sock.exists()  # removed at exit
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(sock))     # a file no service listens on
        stale.close()
        results = [check(program, stopped, "--json", str(plain.pid)),
                   launchers.run(program, "check", "--json", str(plain.pid), socket=None)]
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "answered_by" not in json.loads(result.stdout)


def test_a_socket_a_live_service_answers_on_is_not_taken(service, place):
    taken = subprocess.run([str(CRWATCH), "serve", "--no-probes", "--port", "0", "--db",
                            str(place / "second.sqlite3"), "--socket", str(service.socket)],
                           capture_output=True, text=True, timeout=60)
    assert taken.returncode == 2
    assert taken.stderr.strip().splitlines() == [
        f"crwatch: cannot listen on {service.socket}: another crwatch service answers there"]
    assert service.socket.is_socket()


def tcp_address(pid: int) -> str:
    """The local address of one of the process's TCP connections, as a reason names it."""
    connection = next(c for c in psutil.Process(pid).net_connections("tcp") if c.raddr)
    return f"{connection.laddr.ip}:{connection.laddr.port}"


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 409 Conflict\r\nContent-Length: 2\r\nX-Crwatch-Exit: 0\r\n"
    b"X-Crwatch-Stream: stdout\r\n\r\nno",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Crwatch-Stream: stdout\r\n\r\nno",
    b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\nX-Crwatch-Exit: 0\r\n"
    b"X-Crwatch-Stream: stdout\r\n\r\ncut short",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Crwatch-Exit: 0\r\n"
    b"X-Crwatch-Stream: stdout\r\n\r\n2\r\nno\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Crwatch-Exit: 0\r\nX-Crwatch-Stream: tty\r\n\r\nno",
    b"garbage",
    b"",
], ids=["409", "no-status", "short-body", "chunked", "unknown-stream", "garbage", "nothing"])
def test_an_answer_that_is_not_a_whole_200_means_an_audit_here(program, place, answer):
    sock = place / "impostor.sock"
    sock.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX) as impostor, subject(PLAIN) as plain:
        impostor.bind(str(sock))
        impostor.listen()
        answering = threading.Thread(target=answer_once, args=(impostor, answer), daemon=True)
        answering.start()
        result = launchers.run(program, "check", "--json", str(plain.pid), socket=sock)
        answering.join(timeout=30)
    assert not answering.is_alive()  # it was asked
    assert result.returncode == 0, result.stderr
    assert "answered_by" not in json.loads(result.stdout)


def answer_once(listener: socket.socket, answer: bytes) -> None:
    connection, _ = listener.accept()
    with connection:
        request = b""
        while b"\r\n\r\n" not in request:
            request += connection.recv(4096)
        connection.sendall(answer)
