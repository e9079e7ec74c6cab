"""Unix sockets: stream, dgram and seqpacket, their peers and pending connections (CRIU's sk-unix.c).

A connection is dumped when both ends are in the tree. With its peer outside
the tree, a socket is "external": CRIU refuses it unless told so, and even
then (--ext-unix-sk) reconnects only datagram sockets to a named peer; any
other external socket must be named one by one with --external unix[INO].
A connection still waiting in a listener's queue is dumped when nothing was
written on it yet. A peer in flight (an fd queued in an SCM_RIGHTS message
on a socket of the tree) is dumped with that queue, so it counts as inside;
what the queues hold is queue.py's.

A socket bound to a relative name is saved as the directory its file is in now
(unix_resolve_name): the file's path, read through SIOCUNIXFILE, must still
end with the name, or CRIU cannot cut the name from it.
"""
from __future__ import annotations

import fcntl
import os
from typing import Iterator

from tracker.checks.sockets import fd_query, queue, tables
from tracker.checks.sockets.common import finding, holders
from tracker.checks.sockets.records import UnixSocket
from tracker.context import NOT_LOOKED_UP, AuditContext
from tracker.procfs import DEFAULT_PROC_ROOT, NAME_TOO_LONG, OpenFd, Proc
from tracker.rules import BLOCKER, INFO, OPTION, Finding, Rule

RULES = (
    Rule("socket.unix.listen", "A listening unix socket", INFO,
         "nothing to do; CRIU binds the name again on restore, pending connections included"),
    Rule("socket.unix.in_flight", "A unix connection its listener has not accepted yet", INFO,
         "nothing to do; CRIU connects it to the listener again on restore"),
    Rule("socket.unix.in_flight_data", "Data written on a unix connection not yet accepted", BLOCKER,
         "let the listener accept the connection before checkpointing (CRIU cannot read data "
         "queued on it)",
         criu_message="Non-empty write queue on an in-flight socket %#x"),
    Rule("socket.unix.in_flight_closed", "A unix listener holds a connection whose client closed",
         BLOCKER, "accept (and close) the pending connections before checkpointing",
         criu_message="Found a closed in-flight socket to %#x"),
    Rule("socket.unix.external_named",
         "A unix datagram socket connected to a named socket outside the tree", OPTION,
         "dump with --ext-unix-sk: the socket is connected to the name again on restore",
         option="--ext-unix-sk",
         criu_message="External socket is used. Consider using --ext-unix-sk option."),
    Rule("socket.unix.external_stream",
         "One end of a unix stream/seqpacket connection whose other end is outside the tree", OPTION,
         "checkpoint the peer's process too, or dump with --external unix[INO] and give the socket "
         "back with --inherit-fd on restore (--ext-unix-sk does not cover connections)",
         option="--external",
         criu_message="External socket is used. Consider using --ext-unix-sk option. / "
                      "Can't dump half of stream unix connection. name: %s peer name: %s"),
    Rule("socket.unix.external_unnamed",
         "A unix datagram socket connected to an unnamed socket outside the tree", OPTION,
         "checkpoint the peer's process too, or dump with --external unix[INO] and give the socket "
         "back with --inherit-fd on restore (--ext-unix-sk needs a named peer)",
         option="--external",
         criu_message="External socket is used. Consider using --ext-unix-sk option. / "
                      "Can't dump name-less external socket."),
    Rule("socket.unix.no_peer", "A unix socket whose peer is in no table of its namespace", BLOCKER,
         "close the socket before checkpointing", criu_message="Unix socket %u without peer %u"),
    Rule("socket.unix.unreachable_peer",
         "A unix socket whose peer is connected elsewhere and has no name", BLOCKER,
         "close the socket (or reconnect it) before checkpointing",
         criu_message="Unix socket %u with unreachable peer %u (%u)"),
    Rule("socket.unix.dangling", "A unix connection with no peer that was not shut down", BLOCKER,
         "close the socket before checkpointing", criu_message="Dangling connection %d"),
    Rule("socket.unix.name_moved", "A unix socket bound to a relative name whose file was moved "
         "or renamed since", BLOCKER,
         "move the socket file back to its name, or close the socket (bind it again) before "
         "checkpointing: CRIU finds the directory of a relative name from the file's path",
         criu_message="Unable too cut %s from %s"),
    Rule("socket.unix.unsupported", "A unix socket of a type or in a state CRIU does not know",
         BLOCKER, "close the socket before checkpointing",
         criu_message="Unknown state %d for unix socket %d"),
)

TYPES = {1: "stream", 2: "dgram", 5: "seqpacket"}
SOCK_DGRAM = 2
ESTABLISHED, CLOSE, LISTEN = 1, 7, 10
SHUTDOWN_BOTH = 3
SIOCUNIXFILE = 0x89E0   # SIOCPROTOPRIVATE: an O_PATH fd of a bound socket's file (Linux 4.11)
DELETED = " (deleted)"


def check(ctx: AuditContext, proc: Proc, open_fd: OpenFd, sock: UnixSocket,
          lister: Proc | None = None) -> Iterator[Finding]:
    """`lister` is a process of the socket's network namespace, when that is not proc's
    (a socket proc brought from a namespace another process of the tree lives in)."""
    lister = lister or proc
    if sock.type not in TYPES or sock.state not in (ESTABLISHED, CLOSE, LISTEN):
        yield finding("socket.unix.unsupported", proc, open_fd,
                      f"unix socket {_name(sock)} of type {sock.type} in state {sock.state}")
        return
    yield from _check_relative_name(ctx, proc, open_fd, sock)
    if sock.state == LISTEN:
        yield _listener(proc, open_fd, sock)
    elif sock.peer:
        yield from _connected(ctx, proc, open_fd, sock, lister)
    elif sock.state == ESTABLISHED and sock.type != SOCK_DGRAM:
        yield from _not_accepted(ctx, proc, open_fd, sock, lister)
    if queue.has_queue(sock):
        yield from queue.check(ctx, proc, open_fd, sock, f"unix {TYPES[sock.type]} socket {_name(sock)}")


def _listener(proc: Proc, open_fd: OpenFd, sock: UnixSocket) -> Finding:
    text = f"unix {TYPES[sock.type]} listener {_name(sock)}"
    if 0 in sock.icons:
        return finding("socket.unix.in_flight_closed", proc, open_fd,
                       f"{text} holds {sock.icons.count(0)} connection(s) whose client closed "
                       f"before accept()")
    pending = f", {len(sock.icons)} connection(s) not yet accepted" if sock.icons else ""
    return finding("socket.unix.listen", proc, open_fd, text + pending)


def _connected(ctx: AuditContext, proc: Proc, open_fd: OpenFd, sock: UnixSocket,
               lister: Proc) -> Iterator[Finding]:
    kind = TYPES[sock.type]
    peer = tables.table(ctx, lister, "unix").get(sock.peer)
    if not isinstance(peer, UnixSocket):
        yield finding("socket.unix.no_peer", proc, open_fd,
                      f"unix {kind} socket {_name(sock)} is connected to socket:[{sock.peer}], "
                      f"which is in no unix table of its network namespace")
        return
    if peer.peer != sock.inode and peer.name is None:
        yield finding("socket.unix.unreachable_peer", proc, open_fd,
                      f"unix {kind} socket {_name(sock)} is connected to the unnamed "
                      f"socket:[{peer.inode}], which is connected elsewhere")
        return
    target = f"socket:[{peer.inode}]"
    if ctx.tree_holders.get(target) or target in queue.in_flight(ctx):
        return          # both ends are dumped
    outside = _outside(ctx, target, proc, open_fd)
    if outside is None:
        held = f"outside the tree ({NOT_LOOKED_UP})"
    elif outside:
        held = f"held by {holders(outside)} outside the tree"
    else:
        held = "which no process holds (it may be in flight in a queue outside the tree)"
    text = f"unix {kind} socket {_name(sock)} is connected to {target} {_name(peer)}, {held}"
    if peer.type != SOCK_DGRAM:
        yield _external(proc, open_fd, "socket.unix.external_stream", text, sock)
    elif peer.name is None:
        yield _external(proc, open_fd, "socket.unix.external_unnamed", text, sock)
    else:
        yield finding("socket.unix.external_named", proc, open_fd, text)


def _external(proc: Proc, open_fd: OpenFd, code: str, text: str, sock: UnixSocket) -> Finding:
    value = f"unix[{sock.inode}]"
    return finding(code, proc, open_fd, text, option_value=value,
                   remedy=f"checkpoint the peer's process too, or dump with --external {value} and "
                          f"give the socket back with --inherit-fd on restore")


def _not_accepted(ctx: AuditContext, proc: Proc, open_fd: OpenFd, sock: UnixSocket,
                  lister: Proc) -> Iterator[Finding]:
    """A connected stream socket with no peer: queued on a listener, or its peer closed."""
    kind = TYPES[sock.type]
    listener = tables.unix_listeners_by_client(ctx, lister).get(sock.inode)
    if listener is None:
        if sock.shutdown != SHUTDOWN_BOTH:
            yield finding("socket.unix.dangling", proc, open_fd,
                          f"unix {kind} socket {_name(sock)} is connected to nothing")
        return          # its peer closed: CRIU dumps it shut down
    target = f"socket:[{listener.inode}]"
    inside = ctx.tree_holders.get(target)
    outside = None if inside else _outside(ctx, target, proc, open_fd)
    where = (f"outside the tree, {NOT_LOOKED_UP}" if not inside and outside is None
             else f"held by {holders(inside or outside)}")
    text = f"unix {kind} connection to {_name(listener)} ({where}) is not accepted yet"
    if sock.wqlen:
        yield finding("socket.unix.in_flight_data", proc, open_fd,
                      f"{text} and has data written on it ({sock.wqlen} bytes queued)")
    else:
        yield finding("socket.unix.in_flight", proc, open_fd, text)


def _check_relative_name(ctx: AuditContext, proc: Proc, open_fd: OpenFd,
                         sock: UnixSocket) -> Iterator[Finding]:
    if sock.name is None or sock.name.startswith(("/", "@")):
        return          # unbound, absolute or abstract: saved as it is
    if ctx.proc_root != DEFAULT_PROC_ROOT:
        return          # a fixture's socket has no file to ask
    name = sock.name.split("\0", 1)[0]     # CRIU reads it as a C string: to its first NUL
    path = _socket_file(proc.pid, open_fd.fd, sock.inode)
    if path is not None and not _ends_with(path, name):
        yield finding("socket.unix.name_moved", proc, open_fd,
                      f"unix {TYPES[sock.type]} socket bound to the relative name {name!r}, "
                      f"whose file is now {path}: the name no longer ends its path")


def _socket_file(pid: int, fd: int, inode: int) -> str | None:
    """The path of a bound socket's file as CRIU reads it (SIOCUNIXFILE, then readlink, the
    " (deleted)" mark dropped); None on a kernel without SIOCUNIXFILE; NAME_TOO_LONG."""
    with fd_query.borrowed(pid, fd, inode) as sock:
        try:
            file = fcntl.ioctl(sock.fileno(), SIOCUNIXFILE)
        except OSError:
            return None     # CRIU falls back to its older method there
    try:
        return os.readlink(f"/proc/self/fd/{file}").removesuffix(DELETED)
    except OSError:
        return NAME_TOO_LONG    # CRIU cannot read it either (read_fd_link)
    finally:
        os.close(file)


def _ends_with(path: str, name: str) -> bool:
    """Whether the name ends the path after a "/", as util.c cut_path_ending asks."""
    ending = name.removeprefix("./")
    cut = len(path) - len(ending)
    return cut >= 1 and path[cut:] == ending and path[cut - 1] == "/"


def _outside(ctx: AuditContext, target: str, proc: Proc, open_fd: OpenFd) -> set[int] | None:
    """The holders outside the tree, crwatch aside: its copies of files in flight are its own.
    The socket's own fd is the witness that the holders were read after it was made. None:
    the audit does not look holders up."""
    outside = ctx.holders_outside(target, witness=(proc.pid, open_fd.target))
    return None if outside is None else outside - {os.getpid()}


def _name(sock: UnixSocket) -> str:
    return sock.name if sock.name is not None else "(unnamed)"
