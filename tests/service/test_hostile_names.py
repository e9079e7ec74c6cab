"""Hostile names end to end: a process of an unprivileged user whose name is not UTF-8
and holds terminal escapes and a newline, with a locked file under a path of the
same kind, seen through every exit: `crwatch check` (text and --json), `crwatch
watch`, the service's endpoints and events, the history store, and `crwatch run`'s
JSON and JUnit reports. (The dashboard's view of such a name: tests/service/test_dashboard.py.)

Before tracker/safe_text.py, such a process killed the history writer and turned
/processes, /processes/{pid}, /fds and /history into plain-text 500s.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote

import pytest

from tests.support.servers import ARRIVAL_TIMEOUT, EventStream, Server
from tests.support.subjects import Subject, start
from tests.support.trackers import Watch

pytestmark = [pytest.mark.bpf]

CRWATCH = Path(sys.executable).with_name("crwatch")
NAME = b"<s>\x1b[31m\xff\n\xfe"              # prctl(PR_SET_NAME): 12 of its 15 bytes
DIRECTORY = b"dir-\xff\n\x1b[2Jx"             # a directory name: invalid UTF-8, newline, ESC
NAME_JSON = "<s>\x1b[31m\\xff\n\\xfe"         # what JSON carries: the bytes as the text \xNN
NAME_SHOWN = "<s>\\x1b[31m\\xff\\n\\xfe"      # what a terminal and JUnit show
DIRECTORY_JSON = "dir-\\xff\n\x1b[2Jx"
DIRECTORY_SHOWN = "dir-\\xff\\n\\x1b[2Jx"
NOBODY = 65534
LISTING_TIMEOUT = 60.0
FLUSH_POLL = 0.05  # the history writer commits every 50 ms

# Drops to uid 65534, names itself, locks a file under a hostile path (lock.flock: `nocr`
# for the probes) and unlocks it on SIGUSR1.
HOSTILE = """
os.setgroups([]); os.setresgid({uid}, {uid}, {uid}); os.setresuid({uid}, {uid}, {uid})
ctypes.CDLL(None).prctl(15, ctypes.c_char_p({name!r}), 0, 0, 0)
os.mkdir({directory!r})
lock = os.open({directory!r} + b"/locked", os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(lock, fcntl.LOCK_EX)
signal.signal(signal.SIGUSR1, lambda *_: fcntl.flock(lock, fcntl.LOCK_UN))
ready(str(lock))
hold()
"""


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A directory uid 65534 may create its hostile directory in."""
    made = Path(tempfile.mkdtemp(prefix="crwatch-hostile-"))
    made.chmod(0o777)
    try:
        yield made
    finally:
        shutil.rmtree(os.fsencode(made), ignore_errors=True)


def hostile(base: Path, label: str) -> Subject:
    directory = os.fsencode(base / label) + b"-" + DIRECTORY
    return start(HOSTILE.format(uid=NOBODY, name=NAME, directory=directory))


def path_of(base: Path, label: str) -> tuple[str, str]:
    """The locked file's path, as JSON carries it and as a terminal shows it."""
    prefix = f"{base / label}-"
    return prefix + DIRECTORY_JSON + "/locked", prefix + DIRECTORY_SHOWN + "/locked"


def crwatch(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(CRWATCH), *args], capture_output=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    running = Server("--db", str(tmp_path_factory.mktemp("hostile") / "history.sqlite3"))
    try:
        yield running
    finally:
        running.stop()


# ---------------------------------------------------------------- crwatch check

def test_check_shows_the_name_and_path_visibly_and_nothing_moves_the_terminal(base):
    subject = hostile(base, "check")
    try:
        result = crwatch("check", str(subject.pid))
    finally:
        subject.stop()
    assert result.returncode == 1, result.stderr
    output = result.stdout.decode("utf-8")  # strict: nothing that is not UTF-8
    assert "\x1b" not in output and "\r" not in output
    _, path_shown = path_of(base, "check")
    lines = output.splitlines()
    assert lines[0].startswith(f"pid {subject.pid} ({NAME_SHOWN}), tree of 1 process: ")
    assert f"  pid {subject.pid} ({NAME_SHOWN})" in lines
    # the lock's message names the file, its newline shown, not obeyed
    assert any(f"({path_shown}): flock WRITE lock" in line for line in lines), output


def test_check_json_is_ascii_and_carries_the_bytes_as_text(base):
    subject = hostile(base, "json")
    try:
        result = crwatch("check", "--json", str(subject.pid))
    finally:
        subject.stop()
    result.stdout.decode("ascii")
    document = json.loads(result.stdout)
    assert document["comm"] == NAME_JSON and document["processes"][0]["comm"] == NAME_JSON
    path_json, _ = path_of(base, "json")
    (lock,) = [r for r in document["reasons"] if r["code"] == "lock.flock"]
    assert path_json in lock["message"]


def test_gate_freezes_and_judges_it_and_shows_the_name_visibly(base):
    subject = hostile(base, "gate")
    try:
        text = crwatch("gate", "--local", str(subject.pid))
        document = crwatch("gate", "--local", "--json", str(subject.pid))
    finally:
        subject.stop()
    output = text.stdout.decode("utf-8")
    assert text.returncode == 1 and "\x1b" not in output, text.stderr  # refused, not crashed
    assert f"pid {subject.pid} ({NAME_SHOWN}), tree of 1 process" in output
    assert json.loads(document.stdout)["verdict"]["comm"] == NAME_JSON


# ---------------------------------------------------------------- crwatch watch

def test_watch_prints_the_name_and_path_as_json_text(base):
    watch = Watch()
    try:
        assert watch.line()["kind"] == "ready"
        subject = hostile(base, "watch")
        try:
            line = _await_line(watch, subject.pid)
        finally:
            subject.stop()
    finally:
        if watch.process.poll() is None:
            watch.process.kill()
        watch.process.wait()
    assert line["comm"] == NAME_JSON
    path_json, _ = path_of(base, "watch")
    assert any(path_json in reason["message"] for reason in line["reasons"])


def _await_line(watch: Watch, pid: int) -> dict:
    """The watch's transition of pid into nocr for its lock (generous: a busy runner is slow)."""
    deadline = time.monotonic() + LISTING_TIMEOUT
    while True:
        line = watch.line(max(deadline - time.monotonic(), 0.01))
        if (line["kind"] == "transition" and line["pid"] == pid and line["state"] == "nocr"
                and "lock.flock" in [reason["code"] for reason in line["reasons"]]):
            return line


# ---------------------------------------------------------------- the service

def test_every_endpoint_answers_with_the_name_escaped(server, base):
    subject = hostile(base, "service")
    try:
        pid = subject.pid
        listed = _await_row(server, pid)
        assert listed["comm"] == NAME_JSON
        status, detail = server.get(f"/processes/{pid}")
        assert status == 200 and detail["comm"] == NAME_JSON
        status, verdict = server.get(f"/processes/{pid}/checkpointable")
        assert status == 200 and "lock.flock" in [r["code"] for r in verdict["reasons"]]
        status, fds = server.get(f"/processes/{pid}/fds")
        path_json, _ = path_of(base, "service")
        assert status == 200
        assert {fd["fd"]: fd["target"] for fd in fds["fds"]}[int(subject.note)] == path_json
        status, history = server.get(f"/processes/{pid}/history")
        assert status == 200 and history["comm"] == NAME_JSON
        status, tree = server.get(f"/processes/{os.getpid()}?tree=true")  # the subject in a tree
        assert status == 200 and NAME_JSON in [p["comm"] for p in tree["processes"]]
    finally:
        subject.stop()


def test_the_history_keeps_the_hostile_transitions_and_those_after_them(server, base):
    events = EventStream(server)
    subject = hostile(base, "history")
    try:
        entered = events.await_transition(subject.pid, "nocr", "lock.flock")
        assert entered["comm"] == NAME_JSON
        subject.process.send_signal(signal.SIGUSR1)  # unlocks: a later transition
        left = events.await_transition(subject.pid, "cr")
        assert left["comm"] == NAME_JSON
        seen = {entered["ts"], left["ts"]}
        stored = _await_history(server, subject.pid,
                                lambda stored: seen <= {entry["ts"] for entry in stored})
    finally:
        events.close()
        subject.stop()
    kept = [entry for entry in stored if entry["ts"] in seen]
    assert [(entry["state"], entry["comm"]) for entry in kept] == [("nocr", NAME_JSON),
                                                                   ("cr", NAME_JSON)]
    path_json, _ = path_of(base, "history")
    assert any(path_json in reason["message"] for reason in kept[0]["reasons"])
    # the writer lives on: a plain process after the hostile one is stored too
    plain = start("fd = os.open('/dev/kvm', os.O_RDONLY)\nready()\nhold()")
    try:
        _await_history(server, plain.pid,
                       lambda stored: "nocr" in [entry["state"] for entry in stored])
    finally:
        plain.stop()
    assert server.get("/healthz")[1]["status"] == "ok"


def _await_row(server: Server, pid: int) -> dict:
    """The listing's row of pid: the list refreshes every second (slower on a busy runner)."""
    deadline = time.monotonic() + LISTING_TIMEOUT
    while True:
        # the filter matches the name as JSON shows it
        status, listing = server.get(f"/processes?limit=1000&comm={quote(NAME_JSON)}")
        assert status == 200, listing
        rows = [row for row in listing["processes"] if row["pid"] == pid]
        if rows:
            return rows[0]
        assert time.monotonic() < deadline, f"pid {pid} never listed"
        time.sleep(0.1)


def _await_history(server: Server, pid: int,
                   done: Callable[[list[dict]], bool]) -> list[dict]:
    """The identity's stored transitions once `done` says they hold what was awaited
    (writes are batched; other transitions of the process may be stored around them)."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while True:
        status, history = server.get(f"/processes/{pid}/history")
        stored = [entry for entry in history.get("entries", [])
                  if entry["kind"] == "transition"] if status == 200 else []
        if done(stored):
            return stored
        assert time.monotonic() < deadline, (status, history)
        time.sleep(FLUSH_POLL)


# ---------------------------------------------------------------- crwatch run

# Holds the lock at a marker (SIGUSR1 to crwatch) until it was judged (a line in the marks
# file): the audit at the marker sees it, however busy the machine is.
RUN_WORKLOAD = """
import ctypes, fcntl, os, signal, time
ctypes.CDLL(None).prctl(15, ctypes.c_char_p({name!r}), 0, 0, 0)
os.mkdir({directory!r})
lock = os.open({directory!r} + b"/locked", os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(lock, fcntl.LOCK_EX)
os.kill(int(os.environ["CRWATCH_PID"]), signal.SIGUSR1)
while not os.path.getsize(os.environ["CRWATCH_MARKS"]):
    time.sleep(0.01)
"""


def test_run_reports_parse_and_show_the_name(server, base, tmp_path):
    directory = os.fsencode(base / "run") + b"-" + DIRECTORY
    code = RUN_WORKLOAD.format(name=NAME, directory=directory)
    result = crwatch("run", "--at-signal", "USR1", "--json", str(tmp_path / "r.json"), "--junit",
                     str(tmp_path / "junit.xml"), "--", sys.executable, "-c", code,
                     env={**os.environ, "CRWATCH_URL": f"http://127.0.0.1:{server.port}"})
    assert result.returncode == 1, result.stderr  # the lock made it non-checkpointable
    stderr = result.stderr.decode("utf-8")
    assert "\x1b" not in stderr and f"({NAME_SHOWN})" in stderr
    report = json.loads((tmp_path / "r.json").read_bytes().decode("ascii"))
    (process,) = [p for p in report["processes"] if p["comm"] == NAME_JSON]
    assert process["failed"]
    suite = ET.parse(tmp_path / "junit.xml").getroot()  # a strict parser: it must be XML 1.0
    (case,) = [c for c in suite.iter("testcase") if f"({NAME_SHOWN})" in c.get("name")]
    _, path_shown = path_of(base, "run")
    assert path_shown in case.find("failure").text


@pytest.fixture
def immutable(tmp_path) -> Iterator[Path]:
    """A directory not even root may write in (chattr +i)."""
    directory = tmp_path / "immutable"
    directory.mkdir()
    subprocess.run(["chattr", "+i", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_run_refuses_an_unwritable_report_path_before_running_anything(immutable, tmp_path):
    marker = tmp_path / "ran"
    report = immutable / "report.json"
    result = crwatch("run", "--json", str(report), "--", "touch", str(marker))
    assert result.returncode == 2 and not marker.exists()
    assert result.stderr.decode() == (f"crwatch: cannot write a report to {report}: "
                                      "Operation not permitted\n")
    existing = tmp_path / "report.json"
    existing.write_text("kept")
    for unwritable in (str(tmp_path), "/nonexistent/junit.xml"):
        result = crwatch("run", "--json", str(existing), "--junit", unwritable, "--", "true")
        assert result.returncode == 2 and "Traceback" not in result.stderr.decode()
    assert existing.read_text() == "kept"  # checking a path leaves its file as it was


def test_run_prints_the_report_on_stdout_when_writing_it_fails(server):
    # /dev/full: access(2) allows writing, the write fails (ENOSPC)
    result = crwatch("run", "--json", "/dev/full", "--", "true",
                     env={**os.environ, "CRWATCH_URL": f"http://127.0.0.1:{server.port}"})
    assert result.returncode == 2
    assert "crwatch: cannot write the report to /dev/full: No space left on device; it " \
           "follows on stdout" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["schema"] == "crwatch.run/1" and report["checkpointable"]
