"""File locks and leases in real processes, judged by crwatch and by the real CRIU."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support.agreement import assert_agrees
from tests.support.subjects import subject
from tracker import verdict
from tracker.audit import audit
from tracker.criu.options import arguments_for
from tracker.criu.runner import find_criu
from tracker.profiles import profile

pytestmark = [pytest.mark.criu]

OPEN = """
path = os.environ["LOCKED_FILE"]
f = open(path, "r+")
"""
# A grandchild, reparented away from the subject (CRIU dumps descendants),
# locks the same file for reading and keeps the lock.
OUTSIDE_READ_LOCK = """
r, w = os.pipe()
if os.fork() == 0:
    if os.fork() == 0:
        other = open(path, "r+")
        fcntl.lockf(other.fileno(), fcntl.LOCK_SH)
        os.write(w, b"locked")
        hold()
    os._exit(0)
os.wait()
os.read(r, 16); os.close(r); os.close(w)
"""
OFD_SETLK = 37  # F_OFD_SETLK, with a struct flock whose l_pid is 0

STATES = {
    "POSIX write lock on a byte range": (OPEN + "fcntl.lockf(f.fileno(), fcntl.LOCK_EX, 10, 5)",
                                         "needs_options", {"lock.posix"}),
    "OFD write lock": (OPEN + f"""
import struct
fcntl.fcntl(f.fileno(), {OFD_SETLK}, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
""", "needs_options", {"lock.ofd"}),
    "flock shared lock": (OPEN + "fcntl.flock(f.fileno(), fcntl.LOCK_SH)",
                          "needs_options", {"lock.flock"}),
    "read lease": ("""
fd = os.open(os.environ["LOCKED_FILE"], os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
""", "needs_options", {"lock.lease"}),
    "file locked only by a process outside the tree": (OPEN + OUTSIDE_READ_LOCK,
                                                       "ok", {"lock.outside_holder"}),
    "file locked by the tree and by a process outside it": (
        OPEN + OUTSIDE_READ_LOCK + "fcntl.lockf(f.fileno(), fcntl.LOCK_SH)",
        "needs_options", {"lock.posix", "lock.outside_holder"}),
}


@pytest.mark.parametrize("name", list(STATES))
def test_lock_agrees_with_criu(name: str, tmp_path: Path):
    code, expect, codes = STATES[name]
    locked = tmp_path / "locked"
    locked.write_text("0123456789" * 10)
    with subject(code + "\nready()\nhold()\n", env={"LOCKED_FILE": str(locked)}) as running:
        document = assert_agrees(running.pid, name, expect=expect, codes=codes,
                                 criu_error="You can try --file-locks" if expect != "ok" else None)
    messages = [r["message"] for r in document["reasons"] if r["code"] in codes]
    assert all(str(locked) in message for message in messages), messages


# A write lease on a file of 5 bytes or more: CRIU reopens the file to read its build-id
# (files-reg.c), which breaks the lease. A short lease-break-time keeps the waits short.
WRITE_LEASE = """
fd = os.open(os.environ["LOCKED_FILE"], os.O_RDWR)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
"""
IGNORE_SIGIO = "signal.signal(signal.SIGIO, signal.SIG_IGN)\n"
LEASE_BREAK_TIME = Path("/proc/sys/fs/lease-break-time")


@pytest.fixture
def short_lease_break_time():
    saved = LEASE_BREAK_TIME.read_text()
    LEASE_BREAK_TIME.write_text("1")
    try:
        yield
    finally:
        LEASE_BREAK_TIME.write_text(saved)


def test_write_lease_on_a_file_criu_reopens_agrees_with_criu(tmp_path: Path, short_lease_break_time):
    locked = tmp_path / "locked"
    locked.write_text("0123456789" * 10)
    # the plain dump breaks the lease: this holder ignores SIGIO to live through it
    with subject(IGNORE_SIGIO + WRITE_LEASE + "ready()\nhold()\n",
                 env={"LOCKED_FILE": str(locked)}) as running:
        document = assert_agrees(running.pid, "write lease on a file of 100 bytes",
                                 expect="needs_options", codes={"lock.lease", "lock.lease.reopened"},
                                 criu_error="You can try --file-locks",
                                 needed_for_effect={"--file-validation": "test_write_lease_survives_"
                                                    "only_a_dump_with_file_validation_filesize"})
    assert document["required_options"] == ["--file-locks", "--file-validation"]
    assert "--file-validation filesize" in " ".join(r["remedy"] for r in document["reasons"])


def test_write_lease_survives_only_a_dump_with_file_validation_filesize(tmp_path: Path,
                                                                       short_lease_break_time):
    criu = find_criu()
    assert criu is not None, "no CRIU: scripts/setup.sh provides one"
    locked = tmp_path / "locked"
    locked.write_text("0123456789" * 10)
    code = WRITE_LEASE + "ready()\nhold()\n"
    with subject(code, env={"LOCKED_FILE": str(locked)}) as running:
        reasons = verdict.document(audit(running.pid), profile("criu", criu.version))["reasons"]
        options = arguments_for(reasons)
        assert options == ["--file-locks", "--file-validation", "filesize"]
        dumped = criu.dump(running.pid, options)
        assert dumped.ok, dumped.errors
        assert running.process.poll() is None
        assert f"LEASE  ACTIVE    WRITE {running.pid} " in Path("/proc/locks").read_text()
    with subject(code, env={"LOCKED_FILE": str(locked)}) as running:
        criu.dump(running.pid, ["--file-locks"])
        # CRIU's reopen broke the lease; the lease-break SIGIO killed the holder once let go
        assert running.process.wait(timeout=30) == -signal.SIGIO
