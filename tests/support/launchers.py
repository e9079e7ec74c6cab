"""The compiled `crwatch` front end (api/cli/launcher.c), built for a test as set-up
builds it, and run as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 120
# What differs between two checks of the same process at different times, or only
# says where the answer came from: the rest of a document is compared byte for byte.
VARYING = ("checked_at", "answered_by", "tracked")
SERVICE_MARK = ", answered by the crwatch service]"


def build(directory: Path) -> Path:
    """The front end, built into `directory`, running this interpreter's command line."""
    program = directory / "crwatch"
    subprocess.run(["bash", str(REPO / "scripts" / "build-launcher.sh"), str(program),
                    sys.executable], check=True, capture_output=True, timeout=60)
    return program


def run(program: Path, *args: str, socket: Path | None, user: int | None = None,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """`crwatch ARGS` through the front end, asking the service on `socket` (None: on no
    socket at all), as `user` (default: this one)."""
    command = [str(program), *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    environment = dict(os.environ, **(env or {}))
    environment["CRWATCH_SOCKET"] = str(socket) if socket else "/nonexistent/crwatch.sock"
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT,
                          env=environment)


def comparable(printed: dict | list) -> dict | list:
    """A verdict document (or a list of them) without what changes from one audit to the
    next."""
    if isinstance(printed, list):
        return [comparable(document) for document in printed]
    document = printed
    kept = {key: value for key, value in document.items() if key not in VARYING}
    environment = dict(kept["environment"])
    environment.pop("detected_in_seconds")
    return {**kept, "environment": environment}


def answered_by_service(result: subprocess.CompletedProcess, as_json: bool) -> bool:
    if as_json:
        documents = json.loads(result.stdout)
        documents = documents if isinstance(documents, list) else [documents]
        return all(document.get("answered_by") == "service" for document in documents)
    return SERVICE_MARK in result.stdout
