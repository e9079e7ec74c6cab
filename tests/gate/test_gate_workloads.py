"""Everyday workloads through the gate and the real CRIU: nothing CRIU refuses may pass.

Each workload is a real program tree (a web server, SQLite in WAL mode holding a
write transaction, a multiprocessing pool, a shell pipeline, a pty...). The gate
judges it, and then:
- passed: CRIU must dump it (`dump_failed` would be a state the catalogue lacks; only a
  failure CRIU's log blames on CRIU's own trouble under load is tried once more, and
  counted in the session's summary);
- needs options: refused without them, dumped with exactly those it names;
- blocked: CRIU, given every option the reasons name, must refuse it too.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.agreement import RETRIES
from tests.support.gates import AWAIT_S, gate
from tracker.criu.log import transient
from tracker.criu.options import arguments_for
from tracker.criu.runner import find_criu

pytestmark = [pytest.mark.criu]

PY = sys.executable
WORKLOADS = {
    "http.server": [PY, "-m", "http.server", "0", "--bind", "127.0.0.1"],
    "sqlite WAL writer in a transaction": [PY, "-c", textwrap.dedent("""
        import sqlite3, sys, time
        db = sqlite3.connect(sys.argv[1], isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL"); db.execute("CREATE TABLE t (x)")
        db.execute("BEGIN IMMEDIATE"); db.execute("INSERT INTO t VALUES (1)")
        print("ready", flush=True); time.sleep(600)"""), "{tmp}/db.sqlite3"],
    "multiprocessing pool": [PY, "-c", textwrap.dedent("""
        import multiprocessing, time
        if __name__ == "__main__":
            pool = multiprocessing.Pool(2); pool.map(abs, range(4))
            lock = multiprocessing.Lock()
            print("ready", flush=True); time.sleep(600)""")],
    "shell pipeline": ["bash", "-c", "tail -f /dev/null | gzip | cat > /dev/null & "
                       "echo ready; wait"],
    "flock around a command": ["flock", "{tmp}/lockfile", "bash", "-c", "echo ready; sleep 600"],
    "a pty (script)": ["script", "-qfc", "echo ready; sleep 600", "/dev/null"],
    "asyncio unix server with a client": [PY, "-c", textwrap.dedent("""
        import asyncio, sys
        async def main():
            server = await asyncio.start_unix_server(lambda r, w: None, sys.argv[1])
            reader, writer = await asyncio.open_unix_connection(sys.argv[1])
            print("ready", flush=True); await asyncio.sleep(600)
        asyncio.run(main())"""), "{tmp}/socket"],
    "threads waiting on conditions, a zombie child, a stopped child": [PY, "-c", textwrap.dedent("""
        import os, signal, threading, time
        for _ in range(4):
            threading.Thread(target=threading.Condition().__enter__, daemon=True).start()
        zombie = os.fork()
        if zombie == 0: os._exit(3)
        stopped = os.fork()
        if stopped == 0: time.sleep(600)
        os.kill(stopped, signal.SIGSTOP)
        os.waitpid(stopped, os.WUNTRACED)
        print("ready", flush=True); time.sleep(600)""")],
    "perl with a deleted scratch file": ["perl", "-e", "open(my $f, '+>', $ARGV[0]) or die; "
                                         "unlink $ARGV[0]; print $f 'x' x 4096; $| = 1; "
                                         "print STDOUT \"ready\\n\"; sleep 600",
                                         "{tmp}/scratch"],
    "mmaps, memfd, eventfd, signalfd": [PY, "-c", textwrap.dedent("""
        import mmap, os, signal, sys, time
        with open(sys.argv[1], "wb") as f: f.write(b"x" * 65536)
        data = open(sys.argv[1], "r+b"); shared = mmap.mmap(data.fileno(), 0)
        memfd = os.memfd_create("scratch"); os.ftruncate(memfd, 1 << 20)
        view = mmap.mmap(memfd, 1 << 20); anonymous = mmap.mmap(-1, 1 << 22)
        event = os.eventfd(0)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        print("ready", flush=True); time.sleep(600)"""), "{tmp}/mapped"],
    "dd copying, busy": ["bash", "-c", "echo ready; exec dd if=/dev/zero of=/dev/null bs=4k"],
}


@pytest.mark.parametrize("name", WORKLOADS)
def test_the_gate_and_criu_agree_on_an_everyday_workload(name, tmp_path):
    command = [word.replace("{tmp}", str(tmp_path)) for word in WORKLOADS[name]]
    workload = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True, cwd=tmp_path)
    try:
        if name != "http.server":  # it says nothing until asked
            assert workload.stdout.readline().strip() == b"ready", name
        else:
            _await_listening(workload.pid)
        workload.stdout.close()
        _gate_agrees_with_criu(name, workload.pid, tmp_path)
    finally:
        os.killpg(workload.pid, 9)
        workload.wait(timeout=AWAIT_S)


def _gate_agrees_with_criu(name: str, pid: int, tmp_path: Path) -> None:
    status, first = _gate_dump(name, pid, tmp_path / "plain")
    verdict = first["verdict"]
    assert first["outcome"] != "dump_failed", first["drift"]["criu"]
    if verdict["verdict"] == "ok":
        assert first["outcome"] == "dumped" and status == 0
        return
    assert first["outcome"] == "refused" and not first["dump"]["ran"]
    options = [f"--allow={option}" + (f"={reason['option_value']}"
                                      if reason["option_value"] else "")
               for reason in verdict["reasons"] if (option := reason["option"])]
    if verdict["verdict"] == "needs_options":
        status, second = _gate_dump(name, pid, tmp_path / "options", *options)
        assert second["outcome"] == "dumped", (second["drift"]["criu"], verdict["reasons"])
        return
    assert verdict["verdict"] == "blocked", verdict
    arguments = arguments_for(verdict["reasons"])
    trial = RETRIES.dump(find_criu(), pid, arguments, f"{name}: {' '.join(arguments)}")
    assert not trial.ok, ("CRIU dumped what crwatch blocked", verdict["reasons"])
    assert not transient(trial.errors), ("CRIU's own trouble, twice", trial.errors)


def _gate_dump(name: str, pid: int, images: Path, *allow: str) -> tuple[int, dict]:
    """Gate and dump; a dump that fails is tried once more only when CRIU's log blames
    CRIU's own trouble under load (counted and printed). Any other failure after a
    passed gate stands: it is a rule the catalogue lacks."""
    status, document = gate(str(pid), "--dump", str(images), *allow)
    if document["outcome"] == "dump_failed" and transient(document["dump"]["errors"]):
        RETRIES.count(f"gate of {name}", document["dump"]["errors"])
        print("CRIU's own trouble after the gate passed, retried:", document["dump"]["errors"])
        status, document = gate(str(pid), "--dump", str(images.with_name(images.name + "-again")),
                                *allow)
    return status, document


def _await_listening(pid: int) -> None:
    """Until the server's listening socket is open (a condition of the process itself)."""
    import time

    deadline = time.monotonic() + AWAIT_S
    while not any(_link(f"/proc/{pid}/fd/{fd}").startswith("socket:")
                  for fd in os.listdir(f"/proc/{pid}/fd")):
        assert time.monotonic() < deadline, "http.server never listened"
        time.sleep(0.01)


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except FileNotFoundError:
        return ""  # closed since the listing (the interpreter starting up)
