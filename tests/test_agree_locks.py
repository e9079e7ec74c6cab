"""File locks and leases in real processes, judged by crwatch and by the real CRIU."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.agreement import assert_agrees
from tests.subjects import subject

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
