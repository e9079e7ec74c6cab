"""`crwatch check --json PID` against `lsof -p PID`: the whole command as a user runs it.

Each run starts a new process, as a user's shell does, on a host with 500 extra
sleeping processes. The command is the compiled front end set-up installs as
`crwatch` (api/cli/launcher.c, built here by scripts/build-launcher.sh), measured
both ways in turns with lsof: with a service running (probes attached) that it asks
on its socket, and without one, where it runs the Python command line, which
audits in-process. The subjects: a sleeping process, and processes holding
1,200 and 12,500 mixed fds (files, pipes, socketpairs, eventfds, TCP listeners).
Each subject holds the write end of a pipe whose read end this bench holds, as
a process started in a shell pipeline or by a supervisor holds its stdout: the
end outside its tree is what a check names. Prints the median of 5 runs of each
command, run in turns, and their ratios (target: at most 1.0); then the floors
any Python check pays (the interpreter's start, the command's imports) and what
one CRIU run of the environment's detection costs, and the kernel's part: the
subject's fd table read by the compiled walk in this process. CRIU's answers about itself
are kept across runs (tracker.criu.facts_cache): the runs measured find them
kept, as every check does after the first since boot or since CRIU changed; the
sleeping case is also measured with them asked afresh ($CRWATCH_REFRESH_CRIU=1,
which the front end leaves to the in-process audit).
Each figure is recorded for `make bench`'s table (bench.figures).

`--quick` takes 3 runs of each command instead of 5; `--case sleeping|1200|12500`
(repeatable) measures only those subjects.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.service_socket import SOCKET_VARIABLE
from bench.figures import Figure, record, within
from tests.support import launchers
from tests.support.subjects import subject
from tracker import procfs
from tracker.criu.facts_cache import REFRESH_VARIABLE
from tracker.criu.runner import find_criu

ROOT = Path(__file__).resolve().parents[1]
CRWATCH_PYTHON = ROOT / ".venv" / "bin" / "python"
SERVICE_START_SECONDS = 120
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

CASES = {
    "sleeping": ("sleeping process", SLEEPING, {}),
    "1200": ("1,200 mixed fds", MIXED_FDS, {"FD_COUNT": "1200"}),
    "12500": ("12,500 mixed fds", MIXED_FDS, {"FD_COUNT": "12500"}),
}


def run_ms(command: list[str], env: dict) -> float:
    """The wall time of one run of the command, a new process."""
    start = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    return (time.perf_counter() - start) * 1000


def medians_ms(commands: list[tuple[list[str], dict]], runs: int) -> list[float]:
    """The medians of `runs` runs of each (command, environment), run in turns so that all
    meet the same load on a shared machine."""
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for taken, (command, env) in zip(times, commands):
            taken.append(run_ms(command, env))
    return [statistics.median(taken) for taken in times]


def installed_env(pycache: str) -> dict:
    """crwatch's code from this checkout, its bytecode cached as an installed package's is
    (the tests' environment turns the cache off, which would time the compiler)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONPYCACHEPREFIX=pycache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def bench_case(name: str, code: str, env: dict, program: Path, service_socket: Path,
               command_env: dict, runs: int, afresh: bool) -> float:
    """Records crwatch check, answered by the service and audited in-process, against
    lsof -p on one subject (and, when `afresh`, in-process with CRIU's answers asked
    afresh); returns lsof's median."""
    read_end, write_end = os.pipe()
    served_env = dict(command_env, **{SOCKET_VARIABLE: str(service_socket)})
    alone_env = dict(command_env, **{SOCKET_VARIABLE: str(service_socket.with_name("none"))})
    try:
        with subject(code, env=env, pass_fds=(write_end,)) as running:
            fds = psutil.Process(running.pid).num_fds()
            check = [str(program), "check", "--json", str(running.pid)]
            lsof = ["lsof", "-p", str(running.pid)]
            run_ms(check, alone_env)      # caches the bytecode and CRIU's answers
            answered = subprocess.run(check, env=served_env, capture_output=True, text=True)
            if '"answered_by": "service"' not in answered.stdout:
                raise SystemExit(f"the service did not answer: {answered.stderr}")
            served, alone, peer = medians_ms([(check, served_env), (check, alone_env),
                                              (lsof, command_env)], runs)
            walk = table_read_ms(running.pid, runs)
            if afresh:
                asking = dict(alone_env, **{REFRESH_VARIABLE: "1"})
                cold, cold_peer = medians_ms([(check, asking), (lsof, command_env)], runs)
    finally:
        os.close(read_end)
        os.close(write_end)
    measure = f"`crwatch check --json` vs `lsof -p`, {name} ({fds:,} fds)"
    record(Figure("check", f"{measure}, a service running (answered on its socket)",
                  f"{served:.1f} ms", f"lsof -p {peer:.1f} ms", served / peer,
                  f"<= x{TARGET_RATIO}", within(served / peer, TARGET_RATIO)))
    record(Figure("check", f"{measure}, no service (audited in-process)", f"{alone:.1f} ms",
                  f"lsof -p {peer:.1f} ms", alone / peer, f"<= x{TARGET_RATIO}",
                  within(alone / peer, TARGET_RATIO)))
    if walk is not None:
        record(Figure("check", f"floor: the fd table as the compiled walk reads it, in-process, "
                               f"{name}", f"{walk:.2f} ms", f"lsof -p {peer:.1f} ms", walk / peer))
    if afresh:
        record(Figure("check", f"{measure}, no service, CRIU's answers asked afresh (first "
                               "check since boot or since CRIU changed)", f"{cold:.1f} ms",
                      f"lsof -p {cold_peer:.1f} ms", cold / cold_peer))
    return peer


@contextmanager
def service(scratch: Path, command_env: dict) -> Iterator[Path]:
    """A real `crwatch serve` with its probes, as a host runs it; yields its socket."""
    sock = scratch / "service.sock"
    with socket.socket() as probe:  # a free port, for the service to bind
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serving = subprocess.Popen([str(CRWATCH_PYTHON), "-m", "api.cli", "serve", "--port", str(port),
                                "--db", str(scratch / "history.sqlite3"), "--socket", str(sock)],
                               env=command_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + SERVICE_START_SECONDS
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).close()
                break
            except OSError:
                if serving.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"crwatch serve did not start: {serving.stderr.read()}") \
                        from None
                time.sleep(0.1)
        yield sock
    finally:
        serving.terminate()
        serving.wait(timeout=30)


def table_read_ms(pid: int, runs: int) -> float | None:
    """The median time the compiled walk (tracker/fdwalk.c) takes to read the subject's fd
    table in this process: the kernel's part of any audit (None: not built)."""
    if procfs.compiled_walk is None:
        return None
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        procfs.compiled_walk.read_fds(f"/proc/{pid}/fd", f"/proc/{pid}/fdinfo")
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def floors(command_env: dict, runs: int, lsof_ms: float | None) -> None:
    """Records what any Python `crwatch check` pays before it reads a single fd: the
    interpreter's start, then the check command's imports; and one CRIU run of the
    environment's detection (when CRIU's answers are not kept). Each is set against lsof
    on the sleeping process, when measured."""
    python = str(CRWATCH_PYTHON)
    criu = find_criu()
    commands = {"python -I -c pass": [python, "-I", "-c", "pass"],
                "python -c 'import api.cli.main, api.cli.check'":
                    [python, "-c", "import api.cli.main, api.cli.check"]}
    if criu is not None:
        commands["criu check --feature pidfd_store"] = [criu.path, "check", "--feature",
                                                        "pidfd_store"]
    for name, command in commands.items():
        run_ms(command, command_env)
        ms = statistics.median(run_ms(command, command_env) for _ in range(runs))
        if lsof_ms is None:
            record(Figure("check", f"floor: `{name}`", f"{ms:.1f} ms", "", None))
        else:
            record(Figure("check", f"floor: `{name}`", f"{ms:.1f} ms",
                          f"lsof -p, sleeping process {lsof_ms:.1f} ms", ms / lsof_ms))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs of each command, not 5")
    parser.add_argument("--case", action="append", choices=sorted(CASES),
                        help="measure only this subject (repeatable; default: all)")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else RUNS
    extra = [subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(EXTRA_PROCESSES)]
    try:
        with tempfile.TemporaryDirectory(prefix="crwatch-bench-") as scratch:
            scratch = Path(scratch)
            command_env = installed_env(str(scratch / "pycache"))
            program = launchers.build(scratch)
            lsof_sleeping = None
            with service(scratch, command_env) as service_socket:
                for case in args.case or list(CASES):
                    name, code, env = CASES[case]
                    peer = bench_case(name, code, env, program, service_socket, command_env,
                                      runs, afresh=case == "sleeping")
                    if case == "sleeping":
                        lsof_sleeping = peer
            floors(command_env, runs, lsof_sleeping)
    finally:
        for process in extra:
            process.kill()
        for process in extra:
            process.wait()


if __name__ == "__main__":
    main()
