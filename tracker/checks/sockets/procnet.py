"""The raw and ICMP (ping) socket tables of /proc/PID/net, which sock_diag does not list here.

Each file lists the hashed sockets of the reader's network namespace, so
reading it through a process of the tree gives that process's namespace.
Only sockets that are bound or connected appear (raw sockets always are).
"""
from __future__ import annotations

import socket
import sys

from tracker.checks.sockets.records import InetSocket, endpoint
from tracker.procfs import AccessDenied, Proc, ProcessGone

# (file, protocol, IP version)
PROC_TABLES = (("raw", "RAW", 4), ("raw6", "RAW", 6), ("icmp", "ICMP", 4), ("icmp6", "ICMP", 6))


def parse_inet_table(text: str, protocol: str, version: int,
                     byteorder: str = sys.byteorder) -> dict[int, InetSocket]:
    """Sockets by inode; lines without an inode (TIME_WAIT, request sockets) belong to no fd."""
    sockets: dict[int, InetSocket] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[9] == "0":
            continue
        tx_queue, _, rx_queue = fields[4].partition(":")
        (local, port), (remote, _) = (decode_endpoint(fields[1], byteorder),
                                      decode_endpoint(fields[2], byteorder))
        inode = int(fields[9])
        sockets[inode] = InetSocket(
            inode=inode, protocol=protocol, version=version, state=int(fields[3], 16),
            local=local, remote=remote, port=port,
            rx_queue=int(rx_queue, 16), tx_queue=int(tx_queue, 16),
        )
    return sockets


def decode_endpoint(hex_endpoint: str, byteorder: str = sys.byteorder) -> tuple[str, int]:
    """`0100007F:1F90` -> ("127.0.0.1:8080", 8080); IPv6 addresses in brackets."""
    hex_address, _, hex_port = hex_endpoint.rpartition(":")
    port = int(hex_port, 16)
    return endpoint(decode_address(hex_address, byteorder), port), port


def decode_address(hex_address: str, byteorder: str = sys.byteorder) -> str:
    """The kernel prints each 32-bit word of the (network-order) address as a native integer."""
    raw = b"".join(int(hex_address[at:at + 8], 16).to_bytes(4, byteorder)  # type: ignore[arg-type]
                   for at in range(0, len(hex_address), 8))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def read_net_file(proc: Proc, name: str) -> str:
    """/proc/PID/net/NAME; empty when this kernel has no such protocol (no IPv6, say)."""
    try:
        return (proc.path / "net" / name).read_text(errors="replace")
    except FileNotFoundError:
        if not proc.path.exists():
            raise ProcessGone(proc.pid) from None
        return ""
    except ProcessLookupError:
        raise ProcessGone(proc.pid) from None
    except PermissionError as error:
        raise AccessDenied(proc.pid, f"net/{name}", error.strerror) from None
