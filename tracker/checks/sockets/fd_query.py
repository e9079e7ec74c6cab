"""What no table shows, read from a copy of the socket fd (pidfd_getfd, as root).

What CRIU reads with getsockopt and may refuse: UDP_CORK, the socket filter
(SO_GET_FILTER: an eBPF filter cannot be read back), the bound device of a
link-local IPv6 socket (SO_BINDTODEVICE); and sockets that are in no table
at all: unbound inet and netlink sockets, sockets of another network
namespace (and which one: SIOCGSKNS), and families CRIU does not know
(AF_VSOCK, AF_XDP, MPTCP...).
CRIU asks the fd itself (SO_DOMAIN, TCP_INFO) for those; so do we. The copy
is closed at once; the holder never notices.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
from contextlib import contextmanager
from typing import Iterator, NamedTuple

from tracker.procfs import AccessDenied, ProcessGone

SYS_PIDFD_GETFD = 438   # the same number on every architecture but alpha
SOL_UDP, UDP_CORK = 17, 1
SO_GET_FILTER = 26      # SO_ATTACH_FILTER's number, read back
SIOCGSKNS = 0x894C      # an fd of the socket's network namespace
IFNAMSIZ = 16
IPPROTO_UDPLITE = 136
INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class Probe(NamedTuple):
    family: int
    type: int
    protocol: int
    tcp_state: int | None = None     # from TCP_INFO, for TCP sockets
    corked: bool = False             # UDP_CORK, for UDP and UDP-Lite sockets
    local: str = ""                  # "address:port" for inet sockets; "" when unbound
    netns: int | None = None         # the inode of the socket's network namespace (SIOCGSKNS)


def probe(pid: int, fd: int, inode: int) -> Probe:
    with borrowed(pid, fd, inode) as sock:
        family, kind, protocol = (sock.getsockopt(socket.SOL_SOCKET, option)
                                  for option in (socket.SO_DOMAIN, socket.SO_TYPE, socket.SO_PROTOCOL))
        netns = netns_of(sock.fileno())
        if family not in INET_FAMILIES:
            return Probe(family, kind, protocol, netns=netns)
        # Re-wrap the same copy with its real family, so getsockname() decodes it.
        # A raw socket of protocol TCP or UDP answers neither TCP_INFO nor UDP_CORK (CRIU
        # asks them only when the type is not SOCK_RAW).
        raw = kind == socket.SOCK_RAW
        with socket.socket(family, kind, protocol, fileno=sock.detach()) as inet:
            return Probe(family, kind, protocol, netns=netns,
                         tcp_state=_tcp_state(inet) if protocol == socket.IPPROTO_TCP and not raw else None,
                         corked=_corked(inet) if protocol in (socket.IPPROTO_UDP, IPPROTO_UDPLITE)
                         and not raw else False,
                         local=_local(inet))


def udp_corked(pid: int, fd: int, inode: int) -> bool:
    with borrowed(pid, fd, inode) as sock:
        return _corked(sock)


def has_ebpf_filter(pid: int, fd: int, inode: int) -> bool:
    """Whether an eBPF filter (SO_ATTACH_BPF) is attached: SO_GET_FILTER, asked for the
    filter's length as CRIU asks, fails with EACCES since the kernel keeps no classic
    program to give back (sk_get_filter); a classic filter, or none, answers."""
    with borrowed(pid, fd, inode) as sock:
        length = ctypes.c_uint(0)
        if _libc.getsockopt(sock.fileno(), socket.SOL_SOCKET, SO_GET_FILTER, None,
                            ctypes.byref(length)) == 0:
            return False
    code = ctypes.get_errno()
    if code == errno.EACCES:
        return True
    raise OSError(code, f"getsockopt(SO_GET_FILTER): {os.strerror(code)}")


def bound_device(pid: int, fd: int, inode: int) -> str:
    """The interface the socket is bound to (SO_BINDTODEVICE); "" when none."""
    with borrowed(pid, fd, inode) as sock:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, IFNAMSIZ) \
            .split(b"\0", 1)[0].decode(errors="replace")


@contextmanager
def borrowed(pid: int, fd: int, inode: int) -> Iterator[socket.socket]:
    """A copy of pid's fd as a socket object. Its family is a placeholder: Python cannot
    wrap every family (AF_XDP...), and getsockopt() does not care."""
    copy = getfd(pid, fd)
    try:
        if os.fstat(copy).st_ino != inode or fcntl.fcntl(copy, fcntl.F_GETFL) & os.O_PATH:
            # The fd number now names another file, or an O_PATH open of the same
            # socket (which answers no getsockopt): not the fd that was listed.
            raise ProcessGone(pid)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=copy)
    except BaseException:
        os.close(copy)
        raise
    with sock:
        yield sock


def getfd(pid: int, fd: int) -> int:
    """A copy of pid's fd in this process (the same open file); the caller closes it."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise ProcessGone(pid) from None
    try:
        copy = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        code = ctypes.get_errno()
    finally:
        os.close(pidfd)
    if copy >= 0:
        return copy
    if code in (errno.EBADF, errno.ESRCH):
        raise ProcessGone(pid)
    if code in (errno.EPERM, errno.EACCES):
        raise AccessDenied(pid, f"fd/{fd} (pidfd_getfd)", os.strerror(code))
    raise OSError(code, f"pidfd_getfd({pid}, {fd}): {os.strerror(code)}")


def netns_of(fd: int) -> int | None:
    """The inode of the network namespace a socket (or tun file) fd belongs to, asked as
    CRIU's get_socket_ns asks (SIOCGSKNS, Linux 4.9); None where the kernel cannot tell."""
    try:
        namespace = fcntl.ioctl(fd, SIOCGSKNS)
    except OSError:
        return None
    try:
        return os.fstat(namespace).st_ino
    finally:
        os.close(namespace)


def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]   # tcpi_state is the first byte


def _corked(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(SOL_UDP, UDP_CORK))


def _local(sock: socket.socket) -> str:
    address, port = sock.getsockname()[:2]
    if port == 0 and address in ("0.0.0.0", "::"):
        return ""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
