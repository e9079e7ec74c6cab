"""Character and block device fds, judged by major:minor as CRIU's dump_chrdev does.

Memory devices (major 1: null, zero, full, random, urandom, kmsg, mem...)
and autofs (10:235) are dumped as paths, so the path rules of `files` apply.
/dev/net/tun (10:200) is dumped with the network namespace, so only a tree
with its own netns can keep it, and only a tun file of a netns CRIU knows (the
tree's or its own: tun.c dump_tunfile, net.c get_socket_ns), never with O_PATH
(dump_tunfile asks the fd for its interface, TUNGETIFF, and fails with EBADF);
a tap with a socket filter attached cannot be dumped, as CRIU cannot read the
program back (tun.c __dump_tun_link_fd). Terminals belong to `terminal`, which
judges sessions and controlling ttys, except a terminal open with O_PATH, which
an ioctl refuses with EBADF: CRIU's tty code (tty.c dump_one_tty) asks a pty
master's fd for its index (TIOCGPTN) every time, and asks the first fd of each
terminal it dumps for the terminal's parameters (parasite_dump_tty, once per
terminal for the whole dump, in its task order: depth first from the root, fds
in ascending order). Any other device, and every block device, cannot be
dumped: CRIU cannot save a device's state.

QUIET_DEVICES are the character devices no rule here judges but for O_PATH:
the live probes drop their opens in the kernel (probes/crwatch.bpf.c).
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from typing import Iterator, NamedTuple

from tracker.checks import files, paths, tree
from tracker.checks.sockets import fd_query
from tracker.context import AuditContext
from tracker.procfs import DEFAULT_PROC_ROOT, OpenFd, Proc, ProcessGone
from tracker.rules import BLOCKER, Finding, Rule

RULES = (
    Rule("device.chr.unsupported", "An open character device CRIU cannot dump", BLOCKER,
         "close the device before checkpointing: CRIU cannot save a device's state",
         criu_message="Can't dump file %d of that type [%o] (chr %d:%d)"),
    Rule("device.blk", "An open block device", BLOCKER,
         "close the block device before checkpointing (CRIU dumps no block device fd)",
         criu_message="Can't dump file %d of that type [%o] (unknown %s)"),
    Rule("device.tun.host_netns", "/dev/net/tun open in the host's network namespace", BLOCKER,
         "run the tree in its own network namespace (CRIU dumps tun devices with it), or close "
         "/dev/net/tun before checkpointing",
         criu_message="tun: Net namespace is required to dump tun link"),
    Rule("device.tun.foreign_netns", "/dev/net/tun opened in a network namespace neither the "
         "tree nor the host is in", BLOCKER,
         "close the fd, or open /dev/net/tun again in the tree's network namespace, before "
         "checkpointing", criu_message="No net_ns for tun device; net: Unable to dump a socket "
                                       "from an external network namespace"),
    Rule("device.tun.filter", "A tap device with a socket filter attached (TUNATTACHFILTER)",
         BLOCKER, "detach the filter (TUNDETACHFILTER) before checkpointing: CRIU cannot read "
         "the program back", criu_message="Can't dump %s with filter on-board"),
    Rule("device.tun.o_path", "/dev/net/tun open with O_PATH", BLOCKER,
         "close the O_PATH fd on /dev/net/tun before checkpointing (CRIU asks a tun file for its "
         "interface with an ioctl, which an O_PATH fd refuses)",
         criu_message="tun: Can't dump tun-file device"),
    Rule("device.tty.o_path", "A terminal device open with O_PATH", BLOCKER,
         "close the O_PATH fd on the terminal before checkpointing (CRIU's tty code needs an "
         "fd it can ask the terminal's parameters with; an ordinary open would do)",
         criu_message="tty: Can't fetch params: err = %d / tty: Can't obtain ptmx index"),
)


class DeviceSet(NamedTuple):
    """Character devices: every minor of `majors`, and the (major, minor) `devices`."""

    majors: frozenset[int]
    devices: frozenset[tuple[int, int]]

    def __contains__(self, device: tuple[int, int]) -> bool:
        return device[0] in self.majors or device in self.devices

    def __or__(self, other: DeviceSet) -> DeviceSet:
        return DeviceSet(self.majors | other.majors, self.devices | other.devices)


MEM_MAJOR = 1
TUN = (10, 200)
AUTOFS = (10, 235)
TTY_AUX_MAJOR, TTY_MAJOR = 5, 4
SERIAL_MAJORS = frozenset({188, 204})           # USB serial, low-density serial
PTY_MASTER_MAJORS = frozenset(range(128, 136))
PTY_SLAVE_MAJOR = 136
# Dumped as paths: the path rules of `files` judge them, as any regular file.
PATH_DEVICES = DeviceSet(frozenset({MEM_MAJOR}), frozenset({AUTOFS}))
# The devices CRIU's tty code takes (get_tty_driver); tty0 and ttyS* are not among them.
TTY_DEVICES = DeviceSet(
    SERIAL_MAJORS | PTY_MASTER_MAJORS | {PTY_SLAVE_MAJOR},
    frozenset({(TTY_AUX_MAJOR, minor) for minor in range(3)}       # /dev/tty, console, ptmx
              | {(TTY_MAJOR, minor) for minor in range(1, 64)}))   # virtual consoles 1..63
# What no device rule judges unless it is open with O_PATH (a terminal's sessions are
# judged per process by `terminal`, a path device's path as any file's).
QUIET_DEVICES = PATH_DEVICES | TTY_DEVICES
TUNGETIFF = 0x800454D2          # the attached device: struct ifreq (name, flags)
TUNGETFILTER = 0x801054DB       # a tap's socket filter: struct sock_fprog (len first)
IFF_TAP = 0x0002
IFREQ = struct.Struct("16sH22x")
SOCK_FPROG = struct.Struct("H6xQ")


def check_fd(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Iterator[Finding]:
    rdev = open_fd.stat.st_rdev
    device = (os.major(rdev), os.minor(rdev))
    refusal = refused_by_number(stat.S_ISBLK(open_fd.stat.st_mode), device)
    if refusal is not None:
        yield _refused(*refusal, proc, open_fd)
    elif device in PATH_DEVICES:
        yield from files.check_fd_path(ctx, proc, open_fd)
    elif device == TUN:
        if open_fd.flags & os.O_PATH:
            yield Finding("device.tun.o_path", f"fd {open_fd.fd}: {open_fd.target} (10:200) is open "
                          "with O_PATH: CRIU cannot ask it for its interface", proc.pid, fd=open_fd.fd)
        if not paths.root_in_own_namespace(ctx, "net"):
            yield Finding("device.tun.host_netns",
                          f"fd {open_fd.fd}: {open_fd.target} (10:200) is open in the host's "
                          f"network namespace", proc.pid, fd=open_fd.fd)
        elif ctx.proc_root == DEFAULT_PROC_ROOT and not open_fd.flags & os.O_PATH:
            # (a fixture's fd is no tun file to ask, and an O_PATH one answers nothing)
            yield from _check_tun(ctx, proc, open_fd)
    elif open_fd.flags & os.O_PATH and (is_pty_master(*device) or _first_fd_of(ctx, rdev) is open_fd):
        yield Finding("device.tty.o_path",
                      f"fd {open_fd.fd}: terminal {open_fd.target} ({device[0]}:{device[1]}) is "
                      f"open with O_PATH: CRIU cannot read its parameters through it",
                      proc.pid, fd=open_fd.fd)


def _check_tun(ctx: AuditContext, proc: Proc, open_fd: OpenFd) -> Iterator[Finding]:
    """Asked on a copy of the fd, as CRIU asks the fd it takes from the parasite."""
    copy = fd_query.getfd(proc.pid, open_fd.fd)
    try:
        netns = fd_query.netns_of(copy)
        device, flags, filter_length = _attached(copy)
    finally:
        os.close(copy)
    if netns is not None and netns not in tree.known_netns(ctx):
        yield Finding("device.tun.foreign_netns", f"fd {open_fd.fd}: {open_fd.target} was opened "
                      f"in network namespace net:[{netns}], which neither a process of the tree "
                      "nor the host is in", proc.pid, fd=open_fd.fd)
    if flags & IFF_TAP and filter_length:
        yield Finding("device.tun.filter", f"fd {open_fd.fd}: tap {device} has a socket filter "
                      f"of {filter_length} instructions attached", proc.pid, fd=open_fd.fd)


def _attached(tun: int) -> tuple[str, int, int]:
    """(device name, IFF_ flags, filter length) of the device the fd is attached to;
    ("", 0, 0) for a tun file attached to none."""
    try:
        name, flags = IFREQ.unpack(fcntl.ioctl(tun, TUNGETIFF, bytes(IFREQ.size)))
    except OSError as error:
        if error.errno == errno.EBADFD:
            return "", 0, 0
        raise
    length = 0
    if flags & IFF_TAP:
        length = SOCK_FPROG.unpack(fcntl.ioctl(tun, TUNGETFILTER, bytes(SOCK_FPROG.size)))[0]
    return name.split(b"\0", 1)[0].decode(errors="replace"), flags, length


def is_tty(major: int, minor: int) -> bool:
    return (major, minor) in TTY_DEVICES


def is_pty_master(major: int, minor: int) -> bool:
    """/dev/ptmx and the BSD pty masters, whose index CRIU asks the fd for."""
    return (major, minor) == (TTY_AUX_MAJOR, 2) or major in PTY_MASTER_MAJORS


def _first_fd_of(ctx: AuditContext, rdev: int) -> OpenFd | None:
    """The first fd on this terminal in CRIU's dump order: the one it asks for the parameters."""
    for pid in tree.dump_order(ctx):
        for open_fd in sorted(ctx.tree_fds.get(pid, []), key=lambda candidate: candidate.fd):
            try:
                if (open_fd.target.startswith("/dev/") and stat.S_ISCHR(open_fd.stat.st_mode)
                        and open_fd.stat.st_rdev == rdev):
                    return open_fd
            except ProcessGone:
                continue
    return None


def _refused(code: str, kind: str, proc: Proc, open_fd: OpenFd) -> Finding:
    rdev = open_fd.stat.st_rdev
    return refused(code, proc.pid, open_fd.fd, kind, open_fd.target, (os.major(rdev), os.minor(rdev)))


def refused(code: str, pid: int, fd: int, kind: str, target: str,
            device: tuple[int, int]) -> Finding:
    """A device CRIU cannot dump, as this module says it (the live probes say it so too)."""
    return Finding(code, f"fd {fd}: {kind} {target} ({device[0]}:{device[1]}) cannot be dumped",
                   pid, fd=fd)


def refused_by_number(is_block: bool, device: tuple[int, int]) -> tuple[str, str] | None:
    """(code, kind) when the node's type and number alone refuse it (a block device, a
    character device no rule here or in `files` or `terminal` takes); None when its path,
    its network namespace or its terminal's fds decide."""
    if is_block:
        return "device.blk", "block device"
    if device in PATH_DEVICES or device == TUN or is_tty(*device):
        return None
    return "device.chr.unsupported", "character device"
