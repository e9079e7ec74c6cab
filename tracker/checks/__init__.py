"""The checks: what CRIU would refuse, one module per resource family, and their dispatch.

Every check module declares `RULES` (the rules it owns: their text, severities and
remedy) and any of `check_fd(ctx, proc, open_fd)`, `check_process(ctx, proc)` and
`check_tree(ctx, findings)` (which sees the whole tree's findings once they are all
in: what CRIU decides for the dump as a whole), all yielding Findings. Importing this
package gathers every module's rules into the catalogue (`catalogue`) and registers the
owner of each kind of fd (`fd_owners`, which routes each fd as CRIU's dump_one_file
does; a kind nobody owns is a blocker: deny by default). `paths` holds the path and
mount helpers that the file, device, memory and anon checks share; `sockets` is the
socket family, a package of its own.

May import: tracker.procfs, tracker.rules, tracker.context, tracker.environment,
tracker.holders and tracker.criu.options (below the checks), and each other: a check
module imports the support modules (catalogue, fd_owners, paths, general's findings
about the audit itself) and a sibling only for the sibling's judgement (memory judges a
mapped file as files does). Never tracker.audit, tracker.verdict, tracker.profiles,
tracker.criu.runner, tracker.gate, tracker.live, nor anything in api.
"""
from __future__ import annotations

from typing import Iterator

from tracker.checks import (anon, catalogue, devices, dumper, fd_owners, files, gate, general, ipc,
                            locks, memory, namespaces, sockets, task, terminal)
from tracker.context import AuditContext
from tracker.procfs import Proc
from tracker.rules import Finding

MODULES = (general, dumper, files, devices, anon, sockets, memory, task, locks, ipc, namespaces,
           terminal, gate)

FD_OWNERS = {
    "reg": files.check_fd, "dir": files.check_fd, "lnk": files.check_fd,
    "pipe": files.check_fd, "fifo": files.check_fd,
    "chr": devices.check_fd, "blk": devices.check_fd,
    "anon": anon.check_fd,
    "socket": sockets.check_fd,
    "long_name": general.check_fd,
}

catalogue.gather(MODULES)
fd_owners.register(FD_OWNERS)


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
