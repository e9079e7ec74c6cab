"""Requests to a real service from a process of another uid, answered with raw bytes
(a test greps every byte of a body, not only the fields it knows)."""
from __future__ import annotations

import json
import os
import subprocess
from typing import Iterator

NOBODY = 65534
# A subject's first lines to become NOBODY (the kernel then marks it not dumpable: a
# process that changed its uids is, unless it says otherwise with PR_SET_DUMPABLE).
BECOME_NOBODY = f"""
os.setgroups([]); os.setresgid(*[{NOBODY}] * 3); os.setresuid(*[{NOBODY}] * 3)
"""
# The system Python, isolated: the caller needs nothing of the project's.
PYTHON = "/usr/bin/python3"
TIMEOUT = 30.0

REQUEST = """
import json, sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1], headers=json.loads(sys.argv[2]))
try:
    with urllib.request.urlopen(request, timeout=30) as reply:
        status, body = reply.status, reply.read()
except urllib.error.HTTPError as error:
    status, body = error.code, error.read()
sys.stdout.buffer.write(b"%d\\n" % status + body)
"""

# Prints every line of the stream as it comes.
STREAM = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as reply:
    for line in reply:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


def as_user(uid: int):
    """A preexec_fn: the child becomes uid (and gid) `uid`, with no supplementary group."""
    def become() -> None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    return become


def get_as(uid: int, port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    """(status, raw body) of GET path, asked by a process of this uid."""
    done = subprocess.run([PYTHON, "-I", "-c", REQUEST, f"http://127.0.0.1:{port}{path}",
                           json.dumps(headers or {})], preexec_fn=as_user(uid),
                          capture_output=True, timeout=TIMEOUT, check=True)
    status, _, body = done.stdout.partition(b"\n")
    return int(status), body


class StreamAs:
    """GET /events read by a process of this uid: its raw lines, one at a time."""

    def __init__(self, uid: int, port: int):
        self.process = subprocess.Popen([PYTHON, "-I", "-c", STREAM,
                                         f"http://127.0.0.1:{port}/events"],
                                        preexec_fn=as_user(uid), stdout=subprocess.PIPE)
        self.raw: list[bytes] = []

    def lines(self) -> Iterator[dict]:
        """Each `data:` line's document, as it comes (the raw line kept in `raw`)."""
        for line in self.process.stdout:
            self.raw.append(line)
            if line.startswith(b"data: "):
                yield json.loads(line[len(b"data: "):])

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


READLINK = """
import os, sys
try:
    print(os.readlink(sys.argv[1]))
except PermissionError:
    print("denied")
"""


def kernel_shows(uid: int, pid: int, fd: int) -> bool:
    """Whether the kernel lets a process of this uid read the process's fd link."""
    done = subprocess.run([PYTHON, "-I", "-c", READLINK, f"/proc/{pid}/fd/{fd}"],
                          preexec_fn=as_user(uid), capture_output=True, timeout=TIMEOUT,
                          check=True)
    return done.stdout.strip() != b"denied"
