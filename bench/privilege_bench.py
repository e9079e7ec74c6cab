"""What least privilege costs a request: identifying the caller (one sock_diag lookup of
its connection), finding a process's owner (/proc reads), and redacting a document for a
restricted caller. Per-item costs, never assertions: these machines are noisy."""
from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.service.peer import tcp_peer_uid
from api.service.privacy import Viewer, owner, shown
from tracker.checks.catalogue import catalogue
from tracker.procfs import Proc

ROUNDS = 2000
ROWS = 1000
TREE = 50


def _per_call_us(call, rounds: int = ROUNDS) -> float:
    began = time.perf_counter()
    for _ in range(rounds):
        call()
    return (time.perf_counter() - began) / rounds * 1e6


def _reason(pid: int, fd: int) -> dict:
    return {"code": "lock.flock", "severity": "option", "message": f"fd {fd} (/root/x y): flock",
            "remedy": "release it", "option": "--file-locks", "option_value": None, "pid": pid,
            "tid": None, "fd": fd, "source": "audit", "since": None, "environment_fact": None}


def main() -> None:
    catalogue()  # built once when the service starts
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        server = listener.getsockname()
        with socket.create_connection(server):
            accepted, client = listener.accept()
            cost = _per_call_us(lambda: tcp_peer_uid(client, server))
            print(f"caller identified (sock_diag lookup): {cost:.1f} µs")
            accepted.close()
    me, start = os.getpid(), Proc(os.getpid()).stat.start_time
    cost = _per_call_us(lambda: owner(me, start))
    print(f"owner of a process (/proc/PID/fd, status, stat): {cost:.1f} µs")
    rows = {"schema": "crwatch.processes/1", "processes": [
        {"pid": pid, "ppid": 1, "start_time": 1.0, "comm": "x", "cgroup": "/", "verdict": "ok",
         "codes": [], "tracked": None} for pid in range(2, ROWS + 2)]}
    restricted = Viewer(65534)
    print(f"list of {ROWS} rows for a restricted caller: "
          f"{_per_call_us(lambda: shown(rows, restricted), 50) / 1000:.2f} ms")
    tree = {"schema": "crwatch.process/1", "pid": me, "start_time": start,
            "processes": [{"pid": me, "start_time": start, "comm": "x"}],
            "reasons": [_reason(me, fd) for fd in range(TREE)], "cmdline": ["x"]}
    print(f"verdict with {TREE} reasons for a restricted caller (one owner read): "
          f"{_per_call_us(lambda: shown(tree, restricted), 200):.0f} µs")


if __name__ == "__main__":
    main()
