"""Sockets: every socket fd classified by family, type, protocol and state, as CRIU's dump_socket does.

An fd's inode is looked up in the socket tables of its holder's network
namespace (tables.py: sock_diag, and /proc/PID/net for raw and ping
sockets); a tree holding few sockets asks sock_diag for each one alone
(exact.py), and reads the tables only for what that cannot answer. A
socket in no table is asked directly (fd_query.py), for its family and its
namespace (SIOCGSKNS): one of another namespace of the tree is
looked up in that namespace's tables, as CRIU collects them all. Otherwise
unbound inet and netlink sockets are fine, but, when the root has a network
namespace of its own, only from a namespace CRIU knows (the tree's or its
own); a listening or connected one, or any unix or packet socket, belongs
to a namespace CRIU does not collect, and any other family is one CRIU
does not know (deny by default). An O_PATH fd on a socket (opened
through /proc/PID/fd/N: its link is socket:[N], fdinfo's flags carry O_PATH)
answers no getsockopt, so CRIU's dump_socket refuses it whatever its family
("Can't get 1:39 opt", SO_DOMAIN). While any eBPF socket filter
program is loaded on the host, every socket is asked whether it holds one,
as CRIU's dump_socket_opts asks (SO_GET_FILTER), from a copy of the fd.

The modules: `tables` (the socket tables of a namespace: `diag` for sock_diag,
`procnet` for /proc/PID/net; `exact` for one socket asked alone), `records` (what a table says of one socket),
`fd_query` (asks a copy of the fd what no table shows), `common` (the finding every
family makes), one module per family (`unix`, `inet`, `netlink`, `packet`), `queue`
(what waits in a unix queue, fds in flight included) and `bpf` (socket filters).
May import: what tracker.checks may (procfs, rules, context, environment,
criu.options) and tracker.checks' registries; never tracker.checks itself.
"""
from __future__ import annotations

import os
import socket
from typing import Iterator

from tracker.checks import tree
from tracker.checks.sockets import bpf, common, fd_query, inet, netlink, packet, queue, tables, unix
from tracker.checks.sockets.records import InetSocket, NetlinkSocket, UnixSocket
from tracker.context import AuditContext
from tracker.procfs import DEFAULT_PROC_ROOT, OpenFd, Proc, ProcessGone
from tracker.rules import Finding

RULES = common.RULES + inet.RULES + unix.RULES + queue.RULES + netlink.RULES + packet.RULES

# The sock_diag table that lists a family's sockets (unbound unix and packet sockets included).
DIAG_TABLES = {socket.AF_UNIX: "unix", socket.AF_PACKET: "packet", socket.AF_NETLINK: "netlink"}
INET_DIAG_TABLES = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", inet.IPPROTO_UDPLITE: "udplite"}
# The families whose unlisted sockets CRIU asks for their namespace (sk-inet.c gen_uncon_sk,
# sk-netlink.c dump_one_netlink_fd); unix and packet sockets must be listed.
NAMESPACE_ASKED = (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK)
# Families Python's socket module may not name (linux/socket.h).
FAMILIES = {15: "AF_KEY", 21: "AF_RDS", 29: "AF_CAN", 30: "AF_TIPC", 31: "AF_BLUETOOTH", 38: "AF_ALG",
            40: "AF_VSOCK", 41: "AF_KCM", 42: "AF_QIPCRTR", 43: "AF_SMC", 44: "AF_XDP", 45: "AF_MCTP"}


def check_fd(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Iterator[Finding]:
    if _opened_with_o_path(ctx, open_fd):
        # dump_socket's first question (SO_DOMAIN) fails with EBADF: nothing else is asked.
        yield common.finding("socket.o_path", proc, open_fd,
                             f"socket:[{open_fd.inode}] is open with O_PATH: CRIU cannot ask it "
                             f"for its family (getsockopt fails with EBADF)")
        return
    yield from _check_kind(ctx, proc, open_fd)
    if (ctx.proc_root == DEFAULT_PROC_ROOT      # a fixture tree has no socket to ask
            and ctx.table("sockets.ebpf-filters", bpf.socket_filters_possible)
            and fd_query.has_ebpf_filter(proc.pid, open_fd.fd, open_fd.inode)):
        yield common.finding("socket.filter.ebpf", proc, open_fd,
                             f"socket:[{open_fd.inode}] has an eBPF filter, which SO_GET_FILTER "
                             f"cannot read back")


def _opened_with_o_path(ctx: AuditContext, open_fd: OpenFd) -> bool:
    try:
        return bool(open_fd.flags & os.O_PATH)
    except ProcessGone:
        if ctx.proc_root == DEFAULT_PROC_ROOT:
            raise
        return False    # a fixture tree without fdinfo files: its sockets were opened plainly


def _check_kind(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Iterator[Finding]:
    sock = tables.find_fd(ctx, proc, open_fd)
    if sock is None:
        yield from _check_unlisted(ctx, proc, open_fd)
    else:
        yield from _check_listed(ctx, proc, open_fd, sock, proc)


def _check_listed(ctx: AuditContext, proc: Proc, open_fd: OpenFd, sock: tables.Record,
                  lister: Proc) -> Iterator[Finding]:
    """A socket some table lists; `lister` lives in the namespace of that table."""
    if isinstance(sock, UnixSocket):
        yield from unix.check(ctx, proc, open_fd, sock, lister)
    elif isinstance(sock, InetSocket):
        yield from inet.check(proc, open_fd, sock)
    elif isinstance(sock, NetlinkSocket):
        yield from netlink.check(proc, open_fd, sock)
    else:
        yield from packet.check(proc, open_fd, sock)


def _check_unlisted(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Iterator[Finding]:
    found = fd_query.probe(proc.pid, open_fd.fd, open_fd.inode)
    family = _family_name(found.family)
    listing = _listing_table(found)
    error = tables.table(ctx, proc, listing).error if listing else None
    lister = _tree_process_in(ctx, proc, found.netns)
    # no table but its family's can list it: the others are not read for nothing
    listed = tables.find(ctx, lister, open_fd.inode, listing) if lister else None
    if listed is not None:
        yield from _check_listed(ctx, proc, open_fd, listed, lister)
    elif error:
        yield common.finding("socket.unreadable", proc, open_fd,
                             f"{family} socket:[{open_fd.inode}]: sock_diag cannot list its sockets "
                             f"({error})")
    elif found.family in NAMESPACE_ASKED and _external(ctx, found):
        yield common.finding("socket.external_netns", proc, open_fd,
                             f"{family} socket:[{open_fd.inode}] belongs to network namespace "
                             f"net:[{found.netns}], where no process of the dumped tree lives, "
                             f"and the tree's root has a network namespace of its own")
    elif found.family in fd_query.INET_FAMILIES:
        yield from inet.check_unlisted(proc, open_fd, found)
    elif found.family == socket.AF_NETLINK:
        yield netlink.check_unbound(proc, open_fd, found.protocol)   # only bound ones are listed
    elif listing:
        yield common.finding("socket.foreign_netns", proc, open_fd,
                             f"{family} socket:[{open_fd.inode}] belongs to a network namespace "
                             f"other than pid {proc.pid}'s, whose sockets CRIU does not collect")
    else:
        yield common.finding("socket.unknown_family", proc, open_fd,
                             f"socket:[{open_fd.inode}] of family {family} (type {found.type}, "
                             f"protocol {found.protocol}): CRIU cannot dump this family")


def _tree_process_in(ctx: AuditContext, proc: Proc, netns: int | None) -> Proc | None:
    """A process of the tree living in the socket's namespace, when CRIU collects that
    namespace's sockets (tree.tree_netns) and it is not proc's own (whose tables were
    already asked)."""
    holder = tree.tree_netns(ctx).collected.get(netns) if netns is not None else None
    if holder is None or holder == proc.pid or tree.netns_of(proc) == netns:
        return None
    return ctx.proc(holder)


def _external(ctx: AuditContext, found: fd_query.Probe) -> bool:
    """Whether CRIU's get_socket_ns refuses the unlisted socket."""
    spaces = tree.tree_netns(ctx)
    return spaces.root_has_own and found.netns is not None and found.netns not in spaces.known


def _listing_table(found: fd_query.Probe) -> str | None:
    """The sock_diag table that would list this socket if it were bound."""
    if found.family in DIAG_TABLES:
        return DIAG_TABLES[found.family]
    name = INET_DIAG_TABLES.get(found.protocol) if found.family in fd_query.INET_FAMILIES else None
    if name is None or found.type == socket.SOCK_RAW:
        return None
    return name + ("6" if found.family == socket.AF_INET6 else "")


def _family_name(family: int) -> str:
    try:
        return socket.AddressFamily(family).name
    except ValueError:
        return FAMILIES.get(family, f"family {family}")
