"""Which check owns an open file of each kind, and `check_fd`, which routes an fd to it.

Every fd goes to the check that owns its kind, as CRIU's dump_one_file routes it to
the code of its kind; a kind nobody owns is a blocker (deny by default:
fd.unclassified). tracker.checks registers the owners as it imports them; the registry
lives apart from that package so that a check can send an fd back through it (a file
in flight in a unix socket's queue is judged by the owner of its kind) without
importing the package that imports every check.

May import: tracker.context, tracker.procfs, tracker.rules and tracker.checks.general.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

from tracker.checks import general
from tracker.context import AuditContext
from tracker.procfs import OpenFd, Proc
from tracker.rules import Finding

FdCheck = Callable[[AuditContext, Proc, OpenFd], Iterable[Finding]]

_owners: dict[str, FdCheck] = {}


def register(owners: Mapping[str, FdCheck]) -> None:
    """Route the fds of each kind to its check (tracker.checks does it for every owner)."""
    _owners.update(owners)


def check_fd(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Iterable[Finding]:
    # Returns the owner's iterator as it is: this runs once per fd.
    owner = _owners.get(open_fd.kind)
    if owner is None:
        return (general.unclassified_fd(proc, open_fd),)
    return owner(ctx, proc, open_fd)
