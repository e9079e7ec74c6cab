"""The check modules, one per resource family, and the fd dispatcher.

Every check module exposes `RULES` (the rules it owns) and any of
`check_fd(ctx, proc, open_fd)`, `check_process(ctx, proc)` and
`check_tree(ctx, findings)` (which sees the whole tree's findings once they
are all in: what CRIU decides for the dump as a whole), all yielding
Findings. `check_fd` routes each fd to the module that owns its kind, as
CRIU's dump_one_file does; a kind nobody owns is a blocker (deny by default).
"""
from __future__ import annotations

from typing import Iterable, Iterator

from tracker.checks import (anon, devices, dumper, files, gate, general, ipc, locks, memory,
                            namespaces, sockets, task, terminal)
from tracker.context import AuditContext
from tracker.procfs import OpenFd, Proc
from tracker.rules import Finding

MODULES = (general, dumper, files, devices, anon, sockets, memory, task, locks, ipc, namespaces,
           terminal, gate)

FD_OWNERS = {
    "reg": files, "dir": files, "lnk": files, "pipe": files, "fifo": files,
    "chr": devices, "blk": devices,
    "anon": anon,
    "socket": sockets,
    "long_name": general,
}


def check_fd(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Iterable[Finding]:
    # Returns the owner's iterator as it is: this runs once per fd.
    owner = FD_OWNERS.get(open_fd.kind)
    if owner is None:
        return (general.unclassified_fd(proc, open_fd),)
    return owner.check_fd(ctx, proc, open_fd)


def check_process(ctx: AuditContext, proc: Proc) -> Iterator[Finding]:
    for module in MODULES:
        check = getattr(module, "check_process", None)
        if check is not None:
            yield from check(ctx, proc)


def check_tree(ctx: AuditContext, findings: list[Finding]) -> Iterator[Finding]:
    for module in MODULES:
        check = getattr(module, "check_tree", None)
        if check is not None:
            yield from check(ctx, findings)
