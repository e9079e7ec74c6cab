"""What waits in a unix socket's receive queue (CRIU's sk-queue.c, dump_sk_queue).

CRIU reads the queue of every unix socket that has one (UNIX_DIAG_RQLEN, not
a listener) with recvmsg(MSG_PEEK), message by message from the first
(SO_PEEK_OFF), and refuses every control message but SCM_RIGHTS
(dump_packet_cmsg): a receiver with SO_PASSCRED or SO_PASSPIDFD gets
credentials or a pidfd with every queued message, one with SO_TIMESTAMP* a
timestamp with every datagram. The files of SCM_RIGHTS messages (fds in
flight) are dumped as CRIU's own open files (dump_my_file): each must be
dumpable itself, and a socket in flight is dumped with the tree.

crwatch reads the queue the same way, from a copy of the fd: a peek consumes
nothing, and the peek offset is put back as it was. Each file in flight
arrives as an fd of crwatch's own, is judged by the check that owns its
kind, and is closed.
"""
from __future__ import annotations

import array
import os
import re
import socket
from typing import Iterator, NamedTuple

from tracker.checks import fd_owners
from tracker.checks.catalogue import catalogue
from tracker.checks.sockets import fd_query, tables
from tracker.checks.sockets.common import finding
from tracker.checks.sockets.records import UnixSocket
from tracker.context import AuditContext
from tracker.procfs import DEFAULT_PROC_ROOT, OpenFd, Proc, ProcessGone
from tracker.rules import BLOCKER, INFO, Finding, Rule

RULES = (
    Rule("socket.unix.queue_control",
         "Messages queued on a unix socket carry control data other than fds (credentials, "
         "pidfds, timestamps)", BLOCKER,
         "have the receiver read its queue, or turn the option off on the receiving socket "
         "(SO_PASSCRED, SO_PASSPIDFD, SO_PASSSEC, SO_TIMESTAMP*), before checkpointing: CRIU "
         "saves only data and fds in flight",
         criu_message="Control messages in queue, not supported"),
    Rule("socket.unix.queue_fds", "Files in flight (SCM_RIGHTS) queued on a unix socket", INFO,
         "nothing to do: CRIU dumps the files in flight with the queue and sends them again on "
         "restore"),
)

SO_PEEK_OFF, SCM_PIDFD = 42, 76
HEADER_ROOM = 32        # CRIU reads at most SO_SNDBUF minus what the kernel keeps for headers
CMSG_MAX_SIZE = 1024    # CRIU's control buffer: more fds than fit are cut off for both
LISTEN = 10
# What makes the kernel add each control message on receipt.
CONTROL = {
    socket.SCM_CREDENTIALS: "SCM_CREDENTIALS (SO_PASSCRED)",
    SCM_PIDFD: "SCM_PIDFD (SO_PASSPIDFD)",
    3: "SCM_SECURITY (SO_PASSSEC)",
    29: "SCM_TIMESTAMP (SO_TIMESTAMP)", 35: "SCM_TIMESTAMPNS (SO_TIMESTAMPNS)",
    37: "SCM_TIMESTAMPING (SO_TIMESTAMPING)", 63: "SCM_TIMESTAMP (SO_TIMESTAMP_NEW)",
    64: "SCM_TIMESTAMPNS (SO_TIMESTAMPNS_NEW)", 65: "SCM_TIMESTAMPING (SO_TIMESTAMPING_NEW)",
}
_FD_PREFIX = re.compile(r"^fd \d+: ")


class Queued(NamedTuple):
    """One peek through a socket's queue."""

    control: tuple[str, ...] = ()       # control messages CRIU refuses, by name
    in_flight: tuple[str, ...] = ()     # the link text of each file in flight
    findings: tuple[Finding, ...] = ()  # what the checks say of those files (crwatch's copies)


NOTHING = Queued()


def has_queue(sock: UnixSocket) -> bool:
    """CRIU reads the queue of a socket with queued bytes that is not a listener."""
    return bool(sock.rqlen) and sock.state != LISTEN


def check(ctx: AuditContext, proc: Proc, open_fd: OpenFd, sock: UnixSocket,
          what: str) -> Iterator[Finding]:
    """The findings of one socket's queue; `what` names the socket."""
    queued = queue_of(ctx, proc.pid, open_fd.fd, sock.inode)
    if queued.control:
        yield finding("socket.unix.queue_control", proc, open_fd,
                      f"{what} has {sock.rqlen} bytes queued whose messages carry "
                      f"{', '.join(queued.control)}")
    if queued.in_flight:
        yield finding("socket.unix.queue_fds", proc, open_fd,
                      f"{what} has {len(queued.in_flight)} file(s) in flight in its queue: "
                      f"{', '.join(queued.in_flight)}")
    rules = catalogue()
    for inner in queued.findings:
        rule = rules[inner.code]
        if rule.criu == INFO:
            continue
        yield finding(inner.code, proc, open_fd,
                      f"in flight in the queue of {what}: {_FD_PREFIX.sub('', inner.message)}",
                      option_value=inner.option_value,
                      remedy="have the receiver take the files in flight off the queue first; "
                             + (inner.remedy or rule.remedy))


def queue_of(ctx: AuditContext, pid: int, fd: int, inode: int) -> Queued:
    """The queue of pid's fd, read once per audit."""
    queues = ctx.table("sockets.unix-queues", dict)
    reading = ctx.table("sockets.unix-queues-reading", set)
    if inode not in queues:
        queues[inode] = NOTHING     # a socket in flight in its own queue is read once
        reading.add(inode)
        try:
            queues[inode] = _peek(ctx, pid, fd, inode)
        finally:
            reading.discard(inode)
    return queues[inode]


def in_flight(ctx: AuditContext) -> set[str]:
    """The link text of every file in flight in the queues of the tree's unix sockets, and in
    the queues of the sockets in flight there: CRIU dumps them all.

    Read once per audit. A file in flight is judged while its queue is being read: what it
    asks then is gathered afresh (the queues read so far, and the files in flight of the
    ones being read), and not kept.
    """
    if ctx.table("sockets.unix-queues-reading", set):
        return _gather_in_flight(ctx)
    return ctx.table("sockets.unix-in-flight", lambda: _gather_in_flight(ctx))


def _gather_in_flight(ctx: AuditContext) -> set[str]:
    queues = ctx.table("sockets.unix-queues", dict)
    waiting = []
    for pid, open_fd in _queued_tree_sockets(ctx):
        try:
            waiting.append(queue_of(ctx, pid, open_fd.fd, open_fd.inode))
        except ProcessGone:
            continue        # closed meanwhile: its own check says so, if it still runs
    found: set[str] = set()
    while waiting:
        queued = waiting.pop()
        for target in queued.in_flight:
            if target not in found:
                found.add(target)
                nested = queues.get(_socket_inode(target))
                if nested is not None:
                    waiting.append(nested)
    return found


def _queued_tree_sockets(ctx: AuditContext) -> Iterator[tuple[int, OpenFd]]:
    for pid, fds in ctx.tree_fds.items():
        proc = ctx.proc(pid)
        for open_fd in fds:
            if open_fd.kind != "socket":
                continue
            try:
                sock = tables.find(ctx, proc, open_fd.inode)
            except ProcessGone:
                continue
            if isinstance(sock, UnixSocket) and has_queue(sock):
                yield pid, open_fd


def _socket_inode(target: str) -> int | None:
    return int(target[8:-1]) if target.startswith("socket:[") else None


# ---------------------------------------------------------------- the peek

def _peek(ctx: AuditContext, pid: int, fd: int, inode: int) -> Queued:
    if ctx.proc_root != DEFAULT_PROC_ROOT:
        return NOTHING              # a fixture tree has no queue to read
    with fd_query.borrowed(pid, fd, inode) as sock:
        original = sock.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
        size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - HEADER_ROOM
        sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        received: list[int] = []
        try:
            control, rights = _read(sock, size, received)
        except BaseException:
            _close(received)
            raise
        finally:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, original)
    try:
        targets = tuple(os.readlink(f"/proc/self/fd/{copy}") for copy in rights)
        # Known before the files are judged: a socket in flight may ask for its peer here.
        ctx.table("sockets.unix-queues", dict)[inode] = Queued(control, targets)
        judged = tuple(found for copy, target in zip(rights, targets)
                       for found in _judge(ctx, copy, target))
    finally:
        _close(received)
    return Queued(control, targets, judged)


def _read(sock: socket.socket, size: int, received: list[int]) -> tuple[tuple[str, ...], list[int]]:
    """The control messages CRIU refuses, and the files in flight as fds of this process,
    message by message as CRIU's dump_sk_queue peeks them. Every fd the kernel installs
    (files in flight, pidfds) is added to `received` for the caller to close."""
    control: set[str] = set()
    rights: list[int] = []
    flags = socket.MSG_PEEK | socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
    while True:
        try:
            data, ancillary, _, _ = sock.recvmsg(size, CMSG_MAX_SIZE, flags)
        except BlockingIOError:
            break
        received.extend(_received_fds(ancillary))
        if not data:
            break                   # CRIU stops at an empty message too
        for _, kind, _ in ancillary:
            if kind != socket.SCM_RIGHTS:
                control.add(CONTROL.get(kind, f"control message type {kind}"))
        rights.extend(_rights(ancillary))
    return tuple(sorted(control)), rights


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _rights(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    return [copy for _, kind, data in ancillary if kind == socket.SCM_RIGHTS
            for copy in _ints(data)]


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """Every fd the peek installed in this process: the files in flight and the pidfds."""
    return [copy for _, kind, data in ancillary if kind in (socket.SCM_RIGHTS, SCM_PIDFD)
            for copy in _ints(data)]


def _ints(data: bytes) -> list[int]:
    fds = array.array("i")
    fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return list(fds)


def _judge(ctx: AuditContext, copy: int, target: str) -> list[Finding]:
    """What the check that owns its kind says of a file in flight."""
    own = Proc(os.getpid())
    return list(fd_owners.check_fd(ctx, own, OpenFd(own, copy, target)))
