"""Freezing a process tree for the gate.

The cgroup v2 freezer is used only when the tree owns its cgroup (no other
process in it or below it), so that freezing it stops nobody else; otherwise
every thread is held with ptrace. Either way the hold is kept by a helper
process (freeze_helper.py) that has a deadline of its own and resumes the tree
if crwatch dies.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tracker.context import Hold
from tracker.procfs import DEFAULT_PROC_ROOT

HELPER = Path(__file__).with_name("freeze_helper.py")
DEFAULT_WATCHDOG_S = 5.0       # the longest the tree stays frozen by crwatch
DEFAULT_FREEZE_TIMEOUT_S = 2.0  # the longest freezing may take (CRIU allows 10 s)
HELPER_START_S = 10.0          # a loaded machine can be slow to start a Python


class FreezeError(Exception):
    """The tree could not be frozen at all (no ptrace, no cgroup access, helper failure)."""


@dataclass
class Frozen:
    """What the holder reported: how the tree was frozen, and for how long."""

    method: str                      # "cgroup" or "ptrace"
    cgroup: str | None
    pids: list[int]
    tasks: int
    freeze_ms: float
    unfrozen: list[dict] = field(default_factory=list)   # {"tid", "why"}: not held
    already_frozen: bool = False     # the cgroup was frozen before crwatch came
    hold: Hold | None = None         # with ptrace: the holder and what its stop hides
    frozen_ms: float | None = None   # known once thawed
    expired: bool = False            # the watchdog thawed it, not crwatch

    @property
    def complete(self) -> bool:
        return not self.unfrozen

    def as_dict(self, watchdog_s: float) -> dict:
        return {"method": self.method, "cgroup": self.cgroup, "pids": self.pids,
                "tasks": self.tasks, "freeze_ms": round(self.freeze_ms, 3),
                "frozen_ms": None if self.frozen_ms is None else round(self.frozen_ms, 3),
                "watchdog_seconds": watchdog_s, "expired": self.expired,
                "already_frozen": self.already_frozen, "unfrozen": self.unfrozen}


def cgroup2_mount(proc_root: Path = DEFAULT_PROC_ROOT) -> Path | None:
    """Where the unified (v2) hierarchy is mounted: /sys/fs/cgroup, or .../unified when hybrid."""
    try:
        lines = (proc_root / "self" / "mountinfo").read_text(errors="surrogateescape").splitlines()
    except OSError:
        return None
    for line in lines:
        before, _, after = line.partition(" - ")
        if after.split(" ", 1)[0] == "cgroup2":
            return Path(before.split()[4])
    return None


def cgroup_of(pid: int, proc_root: Path = DEFAULT_PROC_ROOT) -> str | None:
    """The v2 cgroup path of a process ("0::/path" in /proc/PID/cgroup)."""
    try:
        text = (proc_root / str(pid) / "cgroup").read_text(errors="surrogateescape")
    except OSError:
        return None
    return next((line[3:] for line in text.splitlines() if line.startswith("0::")), None)


def members(directory: Path) -> set[int]:
    """Every process in a cgroup and in the cgroups below it."""
    found: set[int] = set()
    for path, _, _ in os.walk(directory):
        try:
            found |= {int(pid) for pid in Path(path, "cgroup.procs").read_text().split()}
        except OSError:
            continue
    return found


def owned_cgroup(pid: int, tree_pids: list[int],
                 proc_root: Path = DEFAULT_PROC_ROOT) -> Path | None:
    """The cgroup v2 directory the tree owns, if it owns one: every process of the tree
    lives in it (or below it) and nothing else does. None: freeze with ptrace."""
    mount, path = cgroup2_mount(proc_root), cgroup_of(pid, proc_root)
    if mount is None or path in (None, "/"):
        return None
    directory = mount / path.lstrip("/")
    if not (directory / "cgroup.freeze").exists():
        return None
    return directory if members(directory) == set(tree_pids) else None


class Freeze:
    """`with Freeze(pid, tree) as frozen:` the tree is held still inside the block.

    `release()` thaws early (and says for how long it was frozen); `handoff(pid)`
    tells the holder that CRIU now holds the frozen cgroup.
    """

    def __init__(self, pid: int, tree: bool, *, watchdog_s: float = DEFAULT_WATCHDOG_S,
                 freeze_timeout_s: float = DEFAULT_FREEZE_TIMEOUT_S):
        self.pid, self.tree = pid, tree
        self.watchdog_s, self.freeze_timeout_s = watchdog_s, freeze_timeout_s
        self.cgroup = owned_cgroup(pid, tree_pids(pid, tree))
        self.frozen: Frozen | None = None
        self._helper: subprocess.Popen | None = None

    def __enter__(self) -> Frozen:
        mode, target = ("cgroup", str(self.cgroup)) if self.cgroup else ("ptrace", str(self.pid))
        self._helper = subprocess.Popen(
            [sys.executable, "-I", "-S", str(HELPER), mode, target, "1" if self.tree else "0",
             str(self.watchdog_s), str(self.freeze_timeout_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)  # Ctrl-C on crwatch's terminal must not reach it
        report = self._report(self.freeze_timeout_s + HELPER_START_S)
        if report is None or "error" in report:
            self._end_helper()
            why = report["error"] if report else self._helper_failure()
            raise FreezeError(f"cannot freeze pid {self.pid}: {why}")
        self.frozen = Frozen(
            method=report["method"], cgroup=report["cgroup"], pids=report["pids"],
            tasks=report["tasks"], freeze_ms=report["freeze_ms"], unfrozen=report["unfrozen"],
            already_frozen=report.get("already_frozen", False),
            hold=Hold(self._helper.pid,
                      {int(tid): state for tid, state in report["states"].items()},
                      {int(tid): signo for tid, signo in report["stop_signals"].items()})
            if report["method"] == "ptrace" else None)
        return self.frozen

    def holding(self) -> bool:
        """Is the tree still held (its watchdog has not fired)?"""
        helper = self._helper
        return (helper is not None and helper.poll() is None
                and not select.select([helper.stdout], [], [], 0)[0])

    def hold(self, seconds: float) -> None:
        """Stay frozen this long, or until the watchdog thaws the tree if that comes first."""
        helper = self._helper
        if helper is not None:
            select.select([helper.stdout], [], [], seconds)

    def handoff(self, pid: int) -> None:
        self._send(f"handoff {pid}")

    def release(self) -> Frozen | None:
        """Thaw now (if the watchdog has not already); idempotent."""
        if self._helper is None:
            return self.frozen
        self._send("thaw")
        report = self._report(HELPER_START_S)
        if self.frozen is not None and report is not None:
            self.frozen.frozen_ms, self.frozen.expired = report["frozen_ms"], report["expired"]
        self._end_helper()
        return self.frozen

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------ the helper's pipes

    def _send(self, command: str) -> None:
        try:
            self._helper.stdin.write(f"{command}\n".encode())
            self._helper.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # it ended already (its watchdog fired): nothing left to tell

    def _report(self, timeout: float) -> dict | None:
        stream = self._helper.stdout
        deadline = time.monotonic() + timeout
        while select.select([stream], [], [], max(0.0, deadline - time.monotonic()))[0]:
            line = stream.readline()
            return json.loads(line) if line else None
        return None

    def _helper_failure(self) -> str:
        error = self._helper.stderr.read().decode(errors="replace").strip()
        return error.splitlines()[-1] if error else "the freezer helper did not answer"

    def _end_helper(self) -> None:
        helper, self._helper = self._helper, None
        try:
            helper.stdin.close()  # end of file: it thaws and exits if it has not yet
        except BrokenPipeError:
            pass  # it has exited already
        try:
            helper.wait(timeout=HELPER_START_S)
        except subprocess.TimeoutExpired:
            helper.kill()  # a ptrace holder's tracees resume when it dies
            helper.wait()
        helper.stdout.close()
        helper.stderr.close()


def tree_pids(pid: int, tree: bool, proc_root: Path = DEFAULT_PROC_ROOT) -> list[int]:
    if not tree:
        return [pid]
    from tracker.audit import descendants

    return descendants(pid, proc_root)

