"""Namespaces: the tree's own namespaces, nested ones, and what CRIU needs of each.

CRIU first notes its own namespaces, then the root's ("Will take %s namespace
in the image"); any other namespace a tree process lives in is "nested",
which only mount and network namespaces may be. A tree in its own pid
namespace must be dumped from that namespace's init; one in its own user
namespace needs uid/gid 0 mapped and its other namespaces owned by it.
A network namespace of the tree's own is dumped link by link: net_links says
which links CRIU cannot dump (net.c dump_one_link).

The network lock: CRIU locks the network of a tree in its own network
namespace as a whole (net.c network_lock_internal, `iptables-restore` and
`ip6tables-restore` by default), and otherwise each TCP connection it dumps
with TCP_REPAIR (sk-tcp.c tcp_repair_established, `iptables`/`ip6tables`):
the connected states --tcp-established admits, and a closed socket that
still has a peer (dump_one_tcp locks any socket with a destination port;
after a shutdown or a reset the kernel keeps it). Where those tools are not
on the dumper's PATH, the dump needs `--network-lock nftables`.

A root in its own network namespace whose tree has a process in CRIU's own
network namespace cannot be dumped: CRIU 4.2 fails to infect that
process (compel's prepare_tsock: "Unable to get name for a socket: Socket
operation on non-socket"), whatever --network-lock says; processes in the
root's or in network namespaces of their own are fine.
"""
from __future__ import annotations

import fcntl
import os
import socket
from typing import Iterator

from tracker.checks import net_links, tree
from tracker.checks.catalogue import catalogue
from tracker.checks.sockets import fd_query
from tracker.context import AuditContext
from tracker.environment import IPTABLES_CONNECTION_TOOLS, Environment
from tracker.procfs import DEFAULT_PROC_ROOT, AccessDenied, Proc, ProcessGone
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
    Rule("namespace.net_lock", "CRIU must lock the network (the tree's own network namespace, "
         "or TCP connections it dumps) and the dumper has no iptables tools for its default "
         "lock", OPTION,
         "dump with --network-lock nftables (CRIU locks with libnftables, no iptables needed)",
         option="--network-lock",
         criu_message="Failed to lock TCP connection %x / Locking network failed: "
                      "iptables-restore returned %d / execvp(\"%s\", ...) failed"),
    Rule("namespace.net_link", "The tree's own network namespace holds a link CRIU cannot dump",
         BLOCKER, "delete the link (ip link del), or move it out of the tree's network namespace, "
         "before checkpointing: CRIU dumps loopback, veth, tun/tap, bridge, macvlan and sit links "
         "only (others need a CRIU plugin)",
         criu_message="Unsupported link %d (type %d kind %s); no data for macvlan; macvlan mode "
                      "required for %s; no data for sit; No 6rd prefix for sit device; No 6rd "
                      "relay prefix for sit device; SIT device with %s kind"),
    Rule("namespace.user_unmapped", "The tree's own user namespace does not map uid or gid 0",
         BLOCKER, "write uid_map and gid_map so that 0 inside maps to a host id before "
         "checkpointing", criu_message="Unable to convert uid or gid"),
    Rule("namespace.user_foreign", "A namespace of the tree is not owned by the tree's own user "
         "namespace", BLOCKER,
         "create the other namespaces after (or together with) the user namespace, so that it "
         "owns them", criu_message="One or more namespaces doesn't belong to the target user "
         "namespace"),
    Rule("namespace.host_netns_member", "The root has its own network namespace, and a process "
         "of the tree is in the dumper's (host's) network namespace", BLOCKER,
         "create the network namespace before forking the rest of the tree, and keep every "
         "process in a network namespace of the tree: CRIU cannot infect that process",
         criu_message="Unable to get name for a socket: Socket operation on non-socket"),
)

KINDS = ("pid", "net", "mnt", "ipc", "uts", "user", "cgroup", "time")
NESTABLE = {"net", "mnt"}  # CRIU's CLONE_SUBNS
OWNED_BY_USERNS = ("net", "uts", "ipc", "mnt", "time")  # those CRIU enters from the user ns
NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1)
TCP_ESTABLISHED_OPTION = "--tcp-established"
TCP_CODES = "socket.tcp."
# A listener has no destination port, so CRIU locks none (inet_getname: ENOTCONN).
LISTENER_CODES = ("socket.tcp.listen", "socket.tcp.in_flight")
SO_PEERNAME = 28  # asm-generic/socket.h; Python's socket module does not export it
# The kernel refuses a buffer longer than the address (EINVAL).
SOCKADDR_IN_SIZE, SOCKADDR_IN6_SIZE = 16, 28
# The third 32-bit word of sockaddr_in6's address: CRIU's ipv6_addr_mapped() test.
IN6_ADDR_WORD2, IPV4_MAPPED_WORD = slice(16, 20), b"\x00\x00\xff\xff"


def check_process(ctx: AuditContext, proc: Proc) -> Iterator[Finding]:
    root, own = ctx.table("namespace.reference", lambda: _reference(ctx))
    links = {kind: _link(proc, kind) for kind in KINDS}
    if proc.pid == ctx.root_pid:
        yield from _check_root(proc, links, own)
        if links["net"] and own["net"] and links["net"] != own["net"]:
            yield from _check_host_netns(ctx, own)
    else:
        yield from _check_nested(proc, links, root, own)
    yield from _check_time_for_children(proc, links["time"])
    yield from _check_session(proc)
    if links["net"] not in (None, own["net"]):
        yield from _check_net_links(ctx, proc, links["net"])


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
    if "pid" in kinds and tree.innermost(proc, "NSpid") != 1:
        yield Finding("namespace.pid_without_init", f"pid {proc.pid} is pid "
                      f"{tree.innermost(proc, 'NSpid')} in its own pid namespace, not its init (1)",
                      proc.pid)
    if "user" in kinds:
        yield from _check_user(proc, [kind for kind in kinds if kind in OWNED_BY_USERNS])


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
            # compel's parasite socket is made in the root's namespace (infect.c
            # prepare_tsock), where this process has no way to reach it
            yield Finding("namespace.host_netns_member",
                          f"pid {pid} is in the dumper's network namespace ({own['net']}) while "
                          "the root has its own: CRIU cannot infect it", pid)


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


# ---------------------------------------------------------------- network links

def _check_net_links(ctx: AuditContext, proc: Proc, net: str) -> Iterator[Finding]:
    """The links of a network namespace of the tree's own, judged once: for the first
    process of the tree in it."""
    if ctx.proc_root != DEFAULT_PROC_ROOT:
        return          # a fixture's namespace has no links to ask
    if ctx.table("namespace.net_first", lambda: _first_in_netns(ctx)).get(net) != proc.pid:
        return
    try:
        found = net_links.links(str(proc.path / "ns" / "net"))
    except net_links.LinksUnavailable as error:
        yield Finding("audit.unreadable", f"pid {proc.pid}: cannot list the links of {net}: "
                      f"{error}", proc.pid)
        return
    for link in found:
        why = net_links.refusal(link)
        if why:
            kind = link.kind or "no kind"
            yield Finding("namespace.net_link", f"{net} holds link {link.index} {link.name} "
                          f"({kind}, type {link.type}): {why}", proc.pid,
                          remedy=f"delete {link.name} (ip link del {link.name}) or move it out "
                                 f"of {net} before checkpointing")


def _first_in_netns(ctx: AuditContext) -> dict[str, int]:
    """Network namespace -> the lowest pid of the tree in it."""
    first: dict[str, int] = {}
    for pid in sorted(ctx.tree_pids):
        net = _link(ctx.proc(pid), "net")
        if net is not None:
            first.setdefault(net, pid)
    return first


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


def _check_session(proc: Proc) -> Iterator[Finding]:
    if tree.session_outside_pidns(proc):
        yield Finding("namespace.session_outside", f"pid {proc.pid}: the leader of its session "
                      f"(pid {proc.stat.session}) is outside its pid namespace", proc.pid)


# ---------------------------------------------------------------- the network lock

def check_tree(ctx: AuditContext, findings: list[Finding]) -> Iterator[Finding]:
    try:
        root, own = ctx.table("namespace.reference", lambda: _reference(ctx))
    except (ProcessGone, AccessDenied):
        return  # the root's own checks have reported it unreadable or gone
    if root["net"] and own["net"] and root["net"] != own["net"]:
        # CRIU locks the namespace as a whole and no single connection.
        locked = f"its own network namespace {root['net']}"
        tools = ctx.environment.namespace_tools
    else:
        # Connected sockets, and any other TCP socket (closed after a shutdown or a reset)
        # that still has a peer.
        locks = {(f.pid, f.fd): _lock_tools(ctx, f) for f in findings
                 if f.code.startswith(TCP_CODES) and f.code not in LISTENER_CODES
                 and f.fd is not None}
        locks = {where: tools for where, tools in locks.items() if tools}
        if not locks:
            return
        locked = "the TCP connections it dumps (" + ", ".join(
            f"pid {pid} fd {fd}" for pid, fd in sorted(locks)) + ")"
        needed = {tool for tools in locks.values() for tool in tools}
        tools = tuple(tool for tool in IPTABLES_CONNECTION_TOOLS if tool in needed)
    yield from network_lock_findings(ctx.root_pid, ctx.environment, locked, tools)


def lock_subjects(findings: list[Finding]) -> list[Finding]:
    """The findings of connections CRIU dumps with --tcp-established (and so locks)."""
    rules = catalogue()
    return [finding for finding in findings
            if rules[finding.code].option == TCP_ESTABLISHED_OPTION and finding.fd is not None]


def marked_connections_lock(pid: int, findings: list[Finding],
                            environment: Environment) -> list[Finding]:
    """The lock reason for the live view, from one process's marks alone. It reads no /proc,
    so it cannot tell the peers' families and asks for both tools (the audit decides)."""
    fds = sorted({finding.fd for finding in lock_subjects(findings)})
    if not fds:
        return []
    locked = "the TCP connections it dumps (" + ", ".join(f"pid {pid} fd {fd}" for fd in fds) + ")"
    return list(network_lock_findings(pid, environment, locked, IPTABLES_CONNECTION_TOOLS))


def without_orphaned_lock(reasons: list[dict]) -> list[dict]:
    """A live view's reasons once some were set aside (e.g. connections of the watcher's
    own): its lock reason stands for the connections it locks, and goes with the last."""
    rules = catalogue()
    if any(rules[reason["code"]].option == TCP_ESTABLISHED_OPTION for reason in reasons):
        return reasons
    return [reason for reason in reasons if reason["code"] != "namespace.net_lock"]


def network_lock_findings(root: int, environment: Environment, locked: str,
                          tools: tuple[str, ...]) -> Iterator[Finding]:
    """The lock reason for what CRIU locks (`locked`, run with `tools` by default), if any."""
    method = environment.network_lock(tools)
    if method == "iptables":
        return
    fact = environment.tools_fact(tools)
    message = f"pid {root}: CRIU locks the network for {locked}, and {fact}"
    if method == "nftables":
        yield Finding("namespace.net_lock", message, root, option_value="nftables",
                      environment_fact=fact)
        return
    fact += " and CRIU cannot lock with nftables (no network_lock_nftables feature)"
    yield Finding("namespace.net_lock", f"{message}; this CRIU cannot lock with nftables either",
                  root, option_value="skip", environment_fact=fact,
                  remedy="install iptables where CRIU runs, or lock the network yourself and "
                         "dump with --network-lock skip")


def _lock_tools(ctx: AuditContext, finding: Finding) -> tuple[str, ...]:
    """The iptables tool CRIU runs to lock this socket's connection; none without a peer.

    CRIU locks every TCP socket with a destination port (dump_one_tcp): SO_PEERNAME gives
    it even for a closed socket (inet_getname with peer == 2, what gen_uncon_sk asks).
    IPv6 peers take ip6tables, IPv4 and IPv4-mapped ones iptables (netfilter.c)."""
    try:
        inode = os.stat(ctx.proc_root / str(finding.pid) / "fd" / str(finding.fd)).st_ino
        with fd_query.borrowed(finding.pid, finding.fd, inode) as sock:
            family = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
            if family not in (socket.AF_INET, socket.AF_INET6):
                # The connection is in flight in this unix socket's queue: CRIU dumps
                # and locks it all the same.
                return _unseen_connection_tools(finding)
            size = SOCKADDR_IN6_SIZE if family == socket.AF_INET6 else SOCKADDR_IN_SIZE
            peer = sock.getsockopt(socket.SOL_SOCKET, SO_PEERNAME, size)
    except ProcessGone:
        return ()      # the fd closed (its process is confirmed at the end of the audit)
    except AccessDenied:
        return _unseen_connection_tools(finding)
    except OSError:
        return ()      # ENOTCONN: no peer (a listener, a socket never connected)
    if family == socket.AF_INET6 and peer[IN6_ADDR_WORD2] != IPV4_MAPPED_WORD:
        return ("ip6tables",)
    return ("iptables",)


def _unseen_connection_tools(finding: Finding) -> tuple[str, ...]:
    """A connection we cannot look into is locked by either tool (deny by default)."""
    connected = catalogue()[finding.code].option == TCP_ESTABLISHED_OPTION
    return IPTABLES_CONNECTION_TOOLS if connected else ()
