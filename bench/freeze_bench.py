"""How soon a tree runs again when its freezer helper is killed mid-hold.

A process is frozen by the gate's Freeze (ptrace, then the cgroup v2 freezer in a
cgroup of its own), its helper is killed with SIGKILL, and the time from the kill to
the tree running again is taken: for ptrace until the kernel has detached the task
(TracerPid 0), for the cgroup until `cgroup.events` says `frozen 0` (crwatch's own
watch over the helper writes `cgroup.freeze` 0). Medians of several runs; figures,
not assertions.
"""
from __future__ import annotations

import os
import select
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gate_bench import own_cgroup
from tests.support.subjects import subject
from tracker.gate.freeze import Freeze

RUNS = 15


def helper_pid() -> int:
    """This process's freezer helper (the child of its main thread running freeze_helper.py)."""
    for kid in Path(f"/proc/self/task/{os.getpid()}/children").read_text().split():
        if b"freeze_helper.py" in Path(f"/proc/{kid}/cmdline").read_bytes():
            return int(kid)
    raise RuntimeError("no freezer helper runs")


def await_traced_no_more(pid: int) -> None:
    status = Path(f"/proc/{pid}/status")
    while "TracerPid:\t0\n" not in status.read_text():
        pass  # no event tells a tracee was detached: spin, the figure is in microseconds


def await_thawed(cgroup: Path) -> None:
    events = os.open(cgroup / "cgroup.events", os.O_RDONLY)
    try:
        poller = select.poll()
        poller.register(events, select.POLLPRI)
        while True:
            os.lseek(events, 0, os.SEEK_SET)
            if "frozen 0" in os.read(events, 4096).decode():
                return
            poller.poll(10_000)
    finally:
        os.close(events)


def thaw_after_death_ms(pid: int, method: str) -> list[float]:
    figures = []
    for _ in range(RUNS):
        freeze = Freeze(pid, tree=True, watchdog_s=60)
        frozen = freeze.__enter__()
        assert frozen.method == method, frozen
        killed = time.perf_counter()
        os.kill(helper_pid(), signal.SIGKILL)
        if method == "ptrace":
            await_traced_no_more(pid)
        else:
            await_thawed(Path(frozen.cgroup))
        figures.append((time.perf_counter() - killed) * 1e3)
        freeze.release()
        assert frozen.helper_died, frozen
    return figures


def main() -> None:
    print(f"the freezer helper killed mid-hold: time from SIGKILL to a running tree "
          f"(median of {RUNS}, max)")
    with subject("ready(); hold()") as s:
        for method in ("ptrace", "cgroup"):
            if method == "cgroup":
                with own_cgroup(s.pid):
                    figures = thaw_after_death_ms(s.pid, method)
            else:
                figures = thaw_after_death_ms(s.pid, method)
            who = "the kernel" if method == "ptrace" else "crwatch"
            print(f"  {method:<6}  {statistics.median(figures):6.2f} ms, max {max(figures):6.2f} ms"
                  f"  (thawed by {who})")


if __name__ == "__main__":
    main()
