"""Namespaces: the tree's own namespaces, nested ones, and what CRIU needs of each.

CRIU first notes its own namespaces, then the root's ("Will take %s namespace
in the image"); any other namespace a tree process lives in is "nested",
which only mount and network namespaces may be. A tree in its own pid
namespace must be dumped from that namespace's init; one in its own user
namespace needs uid/gid 0 mapped and its other namespaces owned by it.

A root in its own user and network namespaces whose tree still has a process
in CRIU's own network namespace cannot be dumped: CRIU 4.2 fails to infect that
process (compel's prepare_tsock: "Unable to get name for a socket: Socket
operation on non-socket"), whatever --network-lock says; processes in the
root's or in network namespaces of their own are fine.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from typing import Iterator

from tracker.context import AuditContext
from tracker.procfs import Proc, ProcessGone
from tracker.rules import BLOCKER, INFO, OPTION, Finding, Rule

RULES = (
    Rule("namespace.own", "The tree lives in its own namespaces", INFO,
         "nothing to do: CRIU dumps the root's namespaces with the tree and recreates them"),
    Rule("namespace.nested", "A process of the tree lives in a nested pid/uts/ipc/user/cgroup/time "
         "namespace", BLOCKER,
         "checkpoint the nested part on its own (from its namespace's init), or keep the tree in "
         "one namespace of that kind: CRIU nests only mount and network namespaces",
         criu_message="Can't dump nested %s namespace for %d"),
    Rule("namespace.nested_subns", "A process of the tree lives in a nested mount or network "
         "namespace", INFO, "nothing to do: CRIU dumps nested mount and network namespaces"),
    Rule("namespace.pid_without_init", "The tree is in its own pid namespace but its root is not "
         "that namespace's init", BLOCKER,
         "checkpoint from the pid namespace's init (pid 1 inside), which takes the whole namespace",
         criu_message="Can't dump a pid namespace without the process init"),
    Rule("namespace.session_outside", "A session leader is outside the process's pid namespace",
         BLOCKER, "call setsid() in the namespace's init (e.g. `unshare --pid --fork setsid CMD`): "
         "--shell-job does not help here",
         criu_message="A session leader of %d(%d) is outside of its pid namespace"),
    Rule("namespace.net_lock", "The tree has its own network namespace and this host has no "
         "iptables-restore for CRIU's default network lock", OPTION,
         "pass --network-lock nftables (or skip, if the network is locked otherwise)",
         option="--network-lock",
         criu_message="net: Locking network failed: iptables-restore returned -1."),
    Rule("namespace.user_unmapped", "The tree's own user namespace does not map uid or gid 0",
         BLOCKER, "write uid_map and gid_map so that 0 inside maps to a host id before "
         "checkpointing", criu_message="Unable to convert uid or gid"),
    Rule("namespace.user_foreign", "A namespace of the tree is not owned by the tree's own user "
         "namespace", BLOCKER,
         "create the other namespaces after (or together with) the user namespace, so that it "
         "owns them", criu_message="One or more namespaces doesn't belong to the target user "
         "namespace"),
    Rule("namespace.user_host_netns", "The root has its own user and network namespaces, and a "
         "process of the tree is still in the host's network namespace", BLOCKER,
         "create the user and network namespaces before forking the rest of the tree (or move "
         "that process into a network namespace of the tree): CRIU cannot infect it",
         criu_message="Unable to get name for a socket: Socket operation on non-socket"),
)

KINDS = ("pid", "net", "mnt", "ipc", "uts", "user", "cgroup", "time")
NESTABLE = {"net", "mnt"}  # CRIU's CLONE_SUBNS
OWNED_BY_USERNS = ("net", "uts", "ipc", "mnt", "time")  # those CRIU enters from the user ns
NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1)
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def check_process(ctx: AuditContext, proc: Proc) -> Iterator[Finding]:
    root, own = ctx.table("namespace.reference", lambda: _reference(ctx))
    links = {kind: _link(proc, kind) for kind in KINDS}
    if proc.pid == ctx.root_pid:
        yield from _check_root(proc, links, own)
        if all(links[kind] and own[kind] and links[kind] != own[kind] for kind in ("user", "net")):
            yield from _check_host_netns(ctx, own)
    else:
        yield from _check_nested(proc, links, root, own)
    yield from _check_time_for_children(proc, links["time"])
    yield from _check_session(proc)


def _reference(ctx: AuditContext) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """The root's namespaces and crwatch's own (where CRIU would run)."""
    root = ctx.proc(ctx.root_pid)
    own = {}
    for kind in KINDS:
        try:
            own[kind] = os.readlink(ctx.proc_root / "self" / "ns" / kind)
        except OSError:
            own[kind] = None
    return {kind: _link(root, kind) for kind in KINDS}, own


def _link(proc: Proc, kind: str) -> str | None:
    """`net:[4026531840]`, or None where this kernel has no such namespace."""
    try:
        return proc.namespace(kind)
    except ProcessGone:
        return None


# ---------------------------------------------------------------- the root

def _check_root(proc: Proc, links: dict[str, str | None],
                own: dict[str, str | None]) -> Iterator[Finding]:
    kinds = [kind for kind in KINDS if links[kind] and own[kind] and links[kind] != own[kind]]
    if not kinds:
        return
    yield Finding("namespace.own", f"pid {proc.pid} lives in its own {', '.join(kinds)} "
                  f"namespace{'s' if len(kinds) > 1 else ''}", proc.pid)
    if "pid" in kinds and _innermost(proc, "NSpid") != 1:
        yield Finding("namespace.pid_without_init", f"pid {proc.pid} is pid "
                      f"{_innermost(proc, 'NSpid')} in its own pid namespace, not its init (1)",
                      proc.pid)
    if "net" in kinds and not host_has_iptables_restore():
        yield Finding("namespace.net_lock", f"pid {proc.pid} has its own network namespace "
                      f"({links['net']}) and no iptables-restore is installed", proc.pid)
    if "user" in kinds:
        yield from _check_user(proc, [kind for kind in kinds if kind in OWNED_BY_USERNS])


def host_has_iptables_restore() -> bool:
    search = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return shutil.which("iptables-restore", path=search) is not None


def _check_user(proc: Proc, owned_kinds: list[str]) -> Iterator[Finding]:
    for map_name in ("uid_map", "gid_map"):
        if not maps_zero(proc.read(map_name)):
            yield Finding("namespace.user_unmapped", f"pid {proc.pid}: its user namespace's "
                          f"{map_name} does not map 0", proc.pid)
    user = _ns_inode(proc, "user")
    foreign = [kind for kind in owned_kinds
               if user and _owner_inode(proc, kind) not in (None, user)]
    if foreign:
        yield Finding("namespace.user_foreign", f"pid {proc.pid}: its {', '.join(foreign)} "
                      f"namespace{'s are' if len(foreign) > 1 else ' is'} owned by another user "
                      "namespace than its own", proc.pid)


def _check_host_netns(ctx: AuditContext, own: dict[str, str | None]) -> Iterator[Finding]:
    for pid in sorted(ctx.tree_pids - {ctx.root_pid}):
        # (a zombie has no namespace links: CRIU does not infect it either)
        if _link(ctx.proc(pid), "net") == own["net"]:
            yield Finding("namespace.user_host_netns",
                          f"pid {pid} is in the host's network namespace ({own['net']}) while the "
                          "root has its own user and network namespaces: CRIU cannot infect it",
                          pid)


def maps_zero(id_map: str) -> bool:
    """Does a uid_map/gid_map (`inside outside count` lines) map id 0?"""
    for line in id_map.splitlines():
        words = line.split()
        if len(words) == 3 and int(words[0]) <= 0 < int(words[0]) + int(words[2]):
            return True
    return False


def _ns_inode(proc: Proc, kind: str) -> int | None:
    try:
        return os.stat(proc.path / "ns" / kind).st_ino
    except OSError:
        return None


def _owner_inode(proc: Proc, kind: str) -> int | None:
    """The inode of the user namespace that owns this namespace (NS_GET_USERNS)."""
    try:
        fd = os.open(proc.path / "ns" / kind, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        owner = fcntl.ioctl(fd, NS_GET_USERNS)
        try:
            return os.fstat(owner).st_ino
        finally:
            os.close(owner)
    except OSError:
        return None
    finally:
        os.close(fd)


# ---------------------------------------------------------------- every process

def _check_nested(proc: Proc, links: dict[str, str | None], root: dict[str, str | None],
                  own: dict[str, str | None]) -> Iterator[Finding]:
    # A namespace CRIU has already seen (its own or the root's) is not nested.
    for kind in KINDS:
        link = links[kind]
        if link is None or link in (root[kind], own[kind]):
            continue
        if kind in NESTABLE:
            yield Finding("namespace.nested_subns", f"pid {proc.pid} lives in a nested {kind} "
                          f"namespace ({link})", proc.pid)
        else:
            yield Finding("namespace.nested", f"pid {proc.pid} lives in a nested {kind} "
                          f"namespace ({link}; the root's is {root[kind]})", proc.pid)


def _check_time_for_children(proc: Proc, time: str | None) -> Iterator[Finding]:
    # After unshare(CLONE_NEWTIME) the caller's future children get the new
    # time namespace: CRIU refuses that even before any child exists.
    children_time = _link(proc, "time_for_children")
    if time and children_time and children_time != time:
        yield Finding("namespace.nested", f"pid {proc.pid} has unshared a time namespace for its "
                      f"children ({children_time}; its own is {time})", proc.pid)


def session_outside_pidns(proc: Proc) -> bool:
    """Seen from inside its pid namespace, the process's session has no leader (sid 0)."""
    return _innermost(proc, "NSsid") == 0


def _check_session(proc: Proc) -> Iterator[Finding]:
    if session_outside_pidns(proc):
        yield Finding("namespace.session_outside", f"pid {proc.pid}: the leader of its session "
                      f"(pid {proc.stat.session}) is outside its pid namespace", proc.pid)


def _innermost(proc: Proc, field: str) -> int | None:
    """The last (innermost pid namespace) number of an NSpid/NSsid line of status."""
    words = proc.status.get(field, "").split()
    return int(words[-1]) if words else None
