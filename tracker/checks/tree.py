"""What the checks share about the dumped tree as CRIU walks it: the order it dumps the
processes in, the network namespaces it collects sockets from, and where a session is led.

Several checks ask the same questions of the whole tree (which holder of a shared file
CRIU meets first; whether a namespace is one CRIU knows), and each answer is built once
per audit (AuditContext.table).

May import: tracker.context and tracker.procfs.
"""
from __future__ import annotations

import os
from typing import NamedTuple

from tracker.context import AuditContext
from tracker.procfs import AccessDenied, Proc, ProcessGone

# ---------------------------------------------------------------- the dump order

def dump_order(ctx: AuditContext) -> list[int]:
    """The tree's pids in the order CRIU dumps them (pstree_item_next: depth first from the
    root, children in /proc's order); within a process it dumps fds in ascending order."""
    return ctx.table("tree.dump_order", lambda: _walk(ctx))


def _walk(ctx: AuditContext) -> list[int]:
    order, stack = [], [ctx.root_pid]
    while stack:
        pid = stack.pop()
        order.append(pid)
        try:
            children = [child for child in ctx.proc(pid).children() if ctx.in_tree(child)]
        except (ProcessGone, AccessDenied):
            children = []
        stack.extend(reversed(children))
    return order


# ---------------------------------------------------------------- the tree's network namespaces
#
# CRIU knows the network namespace of every process of the tree and its own
# (namespaces.c generate_ns_id), and collects the sockets of each of them
# (net.c collect_net_namespaces, walk_namespaces), but for its own when the
# root has a namespace of its own. It finds a listed socket in any of them.
# A socket no table lists is asked for its namespace (get_socket_ns) only when
# the root has a namespace of its own: one CRIU does not know is refused.


class TreeNetns(NamedTuple):
    collected: dict[int, int]    # namespace inode -> the first process of the tree living there
    known: frozenset[int]        # what get_socket_ns finds: the tree's and CRIU's own
    root_has_own: bool


def known_netns(ctx: AuditContext) -> frozenset[int]:
    """The network namespaces CRIU knows while dumping this tree: the tree's, and its own."""
    return tree_netns(ctx).known


def tree_netns(ctx: AuditContext) -> TreeNetns:
    def build() -> TreeNetns:
        members: dict[int, int] = {}
        for pid in ctx.tree_fds:        # parents before children
            netns = netns_of(ctx.proc(pid))
            if netns is not None:
                members.setdefault(netns, pid)
        own = _netns_inode(os.readlink("/proc/self/ns/net"))   # CRIU's, as it runs beside crwatch
        root_has_own = netns_of(ctx.proc(ctx.root_pid)) not in (own, None)
        collected = {netns: pid for netns, pid in members.items() if not root_has_own or netns != own}
        return TreeNetns(collected, frozenset(members) | {own}, root_has_own)
    return ctx.table("tree.netns", build)


def netns_of(proc: Proc) -> int | None:
    """The inode of proc's network namespace; None when it is gone."""
    try:
        return _netns_inode(proc.namespace("net"))
    except (ProcessGone, AccessDenied):
        return None     # gone: its own findings say so


def _netns_inode(link: str) -> int:
    return int(link.removeprefix("net:[").removesuffix("]"))


# ---------------------------------------------------------------- pid namespaces

def session_outside_pidns(proc: Proc) -> bool:
    """Seen from inside its pid namespace, the process's session has no leader (sid 0)."""
    return innermost(proc, "NSsid") == 0


def innermost(proc: Proc, field: str) -> int | None:
    """The last (innermost pid namespace) number of an NSpid/NSsid line of status."""
    words = proc.status.get(field, "").split()
    return int(words[-1]) if words else None
