"""Figures measured next to their peer or floor in the same run, gathered into one table.

Each benchmark calls `record` for every figure it wants in `make bench`'s table: the
line is printed at once (so a benchmark run alone shows it too) and kept, and
`bench/run.py` writes everything kept with `write_table`. A figure names its peer or
floor in words ("lsof -p", "empty programs", "tracker off", "plain criu dump"), since a
ratio means nothing without what it divides by.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    section: str            # the benchmark's name: "check", "probes", "service"...
    measure: str            # what was measured, with its case
    ours: str               # crwatch's figure with its unit: "157 ms", "537 rps"
    peer: str               # the peer or floor, named, with its figure: "lsof -p 12 ms"
    ratio: float | None     # ours / peer where they divide (lower is better), else None
    target: str = ""        # the target as written in the issue: "<= x1.0", ">= 500 rps"
    met: bool | None = None # None: no target, or the target is not a number to compare

    def line(self) -> str:
        ratio = "" if self.ratio is None else f"  x{self.ratio:.2f}"
        verdict = {True: "  met", False: "  NOT met", None: ""}[self.met]
        target = f"  (target {self.target})" if self.target else ""
        return f"[{self.section}] {self.measure}: {self.ours} vs {self.peer}{ratio}{target}{verdict}"


RECORDED: list[Figure] = []


def record(figure: Figure) -> Figure:
    RECORDED.append(figure)
    print(figure.line(), flush=True)
    return figure


def within(ratio: float, limit: float) -> bool:
    """A ratio meets `<= x{limit}` (the issue's targets are upper bounds on ratios)."""
    return ratio <= limit


def markdown(figures: list[Figure]) -> str:
    rows = ["| section | measure | crwatch | peer / floor (same run) | ratio | target | met |",
            "|---|---|---|---|---|---|---|"]
    for figure in figures:
        ratio = "" if figure.ratio is None else f"x{figure.ratio:.2f}"
        met = {True: "yes", False: "**no**", None: ""}[figure.met]
        rows.append(f"| {figure.section} | {figure.measure} | {figure.ours} | {figure.peer} "
                    f"| {ratio} | {figure.target} | {met} |")
    return "\n".join(rows)


def write_table(path: Path, figures: list[Figure]) -> None:
    uname = platform.uname()
    header = ("# Benchmark table\n\n"
              "Written by `make bench` (`bench/run.py`); every figure is measured next to its "
              "peer or floor in the same run. Medians; the machine's load spreads them, so "
              "read ratios rather than absolute times. How each is measured: "
              "[benchmarks.md](benchmarks.md).\n\n"
              f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
              f"kernel {uname.release}, {os.cpu_count()} cores, "
              f"load {os.getloadavg()[0]:.1f}.\n\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + markdown(figures) + "\n")

