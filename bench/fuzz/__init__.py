"""Resource generators for the differential fuzzer (bench/fuzz_criu.py).

A generator makes one resource state inside a subject process
(bench/fuzz_subject.py): `build(ctx, **params)` runs in that process, and
`draw(rng, place)` picks its parameters from the composition's seed on the
fuzzer's side. Generators are grouped by family, one module per family, and
register themselves here on import. Everything here is standard library and
ctypes only: the subject imports it too.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

# When, in a process's build, a generator runs (in this order):
#   build       before the process forks its children (children inherit what it made)
#   by_parent   in the parent, once this process has reported it is built (stops, ptrace)
#   privileges  after the children are built and before threads start (user ns, uid change)
#   threads     last thing before the report (threads make forking unsafe)
#   final       instead of the plain report: the process reports, then blocks for good
STAGES = ("build", "by_parent", "privileges", "threads", "final")


@dataclass(frozen=True)
class Place:
    """Where a process sits in the composed tree, for draws and constraints."""

    index: int
    is_root: bool
    has_children: bool


@dataclass(frozen=True)
class Generator:
    name: str
    family: str
    weight: float
    build: Callable
    draw: Callable[[random.Random, Place], dict]
    stage: str = "build"
    fits: Callable[[Place], bool] = lambda place: True
    exclusive: bool = False          # at most one per process (final stages, vfork, ...)
    once: bool = False               # the kernel allows it once per process
    single_threaded: bool = False    # needs a process without threads
    threaded: bool = False           # may start threads in the process (besides the threads stage)
    conflicts: tuple[str, ...] = ()  # generators one process cannot also apply
    known: str | None = None         # the change that fixes its known disagreement
    doc: str = field(default="", compare=False)


GENERATORS: dict[str, Generator] = {}


def generator(family: str, *, weight: float = 1.0, draw=None, stage: str = "build",
              fits=None, exclusive: bool = False, once: bool = False,
              single_threaded: bool = False, threaded: bool = False,
              conflicts: tuple[str, ...] = (), known: str | None = None):
    """Register the decorated function as a generator named after it."""
    assert stage in STAGES, stage

    def register(build):
        name = build.__name__
        assert name not in GENERATORS, name
        GENERATORS[name] = Generator(
            name, family, weight, build, draw or (lambda rng, place: {}), stage,
            fits or (lambda place: True), exclusive, once, single_threaded, threaded, conflicts,
            known,
            (build.__doc__ or "").strip().splitlines()[0] if build.__doc__ else "")
        return build
    return register


def load() -> dict[str, Generator]:
    """Every generator, by name (importing the family modules registers them)."""
    from bench.fuzz import (  # noqa: F401
        anon,
        devices,
        files,
        ipc,
        locks,
        memory,
        namespaces,
        sockets,
        task,
        terminal,
    )
    return GENERATORS


def not_root(place: Place) -> bool:
    return not place.is_root
