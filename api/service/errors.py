"""The service's own errors, which app.py answers with a status: a process that is not
there (404) and a gate already running for it (409).

Here, apart from what raises them, so that the state, the gates and the application
can all import them without importing each other."""
from __future__ import annotations


class NoSuchProcess(LookupError):
    """No process has this pid now (or it exited while it was being read)."""

    def __init__(self, pid: int):
        super().__init__(f"no process with pid {pid}")
        self.pid = pid


class GateBusy(Exception):
    """A gate of this process is already running."""
