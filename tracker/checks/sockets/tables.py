"""Which socket an inode is: the socket tables of one network namespace, each read once per audit.

A namespace (the link text of /proc/PID/ns/net) gets its tables on first
use, in the order below, through the first process of the tree that lives
there: a tree holding only unix sockets never lists TCP. sock_diag gives
unix, TCP, UDP, UDP-Lite, netlink and packet sockets; /proc/PID/net the
raw and ping ones (no diag module for them here). A table that cannot be
read keeps its error, so each socket of that family can say so. A tree holding
few sockets asks for each one alone instead (exact.py), and reads a table only
for what that cannot answer.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Union

from tracker.checks.sockets import diag, exact, procnet
from tracker.checks.sockets.records import TCP_LISTEN, InetSocket, NetlinkSocket, PacketSocket, UnixSocket
from tracker.context import AuditContext
from tracker.procfs import DEFAULT_PROC_ROOT, OpenFd, Proc, ProcessGone

# The audit's decision (an AuditContext table): are sockets asked alone?
ASKED_ALONE = "sockets-alone"
Record = Union[InetSocket, UnixSocket, NetlinkSocket, PacketSocket]
Builder = Callable[[Proc, str], "Table"]


class Table:
    """Sockets by inode, decoded on first use."""

    def __init__(self, entries: dict[int, object] | None = None,
                 decode: Callable[[object], Record] | None = None, error: str | None = None):
        self.entries: dict[int, object] = {} if entries is None else entries
        self.decode = decode or _as_read
        self.error = error          # why the table could not be read
        self._decoded: dict[int, Record] = {}

    def get(self, inode: int) -> Record | None:
        found = self._decoded.get(inode)
        if found is None:
            entry = self.entries.get(inode)
            if entry is None:
                return None
            found = self._decoded[inode] = self.decode(entry)
        return found


def _as_read(entry: object) -> Record:
    """A table whose entries are records already (/proc/net's)."""
    return entry  # type: ignore[return-value]


def _diag_source(query: Callable[[], diag.Query]) -> Builder:
    def build(proc: Proc, space: str) -> Table:
        asked = query()
        try:
            return Table(diag.dump(asked, _inside(proc, space)), asked.decode)  # type: ignore[arg-type]
        except diag.DiagUnavailable as error:
            if not proc.path.exists():      # its namespace went with it: not a table error
                raise ProcessGone(proc.pid) from None
            return Table(error=str(error))
    return build


def _proc_source(name: str, protocol: str, version: int) -> Builder:
    def build(proc: Proc, space: str) -> Table:
        return Table(procnet.parse_inet_table(procnet.read_net_file(proc, name), protocol, version))
    return build


# Unix first: most sockets are unix sockets.
SOURCES: dict[str, Builder] = {
    "unix": _diag_source(diag.unix_query),
    "tcp": _diag_source(lambda: diag.inet_query("TCP", 4)),
    "tcp6": _diag_source(lambda: diag.inet_query("TCP", 6)),
    "udp": _diag_source(lambda: diag.inet_query("UDP", 4)),
    "udp6": _diag_source(lambda: diag.inet_query("UDP", 6)),
    "netlink": _diag_source(diag.netlink_query),
    "packet": _diag_source(diag.packet_query),
    **{name: _proc_source(name, protocol, version) for name, protocol, version in procnet.PROC_TABLES},
    "udplite": _diag_source(lambda: diag.inet_query("UDPLITE", 4)),
    "udplite6": _diag_source(lambda: diag.inet_query("UDPLITE", 6)),
}


class Namespace:
    """The tables of one network namespace, each read on first use."""

    def __init__(self, space: str):
        self.space = space
        self.tables: dict[str, Table] = {}
        self._holding: dict[int, Table] = {}      # inode -> the table that lists it
        self._asked: dict[int, Record] = {}       # inode -> its record, asked alone
        self._unread = list(SOURCES)

    def table(self, proc: Proc, source: str) -> Table:
        found = self.tables.get(source)
        if found is None:
            found = self.tables[source] = SOURCES[source](proc, self.space)
            self._holding.update(dict.fromkeys(found.entries, found))
            self._unread.remove(source)
        return found

    def find(self, proc: Proc, inode: int, source: str | None = None) -> Record | None:
        """The socket with this inode; `source`: the one table that can list it, when known
        (exact.asked), else every table is read in turn until one lists it."""
        asked = self._asked.get(inode)
        if asked is not None:
            return asked
        while True:
            holder = self._holding.get(inode)
            if holder is not None:
                return holder.get(inode)
            if source is not None:
                return self.table(proc, source).get(inode)
            if not self._unread:
                return None
            self.table(proc, self._unread[0])

    def find_alone(self, proc: Proc, open_fd: OpenFd) -> tuple[Record | None, str | None]:
        """The socket open_fd holds, asked alone (None where only a table can tell), and
        the table that can list it when known."""
        holder = self._holding.get(open_fd.inode)
        if holder is not None:
            return holder.get(open_fd.inode), None
        found = self._asked.get(open_fd.inode)
        if found is not None:
            return found, None
        found, source = exact.asked(proc.pid, open_fd.fd, open_fd.inode,
                                    exact.namespace_inode(self.space), _inside(proc, self.space))
        if found is not None:
            self._asked[open_fd.inode] = found
        return found, source


def namespace(ctx: AuditContext, proc: Proc) -> Namespace:
    """proc's network namespace, shared by every process of the tree that lives there."""
    def of_process() -> Namespace:
        space = proc.namespace("net")
        return ctx.table(("sockets", space), lambda: Namespace(space))
    return ctx.table(("sockets-of", proc.pid), of_process)


def table(ctx: AuditContext, proc: Proc, source: str) -> Table:
    return namespace(ctx, proc).table(proc, source)


def find(ctx: AuditContext, proc: Proc, inode: int, source: str | None = None) -> Record | None:
    """The socket with this inode in proc's network namespace, or None when no table lists it
    (`source`: the one table that can, when known)."""
    return namespace(ctx, proc).find(proc, inode, source)


def find_fd(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Record | None:
    """The socket open_fd holds, as find() gives it; asked alone when the tree holds few sockets."""
    space = namespace(ctx, proc)
    found, source = space.find_alone(proc, open_fd) if _few_sockets(ctx) else (None, None)
    return found if found is not None else space.find(proc, open_fd.inode, source)


def _few_sockets(ctx: AuditContext) -> bool:
    def count() -> bool:
        if ctx.proc_root != DEFAULT_PROC_ROOT:
            return False        # a fixture tree has no fd to ask
        return exact.wanted(sum(open_fd.target.startswith("socket:[") for fds in ctx.tree_fds.values()
                                 for open_fd in fds))
    return ctx.table(ASKED_ALONE, count)


def unix_listeners_by_client(ctx: AuditContext, proc: Proc) -> dict[int, UnixSocket]:
    """client inode -> the listening unix socket whose accept queue holds that connection."""
    def build() -> dict[int, UnixSocket]:
        unix = table(ctx, proc, "unix")
        # Only listeners are decoded: the state byte finds them in the raw replies.
        listeners = (unix.get(inode) for inode, body in unix.entries.items()
                     if body[diag.UNIX_STATE_OFFSET] == TCP_LISTEN)  # type: ignore[index]
        return {client: listener for listener in listeners if isinstance(listener, UnixSocket)
                for client in listener.icons if client}
    return ctx.table(("unix-icons", namespace(ctx, proc).space), build)


def _inside(proc: Proc, space: str) -> str | None:
    """The namespace to ask a table of `space` in: None for crwatch's own."""
    return None if space == _own_netns() else str(proc.path / "ns" / "net")


@functools.cache
def _own_netns() -> str:
    return os.readlink("/proc/self/ns/net")
