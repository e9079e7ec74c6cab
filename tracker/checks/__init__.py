"""The checks: what CRIU would refuse, one module per resource family, and their dispatch.

Every check module declares `RULES` (the rules it owns: their text, severities and
remedy) and any of `check_fd(ctx, proc, open_fd)`, `check_process(ctx, proc)` and
`check_tree(ctx, findings)` (which sees the whole tree's findings once they are all
in: what CRIU decides for the dump as a whole), all yielding Findings. Importing this
package gathers every module's rules into the catalogue and registers the check that
owns each kind of fd. The modules that serve the checks:

- `catalogue`: every rule by code, with its family;
- `fd_owners`: routes each fd to the check that owns its kind, as CRIU's dump_one_file
  does; a kind nobody owns is a blocker (deny by default);
- `paths`: the mount tables and path helpers of the file, device, memory and anon checks;
- `tree`: what the checks share about the whole tree (CRIU's dump order, the network
  namespaces it knows, pid namespaces);
- `net_links` serves namespaces, and `sockets/` is the socket family, a package of its
  own whose helpers other checks use too: `fd_query` (asks a copy of an fd: devices,
  terminal, namespaces), `tables` (what the kernel's socket tables list: memory) and
  `diag` (netlink requests: net_links).

May import: tracker.procfs, tracker.rules, tracker.context, tracker.environment and
tracker.criu.options (the layers below), and the modules above that serve the checks. A
check module imports a sibling check only for its judgement (memory judges a mapped file
as files does, devices a device's path), never tracker.checks itself (which imports
every check), and nothing of tracker.audit, tracker.verdict, tracker.profiles,
tracker.criu.runner, tracker.gate, tracker.live or api.
"""
from __future__ import annotations

from typing import Iterator

from tracker.checks import (
    anon,
    catalogue,
    devices,
    dumper,
    fd_owners,
    files,
    gate,
    general,
    ipc,
    locks,
    memory,
    namespaces,
    sockets,
    task,
    terminal,
)
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
