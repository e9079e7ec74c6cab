"""`crwatch check --json PID` against `lsof -p PID`: the whole command as a user runs it.

Each run starts a new process, as a user's shell does, on a host with 500 extra
sleeping processes. The subjects: a sleeping process, and processes holding
1,200 and 12,500 mixed fds (files, pipes, socketpairs, eventfds, TCP listeners).
Each subject holds the write end of a pipe whose read end this bench holds, as
a process started in a shell pipeline or by a supervisor holds its stdout: the
end outside its tree is what a check names. Prints the median of 5 runs of each
command, run in turns, and their ratio (target: at most 1.0); then the floors
any Python check pays (the interpreter's start, the command's imports) and what
one CRIU run of the environment's detection costs.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.subjects import subject
from tracker.criu.runner import find_criu

ROOT = Path(__file__).resolve().parents[1]
CRWATCH = ROOT / ".venv" / "bin" / "crwatch"
EXTRA_PROCESSES = 500
RUNS = 5
TARGET_RATIO = 1.0

SLEEPING = "ready(); hold()"

# Cycles through files, pipes, socketpairs, eventfds and TCP listeners.
MIXED_FDS = """
import resource, os, socket
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
count = int(os.environ["FD_COUNT"])
held = []
def listener():
    sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(8)
    return [sock]
makers = [
    lambda: [open("/etc/hostname")],
    lambda: [os.fdopen(fd) for fd in os.pipe()],
    lambda: list(socket.socketpair()),
    lambda: [os.eventfd(0)],
    listener,
]
while len(held) < count:
    held.extend(makers[len(held) % len(makers)]())
ready(str(len(held))); hold()
"""

CASES = (
    ("sleeping process", SLEEPING, {}),
    ("1,200 mixed fds", MIXED_FDS, {"FD_COUNT": "1200"}),
    ("12,500 mixed fds", MIXED_FDS, {"FD_COUNT": "12500"}),
)


def run_ms(command: list[str], env: dict) -> float:
    """The wall time of one run of the command, a new process."""
    start = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    return (time.perf_counter() - start) * 1000


def medians_ms(ours: list[str], peer: list[str], env: dict) -> tuple[float, float]:
    """The medians of RUNS runs of each command, run in turns so that both meet the same
    load on a shared machine."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(RUNS):
        times[0].append(run_ms(ours, env))
        times[1].append(run_ms(peer, env))
    return statistics.median(times[0]), statistics.median(times[1])


def installed_env(pycache: str) -> dict:
    """crwatch's code from this checkout, its bytecode cached as an installed package's is
    (the tests' environment turns the cache off, which would time the compiler)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONPYCACHEPREFIX=pycache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def bench_case(name: str, code: str, env: dict, command_env: dict) -> str:
    read_end, write_end = os.pipe()
    try:
        with subject(code, env=env, pass_fds=(write_end,)) as running:
            fds = psutil.Process(running.pid).num_fds()
            check = [str(CRWATCH), "check", "--json", str(running.pid)]
            run_ms(check, command_env)      # caches the bytecode
            ours, peer = medians_ms(check, ["lsof", "-p", str(running.pid)], command_env)
    finally:
        os.close(read_end)
        os.close(write_end)
    return (f"{name:<18} ({fds:>6} fds): crwatch check {ours:7.1f} ms  lsof -p {peer:7.1f} ms  "
            f"ratio {ours / peer:5.2f} (target <= {TARGET_RATIO})")


def floors(command_env: dict) -> list[str]:
    """What any Python `crwatch check` pays before it reads a single fd: the interpreter's
    start, then the check command's imports; and one CRIU run of the environment's
    detection (four run in parallel, while the audit runs)."""
    python = str(CRWATCH.with_name("python"))
    criu = find_criu()
    commands = {"python -I -c pass": [python, "-I", "-c", "pass"],
                "python -c 'import api.cli.check'": [python, "-c", "import api.cli.check"]}
    if criu is not None:
        commands["criu check --feature pidfd_store"] = [criu.path, "check", "--feature",
                                                        "pidfd_store"]
    lines = []
    for name, command in commands.items():
        run_ms(command, command_env)
        ms = statistics.median(run_ms(command, command_env) for _ in range(RUNS))
        lines.append(f"floor: {name:<34} {ms:7.1f} ms")
    return lines


def main() -> None:
    extra = [subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(EXTRA_PROCESSES)]
    try:
        with tempfile.TemporaryDirectory(prefix="crwatch-bench-pyc-") as pycache:
            for case in CASES:
                print(bench_case(*case, installed_env(pycache)), flush=True)
            for line in floors(installed_env(pycache)):
                print(line, flush=True)
    finally:
        for process in extra:
            process.kill()
        for process in extra:
            process.wait()


if __name__ == "__main__":
    main()
