"""`crwatch gate --local` as a user runs it, for the gate's tests."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CRWATCH = Path(sys.executable).with_name("crwatch")
AWAIT_S = 30.0  # the longest anything a gate's test waits for may take on a loaded runner


def gate(*arguments: str, timeout: float = 120) -> tuple[int, dict]:
    done = subprocess.run([str(CRWATCH), "gate", "--local", "--json", *arguments],
                          capture_output=True, text=True, timeout=timeout)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)
