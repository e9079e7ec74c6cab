"""Freezing a process tree for the gate.

The cgroup v2 freezer is used only when the tree owns its cgroup (no other
process in it or below it), so that freezing it stops nobody else; otherwise
every thread is held with ptrace. Either way the hold is kept by a helper
process (freeze_helper.py) that has a deadline of its own and resumes the tree
if crwatch dies; crwatch in turn watches the helper (freeze_guard.py) and
resumes the tree if the helper dies.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tracker.audit import descendants
from tracker.context import Hold
from tracker.gate.freeze_guard import HelperGuard, cgroup_frozen
from tracker.gate.ready_helper import ReadyHelper, start_helper
from tracker.procfs import DEFAULT_PROC_ROOT

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
    helper_died: bool = False        # the helper ended without thawing (killed)
    thawed_by: str | None = None     # see THAWED_BY

    @property
    def complete(self) -> bool:
        return not self.unfrozen

    def as_dict(self, watchdog_s: float) -> dict:
        return {"method": self.method, "cgroup": self.cgroup, "pids": self.pids,
                "tasks": self.tasks, "freeze_ms": round(self.freeze_ms, 3),
                "frozen_ms": None if self.frozen_ms is None else round(self.frozen_ms, 3),
                "watchdog_seconds": watchdog_s, "expired": self.expired,
                "helper_died": self.helper_died, "thawed_by": self.thawed_by,
                "already_frozen": self.already_frozen, "unfrozen": self.unfrozen}


THAWED_BY = {
    "crwatch": "the helper, told by crwatch",
    "watchdog": "the helper, at its deadline",
    "owner": "crwatch, writing cgroup.freeze 0 after the helper died",
    "kernel": "the kernel, which detaches a dead tracer's tracees",
    "nobody": "nobody: the cgroup was frozen before crwatch came, and stays so",
}


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
    tells the holder that CRIU now holds the frozen cgroup. `ready`: where a helper
    started ahead may be waiting (else one is started now).
    """

    def __init__(self, pid: int, tree: bool, *, watchdog_s: float = DEFAULT_WATCHDOG_S,
                 freeze_timeout_s: float = DEFAULT_FREEZE_TIMEOUT_S,
                 ready: ReadyHelper | None = None):
        self.pid, self.tree = pid, tree
        self._ready = ready
        self.watchdog_s, self.freeze_timeout_s = watchdog_s, freeze_timeout_s
        self.cgroup = owned_cgroup(pid, tree_pids(pid, tree))
        self.frozen: Frozen | None = None
        self._helper: subprocess.Popen | None = None
        self._guard: HelperGuard | None = None
        self._frozen_at = 0.0      # when the owner heard "frozen" (monotonic)
        self._helper_stderr = b""

    def __enter__(self) -> Frozen:
        mode, target = ("cgroup", str(self.cgroup)) if self.cgroup else ("ptrace", str(self.pid))
        # A freeze found in place is not crwatch's to undo, even if the helper dies.
        ours = self.cgroup if self.cgroup and not cgroup_frozen(self.cgroup) else None
        arguments = (mode, target, "1" if self.tree else "0", str(self.watchdog_s),
                     str(self.freeze_timeout_s))
        self._helper = ((self._ready.take(arguments) if self._ready is not None else None)
                        or start_helper(arguments))
        self._guard = HelperGuard(self._helper.pid, ours)
        report = self._report(self.freeze_timeout_s + HELPER_START_S)
        self._frozen_at = time.monotonic()
        if report is None or "error" in report:
            self._guard.release()
            self._end_helper()
            why = report["error"] if report else self._helper_failure()
            self._guard.thaw()  # whatever the helper froze before it failed
            self._guard.close()
            self._helper = self._guard = None
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
        """Is the tree still held (neither the watchdog fired nor the helper died)?"""
        helper = self._helper
        return (helper is not None and helper.poll() is None
                and not select.select([helper.stdout], [], [], 0)[0])

    def hold(self, seconds: float) -> None:
        """Stay frozen this long, or until the hold ends otherwise if that comes first."""
        helper = self._helper
        if helper is not None:
            select.select([helper.stdout], [], [], seconds)

    def handoff(self, pid: int) -> None:
        self._guard.handoff()
        self._send(f"handoff {pid}")

    def release(self, on_thawed: Callable[[], None] | None = None) -> Frozen | None:
        """Thaw now (if the watchdog has not already); idempotent. `on_thawed` runs as
        soon as the helper says it has let go of the tree at crwatch's word (not at its
        deadline), before it has exited."""
        if self._helper is None:
            return self.frozen
        self._guard.release()
        self._send("thaw")
        report = self._report(HELPER_START_S)
        try:
            if on_thawed is not None and report is not None and not report["expired"]:
                on_thawed()
        finally:
            self._end_helper()
            if report is None:
                self._guard.thaw()  # after a handoff, CRIU has ended: crwatch's freeze is undone
            self._guard.close()
            if self.frozen is not None:
                self._account(report)
            self._helper = self._guard = None
        return self.frozen

    def __exit__(self, *exc) -> None:
        self.release()

    def _account(self, report: dict | None) -> None:
        """Fill in how the hold ended: the helper's own word, or what the owner saw."""
        frozen = self.frozen
        if report is not None:
            frozen.frozen_ms, frozen.expired = report["frozen_ms"], report["expired"]
            frozen.thawed_by = ("nobody" if frozen.already_frozen
                                else "watchdog" if frozen.expired else "crwatch")
            return
        frozen.helper_died = True
        if frozen.method == "ptrace":
            frozen.thawed_by, ended = "kernel", self._guard.exited_at
        else:
            frozen.thawed_by = "nobody" if frozen.already_frozen else "owner"
            ended = self._guard.thawed_at or self._guard.exited_at
        frozen.frozen_ms = ((ended or time.monotonic()) - self._frozen_at) * 1e3

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
            try:
                return json.loads(line) if line else None
            except ValueError:
                return None  # cut off mid-line: it died while writing
        return None

    def _helper_failure(self) -> str:
        error = self._helper_stderr.decode(errors="replace").strip()
        if error:
            return error.splitlines()[-1]
        code = self._helper.returncode
        if code is not None and code < 0:
            return f"the freezer helper was killed ({signal.Signals(-code).name}) before it " \
                   f"reported"
        return "the freezer helper did not answer"

    def _end_helper(self) -> None:
        helper = self._helper
        try:
            helper.stdin.close()  # end of file: it thaws and exits if it has not yet
        except BrokenPipeError:
            pass  # it has exited already
        try:
            helper.wait(timeout=HELPER_START_S)
        except subprocess.TimeoutExpired:
            helper.kill()  # a ptrace holder's tracees resume when it dies
            helper.wait()
        self._helper_stderr = helper.stderr.read()  # it has exited: this ends at once
        helper.stdout.close()
        helper.stderr.close()


def tree_pids(pid: int, tree: bool, proc_root: Path = DEFAULT_PROC_ROOT) -> list[int]:
    if not tree:
        return [pid]
    return descendants(pid, proc_root)

