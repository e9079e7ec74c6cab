"""Rules this machine cannot put a real process into, each with the reason.

Every other rule has a test that creates its state (tests/unit/test_rule_coverage.py checks
both lists); each rule here is covered by a unit test on fixtures (a `*_unit.py` test
names it), and the README lists them with these reasons.
"""
from __future__ import annotations

FIXTURE_ONLY: dict[str, str] = {
    "audit.exited":
        "a process that exits or is replaced between two reads of one audit: no process can "
        "be made to exit inside that window on demand",
    "fd.unclassified":
        "every fd Linux 6.18 hands out is a socket, a pipe, an anon inode or a file of a type "
        "crwatch routes (an fd of no known type would need a new kind of file in the kernel)",
    "file.path.unsupported":
        "every file fd on Linux 6.18 links to an absolute path, a pipe or a namespace file",
    "lock.unknown":
        "/proc/locks shows other lock kinds (DELEG, LAYOUT) only for NFS server delegations "
        "and pNFS layouts, and this kernel has no nfsd",
    "memory.io":
        "the only I/O memory here is the BARs of the VM's live virtio devices: mapping one "
        "would let CRIU's parasite read device registers, unsafe on a shared machine",
    "memory.unknown":
        "on x86-64 Linux 6.18 every mapping that is not a path is a kernel area, a named "
        "anonymous area, [uprobes], an anon inode or a packet ring",
    "socket.tcp.unknown_state":
        "TIME_WAIT and NEW_SYN_RECV sockets have no fd, and an fd holds a SYN_RECV socket "
        "(TCP Fast Open) only until the handshake's last ACK, microseconds on loopback",
    "socket.unix.unsupported":
        "Linux makes unix sockets of three types only (SOCK_RAW becomes SOCK_DGRAM) and "
        "puts them in CLOSE, ESTABLISHED or LISTEN only",
    "socket.unreadable":
        "every sock_diag family crwatch asks for (unix, packet, netlink, tcp, udp) is built "
        "into this kernel (it has no loadable modules), so no live namespace refuses a listing",
    "task.unknown_state":
        "a user task shows only the states R S D T t Z X I; the other one Linux 6.18 has, P, "
        "is a parked kernel thread's, and kernel threads are judged task.kernel_thread first",
}
