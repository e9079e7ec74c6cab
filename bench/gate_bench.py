"""Gate cost: how long a tree stays frozen, and gate + dump against a plain CRIU dump.

For a process with 1,000 fds of mixed kinds, frozen by ptrace and by the cgroup
v2 freezer: the time it stays frozen (target: at most 50 ms), the time freezing
takes, and the whole gate as the caller sees it (the freezer helper starts
before anything is frozen). Then `crwatch gate --dump` against `criu dump` of
the same process (both --leave-running), as a ratio. Medians of several runs;
figures, not assertions.
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.audit_bench import MIXED_FDS
from tests.support.subjects import subject
from tracker.criu.runner import find_criu
from tracker.gate.freeze import cgroup2_mount
from tracker.gate.recheck import GateRequest, gate
from tracker.profiles import profile

TARGET_FROZEN_MS = 50.0
FDS = 1000
RUNS = 9
DUMPABLE_FDS = MIXED_FDS.replace("    tcp_pair,\n", "")  # no --tcp-established needed


@contextmanager
def own_cgroup(pid: int) -> Iterator[None]:
    mount = cgroup2_mount()
    directory = mount / f"crwatch-bench-{os.getpid()}"
    directory.mkdir()
    try:
        (directory / "cgroup.procs").write_text(str(pid))
        yield
    finally:
        (Path(mount) / "cgroup.procs").write_text(str(pid))  # back to the root, then away
        directory.rmdir()


def frozen_figures(pid: int, method: str) -> dict[str, float]:
    judged_by = profile("criu")
    frozen, freezing, whole = [], [], []
    for _ in range(RUNS):
        started = time.perf_counter()
        document = gate(GateRequest(pid), judged_by)
        whole.append((time.perf_counter() - started) * 1e3)
        assert document["freeze"]["method"] == method, document["freeze"]
        frozen.append(document["freeze"]["frozen_ms"])
        freezing.append(document["freeze"]["freeze_ms"])
    return {"frozen": statistics.median(frozen), "frozen_max": max(frozen),
            "freezing": statistics.median(freezing), "whole": statistics.median(whole)}


def print_frozen(method: str, figures: dict[str, float]) -> None:
    print(f"  {method:<6}  frozen {figures['frozen']:6.1f} ms median, {figures['frozen_max']:6.1f} "
          f"max ({figures['frozen'] / TARGET_FROZEN_MS:.2f} x the {TARGET_FROZEN_MS:g} ms target);"
          f" freezing {figures['freezing']:.2f} ms; whole gate {figures['whole']:.0f} ms")


def dump_ratio(pid: int) -> tuple[float, float]:
    criu, judged_by = find_criu(), profile("criu")
    plain, gated = [], []
    images = Path(tempfile.mkdtemp(prefix="crwatch-bench-"))
    try:
        for _ in range(RUNS):
            shutil.rmtree(images, ignore_errors=True)
            images.mkdir()
            started = time.perf_counter()
            assert criu.dump(pid, images_dir=images).ok
            plain.append(time.perf_counter() - started)
            shutil.rmtree(images)
            started = time.perf_counter()
            document = gate(GateRequest(pid, dump_dir=images), judged_by, criu=criu)
            gated.append(time.perf_counter() - started)
            assert document["outcome"] == "dumped", document["dump"]
    finally:
        shutil.rmtree(images, ignore_errors=True)
    return statistics.median(plain), statistics.median(gated)


def main() -> None:
    if os.geteuid() != 0:
        print("  the gate needs root: skipped")
        return
    with subject(MIXED_FDS, env={"FD_COUNT": str(FDS)}) as s:
        print(f"frozen time, one process with {s.note} fds of mixed kinds ({RUNS} runs):")
        print_frozen("ptrace", frozen_figures(s.pid, "ptrace"))
        if cgroup2_mount() is not None:
            with own_cgroup(s.pid):
                print_frozen("cgroup", frozen_figures(s.pid, "cgroup"))
    with subject(DUMPABLE_FDS, env={"FD_COUNT": str(FDS)}) as s:
        plain, gated = dump_ratio(s.pid)
        print(f"gate + dump vs plain criu dump, {s.note} fds, --leave-running ({RUNS} runs):")
        print(f"  plain {plain * 1e3:.0f} ms, gate + dump {gated * 1e3:.0f} ms: "
              f"ratio {gated / plain:.2f}")
        with own_cgroup(s.pid):
            plain, gated = dump_ratio(s.pid)
        print(f"  in its own cgroup (CRIU handed the frozen cgroup): plain {plain * 1e3:.0f} ms, "
              f"gate + dump {gated * 1e3:.0f} ms: ratio {gated / plain:.2f}")


if __name__ == "__main__":
    main()
