"""The owner's watch over the freezer helper: the helper's death never leaves its tree frozen.

The helper (freeze_helper.py) thaws the tree when told to, at its deadline, and when
its owner -- the process that started it, `crwatch gate` or the service -- dies (its
command pipe ends). When the helper itself dies (SIGKILL, the OOM killer) none of that
runs, so its owner watches it (a pidfd, from a thread of its own):

- ptrace: nothing is left to undo. The kernel detaches a dead tracer's tracees
  (exit_ptrace -> __ptrace_detach) and wakes every one held in a PTRACE_INTERRUPT
  stop; one that was in a group stop (SIGSTOP) before the hold stays in it, as it
  was. tests/gate/test_gate.py kills the helper mid-hold and finds no task traced or
  stopped.
- cgroup: `cgroup.freeze` stays 1, as the kernel ties a cgroup's freeze to no
  process. The owner writes 0 itself as soon as the helper is gone -- unless the
  cgroup was frozen before crwatch came (then it stays as it was found), or CRIU
  holds it (handed off): then the owner thaws it once CRIU has ended.

If the owner and the helper are both killed, a cgroup freeze stays until someone
writes 0 to its `cgroup.freeze` (README, "Checkpoint-time gate"); a ptrace hold
ends with the helper, whatever kills it.
"""
from __future__ import annotations

import os
import select
import threading
import time
from pathlib import Path


def cgroup_frozen(directory: Path) -> bool:
    """Does the cgroup's freeze switch say frozen (set by whoever, crwatch or not)?"""
    try:
        return (directory / "cgroup.freeze").read_text().strip() == "1"
    except OSError:
        return False  # removed meanwhile: the helper will say it cannot freeze it


class HelperGuard:
    """Watches one helper; thaws `cgroup` (the freeze crwatch made, or None) if the helper
    ends while nobody else thaws it.

    `handoff()`: CRIU holds the cgroup now, do not thaw under it. `release()`: the owner
    is ending the hold itself, and thaws with `thaw()` if it finds the helper dead.
    """

    def __init__(self, helper_pid: int, cgroup: Path | None):
        self._cgroup = cgroup
        self._lock = threading.Lock()   # one decision: the watcher's thaw or the owner's
        self._released = self._handed_off = False
        self.exited_at: float | None = None   # when the helper was seen gone (monotonic)
        self.thawed_at: float | None = None   # when the owner wrote cgroup.freeze 0
        try:
            self._pidfd: int | None = os.pidfd_open(helper_pid)
        except ProcessLookupError:
            self._pidfd = None                # gone already: thaw at once
        self._wake_read, self._wake_write = os.pipe()
        self._watcher = threading.Thread(target=self._watch, name="crwatch-freeze-guard",
                                         daemon=True)
        self._watcher.start()

    def handoff(self) -> None:
        with self._lock:
            self._handed_off = True

    def release(self) -> None:
        """From here the owner ends the hold: the watcher only notes when the helper exits."""
        with self._lock:
            self._released = True

    def thaw(self) -> None:
        """Write cgroup.freeze 0, if crwatch froze it (idempotent)."""
        with self._lock:
            self._thaw()

    def close(self) -> None:
        """Stop watching (after the helper was reaped, or it would be waited for)."""
        os.write(self._wake_write, b"x")
        self._watcher.join()
        for descriptor in (self._pidfd, self._wake_read, self._wake_write):
            if descriptor is not None:
                os.close(descriptor)
        self._pidfd = None

    def _watch(self) -> None:
        if self._pidfd is not None:
            ready = select.select([self._pidfd, self._wake_read], [], [])[0]
            if self._pidfd not in ready:
                return  # closed while the helper runs
        with self._lock:
            self.exited_at = time.monotonic()
            if not (self._released or self._handed_off):
                self._thaw()

    def _thaw(self) -> None:
        if self._cgroup is None or self.thawed_at is not None:
            return
        try:
            (self._cgroup / "cgroup.freeze").write_text("0")
        except FileNotFoundError:
            pass  # the cgroup was removed: nothing is frozen in it any more
        self.thawed_at = time.monotonic()
