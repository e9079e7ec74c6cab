"""One TCP socket classified as the live tracker classifies it after a connect: asked of
sock_diag alone, next to the table dumps it replaced, on a host with OTHER_SOCKETS more TCP sockets.

Every TCP connect on the host is a probe event the live table judges
(tracker.live.reads.classify_fd): that one fd's socket is looked up in its
namespace. Ours asks sock_diag for that socket alone (tracker.checks.sockets.exact);
the peer is the same classification through the table dumps (unix, then TCP), as
every event paid before, measured in the same run, in turns. Printed: medians of
each, their ratio, and the crossover of an audit (how many sockets asked alone
cost one dump of the unix and TCP tables), which EXACT_AT_MOST follows. The
classify-one-fd figure is recorded for `make bench`'s table (bench.figures).
The crossover is measured on the host as it is too. `--quick` takes fewer rounds.
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import Figure, record
from tracker.checks import fd_owners
from tracker.checks.sockets import exact, tables
from tracker.live import reads
from tracker.procfs import OpenFd, Proc

OTHER_SOCKETS = 1000     # connected loopback pairs and listeners, on top of the host's own
ROUNDS, QUICK_ROUNDS = 300, 60


def other_sockets(stack: ExitStack, count: int) -> None:
    """count TCP sockets held by this process: listeners, each with one connection both ways."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count + 256), max(hard, count + 256)))
    while count > 0:
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        stack.enter_context(socket.create_connection(listener.getsockname()))
        stack.enter_context(listener.accept()[0])
        count -= 3


def classify_through_tables(proc: Proc, fd: int) -> None:
    """reads.classify_fd as it was: the socket found in its namespace's table dumps."""
    open_fd = OpenFd(proc, fd, proc.readlink(f"fd/{fd}"))
    ctx = reads.one_process_context(proc)
    ctx.tree_fds[proc.pid] = [open_fd]
    ctx.table(tables.ASKED_ALONE, lambda: False)
    list(fd_owners.check_fd(ctx, proc, open_fd))


def timed(action, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rounds = QUICK_ROUNDS if args.quick else ROUNDS
    me = Proc(os.getpid())
    crossover(me, rounds, "the host as it is")
    with ExitStack() as stack:
        other_sockets(stack, OTHER_SOCKETS)
        server = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        connected = stack.enter_context(socket.create_connection(server.getsockname()))
        fd = connected.fileno()
        judged = reads.classify_fd(me, fd)
        assert judged is not None and any(f.code == "socket.tcp.established" for f in judged[1])
        alone: list[float] = []
        dumped: list[float] = []
        for _ in range(rounds):      # in turns, so the host's load spoils both alike
            alone += timed(lambda: reads.classify_fd(me, fd), 1)
            dumped += timed(lambda: classify_through_tables(me, fd), 1)
        tcp = host_tcp_sockets()
        ours, peer = statistics.median(alone) * 1e3, statistics.median(dumped) * 1e3
        record(Figure("sockets", f"classify one TCP fd after a connect (live tracker), ~{tcp} TCP "
                      f"sockets on the host", f"{ours:.3f} ms", f"the table dumps {peer:.3f} ms",
                      ours / peer, "", None))
        crossover(me, rounds, f"{OTHER_SOCKETS} more TCP sockets")


def crossover(me: Proc, rounds: int, host: str) -> None:
    """How many sockets asked alone cost what the unix and TCP dumps cost, one TCP socket found."""
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as connected:
        fd, inode = connected.fileno(), os.fstat(connected.fileno()).st_ino
        space = me.namespace("net")
        netns = exact.namespace_inode(space)
        lookups, dumps = [], []
        for _ in range(rounds):
            lookups += timed(lambda: exact.lookup(me.pid, fd, inode, netns, None), 1)
            dumps += timed(lambda: tables.Namespace(space).find(me, inode), 1)
    lookup, dump = statistics.median(lookups) * 1e3, statistics.median(dumps) * 1e3
    print(f"{host} (~{host_tcp_sockets()} TCP sockets): one socket asked alone {lookup:.3f} ms, "
          f"the unix and TCP dumps {dump:.3f} ms: crossover at {dump / lookup:.0f} sockets "
          f"(asked alone up to {exact.EXACT_AT_MOST})", flush=True)


def host_tcp_sockets() -> int:
    return sum(len(Path(f"/proc/net/{name}").read_text().splitlines()) - 1 for name in ("tcp", "tcp6"))


if __name__ == "__main__":
    main(sys.argv[1:])
