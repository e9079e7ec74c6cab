"""Cost of sharing: a parent and N children, N = 10 and 2,000, that share a file, a pipe
and a unix socket pair: the children hold the pipe's write end and one socket, the
parent the pipe's read end and the other socket.

Prints the audit time of the parent's tree, of one child (whose pipe's other end is
outside its tree), and of the parent alone (whose socket's peer the children hold),
each one's ratio between the two sizes (1.0: no cost per peer), and how many rows of the
process list are audited per second with 2,000 sharing children: with a walk of /proc
per row against one index shared by the pass, and for a whole first pass. Figures, not
assertions.
"""
from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.service.settings import Settings
from api.service.state import Service
from bench.audit_bench import median_ms
from tests.support.subjects import subject
from tracker.audit import audit
from tracker.holders import PASS_MAX_AGE_SECONDS, HostHolders

SIZES = (10, 2_000)
ROW_SAMPLE = 50

# One parent forks the children, which keep what they share and sleep.
SHARING_CHILDREN = """
count = int(os.environ["CHILDREN"])
read_end, write_end = os.pipe()
kept_end, shared_end = socket.socketpair()
shared_file = open("/etc/hostname")
ready_fd = int(os.environ["SUBJECT_READY_FD"])
kids = []
for _ in range(count):
    kid = os.fork()
    if kid == 0:
        os.close(read_end); kept_end.close(); os.close(ready_fd)
        while True:
            signal.pause()
    kids.append(kid)
os.close(write_end); shared_end.close()
ready(" ".join(map(str, kids))); hold()
"""



def bench_audits() -> list[str]:
    lines, cost = [], {}
    for count in SIZES:
        with subject(SHARING_CHILDREN, env={"CHILDREN": str(count)}) as parent:
            child = int(parent.note.split()[0])
            cost[count] = (median_ms(partial(audit, parent.pid, tree=True), runs=3) / (count + 1),
                           median_ms(partial(audit, child)),
                           median_ms(partial(audit, parent.pid)))
        lines.append(f"{count:>5} sharing children: audit of the parent's tree "
                     f"{cost[count][0]:.3f} ms/process, of one child {cost[count][1]:7.2f} ms, "
                     f"of the parent alone {cost[count][2]:7.2f} ms")
    few, many = SIZES
    tree, child, alone = (cost[many][n] / cost[few][n] for n in range(3))
    lines.append(f"per-peer cost, {many} vs {few} children (1.0: none): tree audit per process "
                 f"x{tree:.2f}, one child's audit x{child:.2f}, the parent alone x{alone:.2f}")
    return lines


def bench_list_refresh() -> list[str]:
    count = SIZES[-1]
    with subject(SHARING_CHILDREN, env={"CHILDREN": str(count)}) as parent:
        service = Service(Settings(probes=False))
        sample = sorted(int(pid) for pid in parent.note.split())[:ROW_SAMPLE]
        # The rows of one pass, each walking /proc for itself (as before the pass shared
        # an index), then sharing one index as a pass does.
        walking = rows_per_second(service, sample, lambda: None)
        sharing = rows_per_second(service, sample,
                                  lambda: HostHolders(max_age=PASS_MAX_AGE_SECONDS))
        start = time.perf_counter()
        service.rows.refresh()
        seconds = time.perf_counter() - start
        rows = len(service.rows.snapshot())
    return [f"process list rows of {ROW_SAMPLE} of {count} sharing children: {walking:.0f} rows/s "
            f"with a walk of /proc per row, {sharing:.0f} rows/s sharing the pass's index "
            f"(x{sharing / walking:.1f})",
            f"process list, a whole first pass with {count} sharing children: {rows} rows in "
            f"{seconds:.1f} s ({rows / seconds:.0f} rows/s)"]


def rows_per_second(service: Service, pids: list[int], index) -> float:
    holders = index()
    start = time.perf_counter()
    for pid in pids:
        service.row(pid, holders)
    return len(pids) / (time.perf_counter() - start)


def main() -> None:
    for line in bench_audits() + bench_list_refresh():
        print(line, flush=True)


if __name__ == "__main__":
    main()
