"""What the tracker costs the host: syscall slowdown, event throughput, memory.

Prints figures and their ratio to the targets (worst microbenchmark 1.25x,
realistic workload 1.03x, no loss at 100,000 relevant events/s, ready within 3 s),
never asserts: these machines are noisy. Slowdowns compare runs with and without a
real Tracker (probes attached, table seeded) in this process, interleaved
(off, on, off, on, ...) and summarised by medians. The loads are C programs
(bench/syscall_loops.c) compiled here with gcc. Memory is that of a
`crwatch watch` process seeded with 2,000 extra processes alive. Time to ready is
that of `crwatch watch` (its ready line) and `crwatch serve` (its first /healthz
answer) with 500 extra processes alive, next to what compiling the probes and seeding
took in the same start (the ready line says).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import Figure, record, within
from probes.loader import SOURCE as SOURCE_BPF
from probes.loader import ensure_tracefs, probe_blocks
from tracker.live.applier import Tracker
from tracker.profiles import NEWEST_KNOWN_CRIU, profile

SOURCE = Path(__file__).with_name("syscall_loops.c")
CRWATCH = Path(sys.executable).with_name("crwatch")

TARGET_WORST_MICRO = 1.25
TARGET_REALISTIC = 1.03
TARGET_EVENT_RATE = 100_000
TARGET_DEVICE_OPEN_OVER_FLOOR = 1.05     # open+close of /dev/null: within 5% of empty programs
TARGET_FUTEX_DEFAULT = 1.10              # futex wake, default profile (no futex probe), vs off
TARGET_FUTEX_STRICT_OVER_FLOOR = 1.05    # futex wake, strict (futex probed), vs empty programs
TARGET_READY_SECONDS = 3.0

REPETITIONS = 5                      # off/on pairs
MICRO_CALLS = {"getppid": 2_000_000, "futex_wake": 2_000_000, "open_close": 400_000,
               "open_close /dev/null": 400_000}
# The realistic load (iterations per thread, a record lock every Nth iteration) in
# three mixes: file work alone (one lock per thread), locking now and then, and
# locking as a busy database does (the lock calls/s are printed).
WORKLOADS = {"files only": (10_000, 1 << 40), "light locking": (10_000, 40),
             "heavy locking": (10_000, 4)}
# (name, extra argument of `syscall_loops events`, rates): dup+close of a tracked fd, the
# copy closed at once or interleaved (the table skips such pairs:
# LiveTable.skip_dup_and_close), and open+close of a device by a process that holds
# nothing else (each open is read from /proc and makes a transition, each close another)
THROUGHPUT_PATTERNS = (
    ("dup+close", [], (25_000, 50_000, 100_000, 200_000)),
    ("dup+dup+close+close", ["interleaved"], (50_000, 100_000)),
    ("open+close, every event a transition", ["reopen"], (25_000, 50_000, 100_000)),
)
EVENT_SECONDS = 3.0
DRAIN_TIMEOUT = 120.0
DRAIN_POLL = 0.05
EXTRA_PROCESSES = 2_000
NOCR_EVERY = 10                      # every 10th extra process holds /dev/kvm
READY_EXTRA_PROCESSES = 500
READY_REPETITIONS = 3                # starts of each command, in turns


def build(workdir: Path) -> Path:
    binary = workdir / "syscall_loops"
    subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", str(binary), str(SOURCE)],
                   check=True)
    return binary


def other_bpf_holders() -> list[int]:
    """Processes other than this one holding BPF programs (another tracker, say): their
    probes slow the "untracked" runs down too."""
    holders = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            links = [os.readlink(f"/proc/{name}/fd/{fd}") for fd in os.listdir(f"/proc/{name}/fd")]
        except OSError:
            continue  # gone, or an fd closed meanwhile
        if "anon_inode:bpf-prog" in links:
            holders.append(int(name))
    return holders


def run(binary: Path, *args) -> list[str]:
    done = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True,
                          check=True)
    return done.stdout.split()


@contextmanager
def tracking(profile_name: str = "criu") -> Iterator[Tracker]:
    """A tracker started for one profile (`criu` leaves the futex probe out)."""
    tracker = Tracker(profile(profile_name, NEWEST_KNOWN_CRIU)).start()
    try:
        if tracker.degraded:
            raise SystemExit(f"the tracker could not attach its probes: {tracker.degraded}")
        yield tracker
    finally:
        tracker.stop()


# ---------------------------------------------------------------- slowdown

def _interleaved(measure) -> None:
    """Call measure(tracked) REPETITIONS times each way, off and on in turn."""
    for _ in range(REPETITIONS):
        for tracked in (False, True):
            with tracking() if tracked else nullcontext():
                measure(tracked)


def _others_warning(before: set[int]) -> list[str]:
    others = before | set(other_bpf_holders())
    if not others:
        return []
    return [f"WARNING: pids {sorted(others)} held BPF programs during these runs: "
            f"the untracked runs were not"]


@contextmanager
def empty_programs() -> Iterator[None]:
    """Programs that do nothing on every tracepoint the probes use: what the
    tracepoint mechanism itself costs the syscalls, below which no probe can go."""
    from bcc import BPF
    ensure_tracefs()
    tracepoints = [tracepoint for group in probe_blocks(SOURCE_BPF.read_text()).values()
                   for tracepoint in group
                   if BPF.tracepoint_exists(tracepoint.category, tracepoint.event)]
    text = "typedef void *fl_owner_t;\n" + "".join(  # named by the filelock formats
        f"TRACEPOINT_PROBE({tracepoint.category}, {tracepoint.event}) {{ return 0; }}\n"
        for tracepoint in tracepoints)
    bpf = BPF(text=text.encode())
    try:
        yield
    finally:
        bpf.cleanup()


MICRO_SETUPS = {"off": nullcontext, "empty": empty_programs, "crwatch": tracking,
                "crwatch strict": lambda: tracking("strict")}


def bench_micro(binary: Path, workdir: Path, loops: list[str] | None = None) -> list[str]:
    """Each loop (`loops`: these of MICRO_CALLS only) with nothing attached, with empty
    programs on the probes' tracepoints (the floor), and with crwatch for `criu` (no futex
    probe) and for `strict`, in turn. The loops count their CPU time: waiting for a CPU on
    a busy host is left out."""
    regular = workdir / "regular-file"
    regular.write_bytes(b"x")
    chosen = {name: calls for name, calls in MICRO_CALLS.items() if not loops or name in loops}
    micro: dict[tuple[str, str], list[float]] = {}
    others = set(other_bpf_holders())
    for _ in range(REPETITIONS):
        for setup, attached in MICRO_SETUPS.items():
            with attached():
                for name, calls in chosen.items():
                    loop, *path = name.split()
                    if loop == "open_close":
                        path = path or [regular]
                    micro.setdefault((name, setup), []).append(
                        float(run(binary, loop, calls, *path)[0]))
    lines = _others_warning(others)
    ratios = []
    for name in chosen:
        off, empty, on, strict = (statistics.median(micro[name, setup]) for setup in MICRO_SETUPS)
        ratios.append(on / off)
        lines.append(f"{name:20} {off:8.1f} ns/call untracked, {empty:8.1f} with empty programs "
                     f"(floor, ratio {empty / off:.3f}); tracked, profile criu: {on:8.1f}, ratio "
                     f"{on / off:.3f}, {on / empty:.3f} x the floor ({on - empty:+.0f} ns); "
                     f"profile strict: {strict:8.1f}, ratio {strict / off:.3f}, "
                     f"{strict / empty:.3f} x the floor ({strict - empty:+.0f} ns)")
    lines.append(f"worst microbenchmark ratio {max(ratios):.3f}  target {TARGET_WORST_MICRO}, "
                 f"ratio to target {max(ratios) / TARGET_WORST_MICRO:.2f}")
    _record_micro({key: statistics.median(values) for key, values in micro.items()})
    return lines


def _record_micro(medians: dict[tuple[str, str], float]) -> None:
    """The issue's probe figures, each next to the floor or the untracked run it is held to."""
    def figure(measure: str, loop: str, setup: str, against: str, peer: str,
               limit: float | None) -> None:
        ours, theirs = medians[loop, setup], medians[loop, against]
        ratio = ours / theirs
        record(Figure("probes", measure, f"{ours:.0f} ns", f"{peer} {theirs:.0f} ns", ratio,
                      f"<= x{limit:.2f}" if limit else "",
                      within(ratio, limit) if limit else None))

    if ("open_close /dev/null", "off") in medians:
        figure("open+close of /dev/null, tracker running (profile criu)",
               "open_close /dev/null", "crwatch", "empty", "empty programs",
               TARGET_DEVICE_OPEN_OVER_FLOOR)
        figure("open+close of /dev/null, tracker running (profile criu)",
               "open_close /dev/null", "crwatch", "off", "tracker off", None)
    if ("futex_wake", "off") in medians:
        figure("uncontended futex wake, profile criu (futex not probed)", "futex_wake",
               "crwatch", "off", "tracker off", TARGET_FUTEX_DEFAULT)
        figure("uncontended futex wake, profile strict (futex probed)", "futex_wake",
               "crwatch strict", "empty", "empty programs", TARGET_FUTEX_STRICT_OVER_FLOOR)


def bench_workload(binary: Path, workdir: Path) -> list[str]:
    files = workdir / "workload"
    files.mkdir(exist_ok=True)
    loads: dict[tuple[str, bool], list[float]] = {}
    lock_rates: dict[str, list[float]] = {}
    # CPU this process (the tracker's threads: the main thread only waits) used during
    # the workload, as a share of one CPU
    tracker_cpu: dict[str, list[float]] = {}
    others = set(other_bpf_holders())

    def measure(tracked: bool) -> None:
        for name, (iterations, lock_every) in WORKLOADS.items():
            cpu = time.process_time()
            seconds, lock_calls = run(binary, "workload", iterations, lock_every, files)
            loads.setdefault((name, tracked), []).append(float(seconds))
            lock_rates.setdefault(name, []).append(int(lock_calls) / float(seconds))
            if tracked:
                tracker_cpu.setdefault(name, []).append(
                    (time.process_time() - cpu) / float(seconds))

    _interleaved(measure)
    lines = _others_warning(others)
    for name in WORKLOADS:
        off, on = statistics.median(loads[name, False]), statistics.median(loads[name, True])
        lines.append(f"workload, {name} (4 threads, ~{statistics.median(lock_rates[name]):,.0f} "
                     f"lock calls/s): {off:.3f} s untracked, {on:.3f} s tracked: ratio "
                     f"{on / off:.3f}  target {TARGET_REALISTIC}, ratio to target "
                     f"{on / off / TARGET_REALISTIC:.2f}; the tracker meanwhile used "
                     f"{statistics.median(tracker_cpu[name]):.0%} of a CPU")
    return lines


# ---------------------------------------------------------------- throughput

def _snapshot(tracker: Tracker) -> dict[str, int]:
    counters = tracker.counters()
    table, lost = counters["table"], counters["lost"]
    return {"applied": table["events"] - table["lost_reports"], "kernel": lost["kernel"],
            "queue": lost["queue_overflow"], "decode": lost["decode_errors"],
            "reaudits": table["reaudits"]}


def _drain(tracker: Tracker) -> float:
    """Seconds until the tracker has applied everything queued (polled every DRAIN_POLL:
    the last poll, which only confirms that nothing more came, is not counted)."""
    started = time.monotonic()
    last, last_at = None, started
    while time.monotonic() - started < DRAIN_TIMEOUT:
        current = _snapshot(tracker)["applied"]
        if tracker.reader.events.qsize() == 0 and current == last:
            break
        if current != last:
            last, last_at = current, time.monotonic()
        time.sleep(DRAIN_POLL)
    return last_at - started


@contextmanager
def one_core_busy() -> Iterator[str]:
    """A competing load: a busy loop pinned to the last CPU for the block (a user's host
    is never idle); yields its description."""
    cpu = max(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(spinner.pid, {cpu})  # from here: no preexec_fn beside threads
        yield f"with CPU {cpu} kept busy by a spinning process"
    finally:
        spinner.kill()
        spinner.wait()


def bench_throughput(binary: Path) -> list[str]:
    """Each pattern at every rate on the host as it is, then at the target rate with one
    core kept busy elsewhere."""
    lines = []
    with tracking() as tracker:
        for pattern, extra, rates in THROUGHPUT_PATTERNS:
            lines += _throughput(tracker, binary, pattern, extra, rates)
        with one_core_busy() as load:
            lines.append(f"-- {load}:")
            for pattern, extra, _ in THROUGHPUT_PATTERNS:
                lines += _throughput(tracker, binary, pattern, extra, (TARGET_EVENT_RATE,),
                                     load="one core busy")
    return lines


def _throughput(tracker: Tracker, binary: Path, pattern: str, extra: list[str],
                rates: tuple[int, ...], load: str = "") -> list[str]:
    """`load`: the competing load the rates are offered under, as the figures say it."""
    lines = []
    pattern = f"{pattern}, {load}" if load else pattern
    first_loss = last_clean = None
    for rate in rates:
        before = _snapshot(tracker)
        made, seconds = run(binary, "events", rate, EVENT_SECONDS, *extra)
        drained = _drain(tracker)
        busy = float(seconds) + drained
        after = _snapshot(tracker)
        delta = {key: after[key] - before[key] for key in after}
        received = delta["applied"] + delta["queue"]
        lost = delta["kernel"] + delta["queue"] + delta["decode"]
        if lost and first_loss is None:
            first_loss = rate
        elif first_loss is None:
            last_clean = rate
        if rate == TARGET_EVENT_RATE:
            record(Figure("events", f"{pattern}, {rate:,}/s offered for {EVENT_SECONDS:.0f} s",
                          f"{delta['applied']:,} applied, the last {drained:.2f} s after the "
                          f"load ({delta['applied'] / busy:,.0f}/s), {lost:,} lost",
                          f"{int(made):,} made ({int(made) / float(seconds):,.0f}/s)", None,
                          f">= {TARGET_EVENT_RATE:,}/s without loss", lost == 0))
        lines.append(
            f"{pattern}, {rate:>7,}/s asked: {int(made) / float(seconds):>9,.0f}/s made "
            f"({int(made):,}), {received:,} received, {delta['applied']:,} applied; lost: "
            f"kernel {delta['kernel']:,}, queue overflow {delta['queue']:,}, decode "
            f"{delta['decode']}; re-audits {delta['reaudits']}; all applied "
            f"{drained:.2f} s after the load ({delta['applied'] / busy:,.0f} applied/s)")
    clean = f"no loss up to {last_clean:,}/s" if last_clean else "loss at every rate tried"
    verdict = clean if first_loss is None else f"{clean}, loss from {first_loss:,}/s"
    lines.append(f"event throughput, {pattern} ({EVENT_SECONDS:.0f} s each): {verdict}  "
                 f"target: no loss at {TARGET_EVENT_RATE:,}/s")
    return lines


# ---------------------------------------------------------------- memory

def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def watch_rss() -> tuple[int, int]:
    """(VmRSS in KiB, nocr transitions) of `crwatch watch` once it is ready and seeded."""
    watch = subprocess.Popen([str(CRWATCH), "watch"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    try:
        first = watch.stdout.readline()  # the ready line: seeding is done by then
        if b'"ready"' not in first:
            raise RuntimeError(f"crwatch watch said {first!r}")
        lines: list[bytes] = []
        drainer = threading.Thread(target=lambda: lines.extend(watch.stdout), daemon=True)
        drainer.start()
        time.sleep(1.0)  # let the seeded transitions be written out
        rss = _rss_kib(watch.pid)
        nocr = sum(1 for line in lines if b'"state": "nocr"' in line)
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=30)
    return rss, nocr


def bench_memory() -> list[str]:
    alone, _ = watch_rss()
    extra = []
    try:
        with open("/dev/kvm", "rb", buffering=0) as kvm:
            for number in range(EXTRA_PROCESSES):
                holds_kvm = number % NOCR_EVERY == 0
                extra.append(subprocess.Popen(["sleep", "600"],
                                              stdin=kvm if holds_kvm else subprocess.DEVNULL))
        loaded, nocr = watch_rss()
    finally:
        for process in extra:
            process.kill()
        for process in extra:
            process.wait()
    per_process = (loaded - alone) / EXTRA_PROCESSES
    return [f"crwatch watch RSS: {alone / 1024:.1f} MiB on the bare host, {loaded / 1024:.1f} MiB "
            f"with {EXTRA_PROCESSES:,} extra processes ({nocr} of them nocr): "
            f"{per_process:.2f} KiB per extra process"]


# ---------------------------------------------------------------- time to ready

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def watch_ready() -> tuple[float, dict]:
    """Seconds from `crwatch watch`'s start to its ready line, and the phases that line
    says the start took."""
    started = time.monotonic()
    watch = subprocess.Popen([str(CRWATCH), "watch"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    try:
        first = json.loads(watch.stdout.readline())
        seconds = time.monotonic() - started
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=30)
    return seconds, first["startup_seconds"]


def serve_ready(workdir: Path) -> float:
    """Seconds from `crwatch serve`'s start to its first /healthz answer."""
    port = _free_port()
    started = time.monotonic()
    serve = subprocess.Popen([str(CRWATCH), "serve", "--port", str(port), "--db",
                              str(workdir / f"history-{port}.sqlite3")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                    return time.monotonic() - started
            except OSError:
                if serve.poll() is not None or time.monotonic() - started > DRAIN_TIMEOUT:
                    raise RuntimeError("crwatch serve did not start") from None
                time.sleep(0.05)
    finally:
        serve.terminate()
        serve.wait(timeout=30)


def bench_ready(workdir: Path) -> list[str]:
    extra = [subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
             for _ in range(READY_EXTRA_PROCESSES)]
    watches: list[float] = []
    phases: dict[str, list[float]] = {}
    serves: list[float] = []
    try:
        for _ in range(READY_REPETITIONS):
            seconds, startup = watch_ready()
            watches.append(seconds)
            for phase, took in startup.items():
                phases.setdefault(phase, []).append(took)
            serves.append(serve_ready(workdir))
    finally:
        for process in extra:
            process.kill()
        for process in extra:
            process.wait()
    probes, seeding = statistics.median(phases["probes"]), statistics.median(phases["seeding"])
    within_start = (f"its parts in the same starts: compiling and attaching the probes "
                    f"{probes:.2f} s, seeding {seeding:.2f} s")
    lines = []
    for command, measured in (("crwatch watch, to its ready line", watches),
                              ("crwatch serve, to its first /healthz answer", serves)):
        median = statistics.median(measured)
        figure = record(Figure("ready", f"{command}, {READY_EXTRA_PROCESSES} extra processes",
                               f"{median:.2f} s", within_start, None,
                               f"<= {TARGET_READY_SECONDS:.0f} s", median <= TARGET_READY_SECONDS))
        lines.append(f"{figure.measure}: {', '.join(f'{s:.2f}' for s in measured)} s "
                     f"(median {median:.2f}; {within_start})")
    return lines


PARTS = ("micro", "workload", "throughput", "memory", "ready")


def main(parts: list[str] | None = None, loops: list[str] | None = None) -> None:
    """Run the named parts (default: all of PARTS); `loops`: the micro part's loops (default:
    all of MICRO_CALLS)."""
    if os.geteuid() != 0:
        print("tracker bench skipped: loading eBPF programs needs root", flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="crwatch-bench-") as scratch:
        workdir = Path(scratch)
        binary = build(workdir)
        benches = {"micro": lambda: bench_micro(binary, workdir, loops),
                   "workload": lambda: bench_workload(binary, workdir),
                   "throughput": lambda: bench_throughput(binary), "memory": bench_memory,
                   "ready": lambda: bench_ready(workdir)}
        for part in parts or PARTS:
            for line in benches[part]():
                print(line, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.tracker_bench")
    parser.add_argument("parts", nargs="*", metavar="|".join(PARTS),
                        help="the parts to run (default: all)")
    parser.add_argument("--loop", action="append", choices=list(MICRO_CALLS),
                        help="micro: run this loop only (repeatable)")
    arguments = parser.parse_args()
    if unknown := set(arguments.parts) - set(PARTS):
        parser.error(f"no part named {', '.join(sorted(unknown))}")
    main(arguments.parts, arguments.loop)
