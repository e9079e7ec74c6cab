"""Audit cost: one process with 10 / 1,000 / 10,000 fds of mixed kinds, one with 10,000
distinct files, and the whole host.

Prints per-item costs and their ratio to the targets (10,000 fds within
150 ms; the whole host within 2 ms per process). Figures, not assertions:
these machines are noisy, so each case reports the median of several runs.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.subjects import subject
from tracker.audit import audit
from tracker.procfs import AccessDenied, ProcessGone

TARGET_10K_FDS_MS = 150.0
TARGET_PER_PROCESS_MS = 2.0
EXTRA_PROCESSES = 500
RUNS = 7

# Cycles through the kinds of fd a real service holds: files, pipes, unix
# and TCP sockets, eventfds, epoll, device nodes, directories.
MIXED_FDS = """
import resource, os, socket, select
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
count = int(os.environ["FD_COUNT"])
held = []
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(4096)
def tcp_pair():
    client = socket.create_connection(listener.getsockname())
    return [client, listener.accept()[0]]
makers = [
    lambda: [open("/etc/hostname")],
    lambda: [os.fdopen(fd) for fd in os.pipe()],
    lambda: list(socket.socketpair()),
    lambda: [os.eventfd(0)],
    lambda: [select.epoll()],
    lambda: [open("/dev/null")],
    lambda: [os.open("/tmp", os.O_RDONLY)],
    tcp_pair,
]
while len(held) < count:
    held.extend(makers[len(held) % len(makers)]())
ready(str(len(held))); hold()
"""


def median_ms(action, runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench_fds() -> list[str]:
    lines = []
    for count in (10, 1_000, 10_000):
        with subject(MIXED_FDS, env={"FD_COUNT": str(count)}) as holder:
            fds = psutil.Process(holder.pid).num_fds()
            ms = median_ms(lambda: audit(holder.pid))
        line = f"audit of one process with {fds:>6} fds: {ms:8.2f} ms  ({ms * 1000 / fds:6.2f} us/fd)"
        if count == 10_000:
            line += f"  target {TARGET_10K_FDS_MS:.0f} ms, ratio {ms / TARGET_10K_FDS_MS:.2f}"
        lines.append(line)
    return lines


# Every file a different one: each is looked up by its own mount id and path
# (the mixed case repeats a few files, which an audit judges once).
DISTINCT_FILES = """
import resource, os
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
directory = os.environ["FILES_DIR"]
held = [open(os.path.join(directory, name)) for name in sorted(os.listdir(directory))]
ready(str(len(held))); hold()
"""
DISTINCT_COUNT = 10_000


def bench_distinct_files() -> list[str]:
    with tempfile.TemporaryDirectory(prefix="crwatch-bench-") as directory:
        for number in range(DISTINCT_COUNT):
            Path(directory, f"file{number}").touch()
        with subject(DISTINCT_FILES, env={"FILES_DIR": directory}) as holder:
            fds = psutil.Process(holder.pid).num_fds()
            ms = median_ms(lambda: audit(holder.pid))
    return [f"audit of one process with {fds:>6} fds on distinct files: {ms:8.2f} ms  "
            f"({ms * 1000 / fds:6.2f} us/fd)  target {TARGET_10K_FDS_MS:.0f} ms, "
            f"ratio {ms / TARGET_10K_FDS_MS:.2f}"]


def audit_host() -> int:
    audited = 0
    for pid in psutil.pids():
        try:
            audit(pid)
            audited += 1
        except (ProcessGone, AccessDenied):
            continue
    return audited


def bench_host() -> list[str]:
    # stdio on /dev/null: a pipe inherited from whoever runs the bench (`| tail`) would
    # make every audit look for that pipe's holders on the whole host
    extra = [subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(EXTRA_PROCESSES)]
    try:
        audited = audit_host()
        ms = median_ms(audit_host, runs=3)
    finally:
        for process in extra:
            process.kill()
        for process in extra:
            process.wait()
    per_process = ms / audited
    return [f"audit of every process on the host ({audited} processes, {EXTRA_PROCESSES} extra): "
            f"{ms:8.1f} ms  ({per_process:.3f} ms/process)  target {TARGET_PER_PROCESS_MS} ms, "
            f"ratio {per_process / TARGET_PER_PROCESS_MS:.2f}"]


def main() -> None:
    for line in bench_fds() + bench_distinct_files() + bench_host():
        print(line, flush=True)


if __name__ == "__main__":
    main()
