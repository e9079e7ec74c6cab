"""What every check may consult besides the process it looks at.

An audit reads host-wide tables (sockets, locks, who holds which inode) at
most once, and only when some check asks: a process with no sockets never
pays for the socket tables. Who holds a pipe or socket outside the tree is
known only from a walk over every fd of the host; an audit that is told not to
name the holders (`name_holders`: a one-off check) never walks.
"""
from __future__ import annotations

from collections import defaultdict
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from tracker.environment import Environment, current
from tracker.holders import HostHolders
from tracker.procfs import DEFAULT_PROC_ROOT, OpenFd, Proc

# What a message says in place of the holders outside the tree when the audit does not
# look them up (AuditContext.name_holders).
NOT_LOOKED_UP = "its holders were not looked up"


class Hold(NamedTuple):
    """A gate's ptrace hold on the tree. Its tracer is no tracer CRIU would meet, and
    its stop ("t") is no state of the task's own: the states, and the signals of the
    group stops, from before the hold are the ones to judge."""

    tracer: int
    states: dict[int, str]
    stop_signals: dict[int, int]


class AuditContext:
    """One audit's tree, the host-wide tables its checks read once, and how it judges."""

    def __init__(self, root_pid: int, tree_pids: set[int], proc_root: Path = DEFAULT_PROC_ROOT,
                 *, tree_fds: dict[int, list[OpenFd]] | None = None, hold: Hold | None = None,
                 dumper_environment: Environment | None = None,
                 shared_holders: HostHolders | None = None, name_holders: bool = True):
        self.root_pid, self.tree_pids, self.proc_root = root_pid, tree_pids, proc_root
        # Every fd of every process in the dumped tree, filled before any check runs,
        # so a check can tell whether a peer is inside the tree.
        self.tree_fds: dict[int, list[OpenFd]] = {} if tree_fds is None else tree_fds
        self._tables: dict = {}
        self.hold = hold
        self.dumper_environment = dumper_environment  # default: the CRIU find_criu() finds
        self.shared_holders = shared_holders  # a pass's index of holders, shared by its audits
        # False: the holders outside the tree are not looked up (holders_outside answers
        # None). They name whom a pipe or socket reaches in info messages, and no verdict
        # depends on them.
        self.name_holders = name_holders

    @property
    def environment(self) -> Environment:
        """The dumper's environment (detected once per crwatch process)."""
        return self.dumper_environment or current()

    def in_tree(self, pid: int) -> bool:
        return pid in self.tree_pids

    @cached_property
    def tree_holders(self) -> dict[str, set[int]]:
        """fd link text (socket:[N], pipe:[N], /path) -> pids of the tree holding it."""
        holders: dict[str, set[int]] = defaultdict(set)
        for pid, fds in self.tree_fds.items():
            for open_fd in fds:
                holders[open_fd.target].add(pid)
        return holders

    @cached_property
    def host_holders(self) -> HostHolders:
        """Who holds each pipe and socket on the host: the pass's index when the audit is
        one of many (shared_holders), else one walk of /proc for this audit alone."""
        return self.shared_holders or HostHolders(self.proc_root)

    def holders_outside(self, target: str, witness: tuple[int, str] | None = None, *,
                        required: bool = False) -> set[int] | None:
        """Processes outside the tree that hold the same open file, None when the audit does
        not name holders (unless the caller `required` them: nothing else tells);
        `witness`: a (pid, link) of the tree, held now, that a shared index must show
        (HostHolders.of)."""
        if not (self.name_holders or required):
            return None
        return self.host_holders.of(target, witness) - self.tree_pids

    def table(self, key, build):
        """A host-wide table built once per audit: `build()` runs on first use of `key`."""
        if key not in self._tables:
            self._tables[key] = build()
        return self._tables[key]

    def proc(self, pid: int) -> Proc:
        return Proc(pid, self.proc_root)
