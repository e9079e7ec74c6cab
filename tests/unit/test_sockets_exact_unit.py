"""sockets.exact: one socket asked of sock_diag alone gives the very record its table's dump gives."""
from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from contextlib import ExitStack
from typing import Iterator

import pytest

from tracker.checks.sockets import exact, tables
from tracker.context import AuditContext
from tracker.procfs import OpenFd, Proc

pytestmark = pytest.mark.root
NAME = "\0crwatch-exact-test-%d" % os.getpid()


def _kinds(stack: ExitStack) -> Iterator[tuple[str, socket.socket]]:
    def keep(sock: socket.socket) -> socket.socket:
        return stack.enter_context(sock)

    listener = keep(socket.create_server(("127.0.0.1", 0)))
    yield "tcp listener", listener
    client = keep(socket.create_connection(listener.getsockname()))
    yield "tcp client", client
    yield "tcp accepted", keep(listener.accept()[0])
    yield "tcp listener, any address", keep(socket.create_server(("0.0.0.0", 0)))
    listener6 = keep(socket.create_server(("::1", 0), family=socket.AF_INET6))
    yield "tcp6 listener", listener6
    yield "tcp6 client", keep(socket.create_connection(listener6.getsockname()[:2]))
    mapped = keep(socket.socket(socket.AF_INET6))
    mapped.connect(("::ffff:127.0.0.1", listener.getsockname()[1]))
    yield "tcp6 client to a v4-mapped address", mapped
    udp = keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    udp.bind(("127.0.0.1", 0))
    yield "udp bound", udp
    connected = keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    connected.connect(udp.getsockname())
    yield "udp connected", connected
    udp6 = keep(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
    udp6.bind(("::", 0))
    yield "udp6 bound to any address", udp6
    stream, other = socket.socketpair()
    keep(other)
    yield "unix stream pair", keep(stream)
    dgram, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    keep(other)
    other.send(b"queued")
    yield "unix dgram pair with a queued message", keep(dgram)
    unix_listener = keep(socket.socket(socket.AF_UNIX))
    unix_listener.bind(NAME)
    unix_listener.listen(4)
    queued = keep(socket.socket(socket.AF_UNIX))
    queued.connect(NAME)
    yield "unix listener with a queued connection", unix_listener
    yield "unix client not accepted yet", queued
    yield "unix unbound", keep(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))


def _own_namespace() -> tables.Namespace:
    return tables.Namespace(Proc(os.getpid()).namespace("net"))


def test_a_socket_asked_alone_is_the_record_its_table_lists():
    me = Proc(os.getpid())
    netns = exact.namespace_inode(me.namespace("net"))
    with ExitStack() as stack:
        for kind, sock in _kinds(stack):
            inode = os.fstat(sock.fileno()).st_ino
            alone = exact.lookup(me.pid, sock.fileno(), inode, netns, None)
            assert alone is not None, kind
            assert alone == _own_namespace().find(me, inode), kind


def test_what_no_exact_request_answers_is_left_to_the_table():
    me = Proc(os.getpid())
    netns = exact.namespace_inode(me.namespace("net"))
    with socket.socket() as unbound, \
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as netlink:
        netlink.bind((0, 0))
        for sock in (unbound, netlink):
            assert exact.lookup(me.pid, sock.fileno(), os.fstat(sock.fileno()).st_ino, netns, None) is None
        # A namespace other than the socket's: its dump would not list it either.
        assert exact.lookup(me.pid, netlink.fileno(), os.fstat(netlink.fileno()).st_ino, netns + 1,
                            None) is None


def test_a_socket_of_another_namespace_is_asked_inside_it():
    holder = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1"', sys.executable,
         "import socket, time\n"
         "server = socket.create_server(('127.0.0.1', 0))\n"
         "client = socket.create_connection(server.getsockname())\n"
         "print(server.fileno(), client.fileno(), flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        fds = [int(word) for word in holder.stdout.readline().split()]  # type: ignore[union-attr]
        proc = Proc(holder.pid)
        space = proc.namespace("net")
        assert space != Proc(os.getpid()).namespace("net")
        for fd in fds:
            inode = os.stat(f"/proc/{holder.pid}/fd/{fd}").st_ino
            alone = exact.lookup(holder.pid, fd, inode, exact.namespace_inode(space),
                                 f"/proc/{holder.pid}/ns/net")
            assert alone is not None
            assert alone == tables.Namespace(space).find(proc, inode)
    finally:
        holder.kill()
        holder.wait()


def _context(me: Proc, open_fds: list[OpenFd]) -> AuditContext:
    ctx = AuditContext(root_pid=me.pid, tree_pids={me.pid})
    ctx.tree_fds[me.pid] = open_fds
    return ctx


def test_a_tree_with_few_sockets_reads_no_table():
    me = Proc(os.getpid())
    with socket.create_server(("127.0.0.1", 0)) as listener:
        open_fd = OpenFd(me, listener.fileno(), me.readlink(f"fd/{listener.fileno()}"))
        ctx = _context(me, [open_fd])
        found = tables.find_fd(ctx, me, open_fd)
        assert found is not None and found.inode == open_fd.inode
        assert tables.namespace(ctx, me).tables == {}


def test_a_tree_with_many_sockets_reads_the_table():
    me = Proc(os.getpid())
    with ExitStack() as stack:
        many = [stack.enter_context(socket.socket()) for _ in range(exact.EXACT_AT_MOST + 1)]
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        open_fds = [OpenFd(me, sock.fileno(), me.readlink(f"fd/{sock.fileno()}"))
                    for sock in many + [listener]]
        ctx = _context(me, open_fds)
        found = tables.find_fd(ctx, me, open_fds[-1])
        assert found is not None and found.inode == open_fds[-1].inode
        assert "tcp" in tables.namespace(ctx, me).tables


@pytest.mark.parametrize("family, table", [(socket.AF_INET, "tcp"), (socket.AF_INET6, "tcp6")])
def test_a_socket_no_table_lists_is_looked_for_in_its_own_table_alone(family, table):
    me = Proc(os.getpid())
    with socket.socket(family) as unbound:   # never bound: no table lists it
        open_fd = OpenFd(me, unbound.fileno(), me.readlink(f"fd/{unbound.fileno()}"))
        ctx = _context(me, [open_fd])
        assert tables.find_fd(ctx, me, open_fd) is None
        assert set(tables.namespace(ctx, me).tables) == {table}


def test_a_socket_of_a_table_read_for_another_is_still_found():
    me = Proc(os.getpid())
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.socket() as unbound:
        open_fds = [OpenFd(me, sock.fileno(), me.readlink(f"fd/{sock.fileno()}"))
                    for sock in (unbound, listener)]
        ctx = _context(me, open_fds)
        assert tables.find_fd(ctx, me, open_fds[0]) is None
        assert tables.find(ctx, me, open_fds[1].inode).inode == open_fds[1].inode


def test_a_socket_closed_before_it_is_asked_is_left_to_the_table():
    me = Proc(os.getpid())
    sock = socket.create_server(("127.0.0.1", 0))
    fd, inode = sock.fileno(), os.fstat(sock.fileno()).st_ino
    sock.close()
    assert exact.lookup(me.pid, fd, inode, exact.namespace_inode(me.namespace("net")), None) is None


def test_a_listener_with_a_long_queue_is_answered_whole():
    me = Proc(os.getpid())
    pending = 1100      # 4,400 bytes of client inodes: more than a page
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, pending + 256), max(hard, pending + 256)))
    with ExitStack() as stack:
        listener = stack.enter_context(socket.socket(socket.AF_UNIX))
        listener.bind(NAME + "-busy")
        listener.listen(pending)
        for _ in range(pending):
            stack.enter_context(socket.socket(socket.AF_UNIX)).connect(NAME + "-busy")
        open_fd = OpenFd(me, listener.fileno(), me.readlink(f"fd/{listener.fileno()}"))
        alone = exact.lookup(me.pid, open_fd.fd, open_fd.inode, exact.namespace_inode(me.namespace("net")),
                             None)
        assert alone == _own_namespace().find(me, open_fd.inode)
        assert len(alone.icons) == pending    # type: ignore[union-attr]
