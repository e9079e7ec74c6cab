"""Run every benchmark, print its figures, and write the table of them (`make bench`).

The table, docs/bench-table.md, holds every figure a benchmark `record`ed next to its
peer or floor; the README links it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import (
    audit_bench,
    check_bench,
    figures,
    freeze_bench,
    fuzz_criu,
    gate_bench,
    privilege_bench,
    service_bench,
    serving_bench,
    sharing_bench,
    sockets_bench,
    tracker_bench,
)

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "bench-table.md"
FUZZ_OUT = ROOT / "build" / "fuzz-bench"


def record_fuzz(summary: dict) -> None:
    """The fuzzer's peer is the real CRIU itself: every composition dumped by both."""
    unsafe = summary["unsafe"]
    figures.record(figures.Figure(
        "fuzz", f"{summary['compositions']} generated process trees (seed {summary['seed']})",
        f"{summary['agree']} agree, {unsafe} unsafe, {summary['overcautious']} overcautious, "
        f"{summary['unknown']} unknown", "the real criu dump of each", None, "0 unsafe",
        unsafe == 0))


if __name__ == "__main__":
    print("== audit ==", flush=True)
    audit_bench.main()
    print("== crwatch check against lsof ==", flush=True)
    check_bench.main()
    print("== sharing ==", flush=True)
    sharing_bench.main()
    print("== tracker ==", flush=True)
    tracker_bench.main()
    print("== one socket asked alone ==", flush=True)
    sockets_bench.main([])
    print("== service ==", flush=True)
    service_bench.main()
    print("== fair to every client ==", flush=True)
    serving_bench.main()
    print("== who sees what ==", flush=True)
    privilege_bench.main()
    print("== gate ==", flush=True)
    gate_bench.main()
    freeze_bench.main()
    print("== differential fuzzer against the real CRIU ==", flush=True)
    fuzz_criu.main(["--compositions", "60", "--seed", "1", "--out", str(FUZZ_OUT)])
    record_fuzz(json.loads((FUZZ_OUT / "summary.json").read_text()))
    figures.write_table(TABLE, figures.RECORDED)
    print(f"table of {len(figures.RECORDED)} figures: {TABLE}", flush=True)
