"""What every socket family shares: the catch-all rules, socket filters, the CRIU version note,
the message shape.

Socket filters are read by CRIU's dump_socket_filter (sockets.c) for every
family it dumps: a classic BPF filter (SO_ATTACH_FILTER) is read back with
SO_GET_FILTER and attached again on restore; an eBPF one (SO_ATTACH_BPF) has
no classic program to read back, so SO_GET_FILTER fails and so does the dump.
Sockets are asked only while a socket filter program is loaded (bpf.py).
"""
from __future__ import annotations

from tracker.procfs import OpenFd, Proc
from tracker.rules import BLOCKER, Finding, Rule, VersionNote, pid_list

# This kernel refuses SO_PASSCRED/SO_PASSSEC on non-unix sockets; CRIU 4.1 reads
# them from every socket it dumps and fails, 4.2 reads them only where they exist.
OLDER_CRIU = (VersionNote(
    fixed_in=(4, 2, 0), severity=BLOCKER,
    why="CRIU before 4.2 cannot dump inet, packet or raw sockets on kernels that refuse "
        "SO_PASSCRED on them"),)

RULES = (
    Rule("socket.unknown_family", "A socket of a family CRIU cannot dump (AF_VSOCK, AF_XDP, AF_ALG, ...)",
         BLOCKER, "close the socket before checkpointing: CRIU dumps only unix, inet, netlink and "
                  "packet sockets",
         criu_message="BUG! Unknown socket collected (family %d)"),
    Rule("socket.o_path", "A socket open with O_PATH (reopened through /proc/PID/fd)", BLOCKER,
         "close the O_PATH fd on the socket before checkpointing: CRIU asks every socket fd "
         "for its family (SO_DOMAIN), which an O_PATH fd refuses",
         criu_message="Can't get %d:%d opt"),
    Rule("socket.foreign_netns", "A listening, connected, unix or packet socket of a network "
         "namespace whose sockets CRIU does not collect",
         BLOCKER, "close the socket, or keep a process of the tree in the socket's network "
                  "namespace: CRIU finds such a socket only in the namespaces of the tree",
         criu_message="Unix socket %d not found; Socket state %d obtained but expected %d; "
                      "Can't find packet socket %lu"),
    Rule("socket.external_netns", "An inet or netlink socket of a network namespace that neither "
         "the dumped tree nor CRIU lives in, in a tree with a network namespace of its own",
         BLOCKER, "close the socket before checkpointing (it was made before the process left "
                  "that namespace), or keep a process of the tree in that namespace: CRIU "
                  "restores a socket only into a namespace it dumps",
         criu_message="Unable to dump a socket from an external network namespace"),
    Rule("socket.unreadable", "The kernel's sock_diag could not list the sockets of this family",
         BLOCKER, "enable the sock_diag module of this family (unix_diag, netlink_diag, packet_diag) "
                  "and audit as root: CRIU needs the same listing",
         criu_message="Sockets (family %d proto %d) are not collected", makes_unknown=True),
    Rule("socket.filter.ebpf", "A socket with an eBPF filter (SO_ATTACH_BPF)", BLOCKER,
         "detach the filter (SO_DETACH_BPF) before checkpointing, or attach it as a classic "
         "filter (SO_ATTACH_FILTER): CRIU cannot read an eBPF program back from a socket",
         criu_message="Can't get socket filter len"),
)


def finding(code: str, proc: Proc, open_fd: OpenFd, text: str, **extra) -> Finding:
    """A finding about one socket fd; the message starts with the fd number."""
    return Finding(code, f"fd {open_fd.fd}: {text}", proc.pid, fd=open_fd.fd, **extra)


def holders(pids: set[int]) -> str:
    """`pid 12` / `pids 12, 14` / `pids 12, 14, 15 and 1,997 more` / `no process`."""
    return pid_list(pids) if pids else "no process"

