"""`crwatch gate --local` as a user runs it, and what the gate's tests wait for and need."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracker.gate.freeze import cgroup2_mount

CRWATCH = Path(sys.executable).with_name("crwatch")
AWAIT_S = 30.0  # the longest anything a gate's test waits for may take on a loaded runner


def gate(*arguments: str, timeout: float = 120) -> tuple[int, dict]:
    done = subprocess.run([str(CRWATCH), "gate", "--local", "--json", *arguments],
                          capture_output=True, text=True, timeout=timeout)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def cgroup2_or_skip() -> Path:
    """The cgroup v2 mount, for a test that freezes by cgroup (a skip where none is)."""
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy is mounted on this machine")
    return mount


def await_exited(pid: int) -> None:
    """Until the process has exited (a zombie, or reaped)."""
    deadline = time.monotonic() + AWAIT_S
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):
            return
        assert time.monotonic() < deadline, f"pid {pid} did not exit"
        time.sleep(0.01)
