"""Gate cost: how long a tree stays frozen, and gate + dump against a plain CRIU dump.

For a process with 1,000 fds of mixed kinds, frozen by ptrace and by the cgroup
v2 freezer: the time it stays frozen (target: at most 50 ms), the time freezing
takes, and the whole gate as the caller sees it (the freezer helper starts
before anything is frozen), next to an audit of the same process unfrozen; the
freezer helper's start until the tree is frozen, next to a bare `python -I -S`. Then
`crwatch gate --dump` against `criu dump` of the same process (both
--leave-running), in turns, as a ratio (target: x1.2), the gate starting its
freezer helper (as `crwatch gate` does) and finding one ready (as the service's
gates do), and where the time goes: CRIU's own log dates its start-up up to
pre-dump (where the gate's CRIU waits for the verdict), the wait, and the dump after
it. Medians of several runs; figures, not assertions, recorded for `make bench`'s
table.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.audit_bench import MIXED_FDS
from bench.figures import Figure, record, within
from tests.support.subjects import subject
from tracker.audit import audit
from tracker.criu.runner import find_criu
from tracker.gate.freeze import Freeze, cgroup2_mount
from tracker.gate.ready_helper import ReadyHelper
from tracker.gate.recheck import GateRequest, gate
from tracker.profiles import profile

TARGET_FROZEN_MS = 50.0
TARGET_DUMP_RATIO = 1.2
FDS = 1000
RUNS = 9
READY_S = 0.1  # ample for a helper started ahead to reach its wait for a gate
CRWATCH = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "crwatch"
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
    frozen, freezing, whole, unfrozen, helper, python = [], [], [], [], [], []
    for _ in range(RUNS):
        started = time.perf_counter()
        with Freeze(pid, tree=True):
            helper.append((time.perf_counter() - started) * 1e3)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
        python.append((time.perf_counter() - started) * 1e3)
        started = time.perf_counter()
        document = gate(GateRequest(pid), judged_by)
        whole.append((time.perf_counter() - started) * 1e3)
        assert document["freeze"]["method"] == method, document["freeze"]
        frozen.append(document["freeze"]["frozen_ms"])
        freezing.append(document["freeze"]["freeze_ms"])
        started = time.perf_counter()
        audit(pid, tree=True)
        unfrozen.append((time.perf_counter() - started) * 1e3)
    return {"frozen": statistics.median(frozen), "frozen_max": max(frozen),
            "freezing": statistics.median(freezing), "whole": statistics.median(whole),
            "audit": statistics.median(unfrozen), "helper": statistics.median(helper),
            "python": statistics.median(python)}


def print_frozen(method: str, figures: dict[str, float]) -> None:
    print(f"  {method:<6}  frozen {figures['frozen']:6.1f} ms median, {figures['frozen_max']:6.1f} "
          f"max ({figures['frozen'] / TARGET_FROZEN_MS:.2f} x the {TARGET_FROZEN_MS:g} ms target);"
          f" freezing {figures['freezing']:.2f} ms; whole gate {figures['whole']:.0f} ms")
    record(Figure("gate", f"tree frozen by the gate, 1,000 fds, {method}",
                  f"{figures['frozen']:.1f} ms", f"the {TARGET_FROZEN_MS:g} ms budget",
                  figures["frozen"] / TARGET_FROZEN_MS, f"<= {TARGET_FROZEN_MS:g} ms",
                  figures["frozen"] <= TARGET_FROZEN_MS))
    record(Figure("gate", f"gate without a dump (helper start, freeze, recheck, thaw), "
                  f"1,000 fds, {method}", f"{figures['whole']:.1f} ms",
                  f"audit of the same tree unfrozen {figures['audit']:.1f} ms",
                  figures["whole"] / figures["audit"]))
    record(Figure("gate", f"phase: the freezer helper's start until the tree is frozen, {method}",
                  f"{figures['helper']:.1f} ms",
                  f"python -I -S -c pass {figures['python']:.1f} ms",
                  figures["helper"] / figures["python"]))


class Phases(NamedTuple):
    """One dump's phases in ms, dated by CRIU's own log from its start."""
    start_up: float     # until pre-dump, the last point before it seizes the tree
    waiting: float      # held at pre-dump for the gate's verdict (0: a plain dump)
    dumping: float      # from pre-dump on: seize, dump, release
    whole: float        # the caller's wall time


_STAMP = re.compile(r"^\((\d+\.\d+)\)(.*)$", re.MULTILINE)


def phases(log: str, whole_s: float) -> Phases:
    stamps = [(float(stamp) * 1e3, text) for stamp, text in _STAMP.findall(log)]
    at = next(index for index, (_, text) in enumerate(stamps)
              if "Running pre-dump scripts" in text)
    pre_dump = stamps[at][0]
    scripts = at + 1 if stamps[at + 1][1].lstrip().startswith("[") else at  # each script's path
    after = stamps[scripts + 1][0]
    return Phases(pre_dump, after - pre_dump, stamps[-1][0] - after, whole_s * 1e3)


def dump_runs(pid: int) -> tuple[list[Phases], list[Phases], list[Phases]]:
    """Plain dumps, gates with a dump of the same process that start their freezer helper
    (as `crwatch gate` does), and gates that find one ready (as the service's do), in
    turns."""
    criu, judged_by = find_criu(), profile("criu")
    plain, gated, served = [], [], []
    images = Path(tempfile.mkdtemp(prefix="crwatch-bench-"))
    ready = ReadyHelper()
    ready.replenish()
    try:
        for _ in range(RUNS):
            shutil.rmtree(images, ignore_errors=True)
            images.mkdir()
            started = time.perf_counter()
            result = criu.dump(pid, images_dir=images)
            assert result.ok
            plain.append(phases(result.log, time.perf_counter() - started))
            for runs, helper in ((gated, None), (served, ready)):
                shutil.rmtree(images)
                started = time.perf_counter()
                document = gate(GateRequest(pid, dump_dir=images), judged_by, criu=criu,
                                ready_helper=helper)
                whole = time.perf_counter() - started
                assert document["outcome"] == "dumped", document["dump"]
                runs.append(phases((images / "dump.log").read_text(), whole))
            time.sleep(READY_S)  # the next helper's start is over before the next dump
    finally:
        ready.close()
        shutil.rmtree(images, ignore_errors=True)
    return plain, gated, served


def median(runs: list[Phases], phase: str) -> float:
    return statistics.median(getattr(run, phase) for run in runs)


def report_dumps(how: str, plain: list[Phases], gated: list[Phases],
                 served: list[Phases]) -> None:
    report_gated(how, plain, gated)
    report_gated(f"{how}, its helper started ahead (the service's gate)", plain, served)


def report_gated(how: str, plain: list[Phases], gated: list[Phases]) -> None:
    ours, peer = median(gated, "whole"), median(plain, "whole")
    print(f"  {how}: plain {peer:.0f} ms, gate + dump {ours:.0f} ms: ratio {ours / peer:.2f}")
    print(f"    CRIU's log: start-up to pre-dump {median(gated, 'start_up'):.1f} ms "
          f"(plain {median(plain, 'start_up'):.1f}), waiting for the verdict "
          f"{median(gated, 'waiting'):.1f} ms, pre-dump to the end {median(gated, 'dumping'):.1f} "
          f"ms (plain {median(plain, 'dumping'):.1f})")
    record(Figure("gate", f"gate + dump, 1,000 fds, {how}", f"{ours:.0f} ms",
                  f"plain criu dump {peer:.0f} ms", ours / peer, f"<= x{TARGET_DUMP_RATIO:g}",
                  within(ours / peer, TARGET_DUMP_RATIO)))
    for phase, what in (("start_up", "CRIU's start-up until pre-dump"),
                        ("dumping", "CRIU from pre-dump to the end (seize, dump, release)")):
        ours, peer = median(gated, phase), median(plain, phase)
        record(Figure("gate", f"phase: {what}, {how}", f"{ours:.1f} ms",
                      f"plain criu dump {peer:.1f} ms", ours / peer))
    record(Figure("gate", f"phase: CRIU held at pre-dump until the verdict, {how}",
                  f"{median(gated, 'waiting'):.1f} ms", "plain criu dump 0 ms (no verdict)", None))


def command_ratio(pid: int) -> None:
    """`crwatch gate --local --dump` as a user runs it (Python's start and crwatch's
    imports included) against `criu dump` run the same way, in turns."""
    criu = find_criu()
    plain, gated = [], []
    images = Path(tempfile.mkdtemp(prefix="crwatch-bench-")) / "images"
    try:
        for _ in range(RUNS):
            images.mkdir()
            started = time.perf_counter()
            subprocess.run([criu.path, "dump", "-t", str(pid), "-D", str(images), "-v4",
                            "-o", "dump.log", "--leave-running"], check=True,
                           capture_output=True)
            plain.append((time.perf_counter() - started) * 1e3)
            shutil.rmtree(images)
            started = time.perf_counter()
            subprocess.run([str(CRWATCH), "gate", "--local", "--json", "--dump", str(images),
                            str(pid)], check=True, capture_output=True)
            gated.append((time.perf_counter() - started) * 1e3)
            shutil.rmtree(images)
    finally:
        shutil.rmtree(images.parent, ignore_errors=True)
    ours, peer = statistics.median(gated), statistics.median(plain)
    print(f"  the whole command: crwatch gate --local --dump {ours:.0f} ms, criu dump "
          f"{peer:.0f} ms: ratio {ours / peer:.2f}")
    record(Figure("gate", "crwatch gate --local --dump, whole command, 1,000 fds, ptrace",
                  f"{ours:.0f} ms", f"criu dump {peer:.0f} ms", ours / peer,
                  f"<= x{TARGET_DUMP_RATIO:g}", within(ours / peer, TARGET_DUMP_RATIO)))


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
        print(f"gate + dump vs plain criu dump, {s.note} fds, --leave-running ({RUNS} runs):")
        report_dumps("ptrace", *dump_runs(s.pid))
        with own_cgroup(s.pid):
            runs = dump_runs(s.pid)
        report_dumps("in its own cgroup (CRIU handed the frozen cgroup)", *runs)
        command_ratio(s.pid)


if __name__ == "__main__":
    main()
