"""Socket helpers shared by the socket tests: a loaded eBPF socket filter, and the subject
code (HELPERS) that makes the sockets of each kind."""
from __future__ import annotations

import inspect


def load_socket_filter() -> int:
    """BPF_PROG_LOAD of a socket filter program, "r0 = -1; exit" (accept every packet)."""
    import ctypes
    import os
    import platform
    import struct
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    code = ctypes.create_string_buffer(struct.pack("BBhi", 0xB7, 0, 0, -1)      # r0 = -1
                                       + struct.pack("BBhi", 0x95, 0, 0, 0))    # exit
    license = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(struct.pack("IIQQ", 1, 2, ctypes.addressof(code),
                                                   ctypes.addressof(license)), 128)
    bpf = {"x86_64": 321, "aarch64": 280}[platform.machine()]
    program = libc.syscall(bpf, 5, attr, 128)
    if program < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return program


# Helpers the subjects share (make(), from the subjects' prelude, reports a
# socket this kernel refuses to create).
HELPERS = inspect.getsource(load_socket_filter) + """
import struct, ctypes
def ping_socket(family=socket.AF_INET, protocol=socket.IPPROTO_ICMP):
    # ping sockets need the caller's group in ping_group_range: open it for
    # root only while the socket is created
    path = "/proc/sys/net/ipv4/ping_group_range"
    with open(path) as file:
        saved = file.read()
    with open(path, "w") as file:
        file.write("0 0")
    try:
        return socket.socket(family, socket.SOCK_DGRAM, protocol)
    finally:
        with open(path, "w") as file:
            file.write(saved)
def keep_outside_tree(*fds):
    # a grandchild, reparented away from the subject, keeps these files open
    # (CRIU dumps the subject's descendants, so a child would be inside the tree)
    if os.fork() == 0:
        if os.fork() == 0:
            for name in os.listdir("/proc/self/fd"):
                if int(name) > 2 and int(name) not in fds:
                    try:
                        os.close(int(name))
                    except OSError:
                        pass
            hold()
        os._exit(0)
    os.wait()
def in_new_netns(create):
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(0x40000000) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        return create()
    finally:
        libc.setns(own, 0x40000000)
        os.close(own)
def inode(sock):
    return str(os.fstat(sock.fileno()).st_ino)
def classic_filter(sock):
    # one instruction, "ret #-1": accept every packet
    program = ctypes.create_string_buffer(struct.pack("HBBI", 6, 0, 0, 0xFFFFFFFF))
    sock.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HL", 1, ctypes.addressof(program)))
def ebpf_filter(sock):
    # a socket filter "r0 = -1; exit" attached with SO_ATTACH_BPF; the socket keeps it loaded
    program = load_socket_filter()
    sock.setsockopt(socket.SOL_SOCKET, 50, struct.pack("i", program))
    os.close(program)
def link_local():
    # an IPv6 link-local address of this host and its interface index (/proc/net/if_inet6)
    with open("/proc/net/if_inet6") as table:
        for line in table:
            address, index, _, scope = line.split()[:4]
            if int(scope, 16) == 0x20:
                return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(address)), int(index, 16)
    raise OSError(errno.EADDRNOTAVAIL, "no IPv6 link-local address on this host")
def mmap_socket(sock, prot=1):
    # a shared mapping of the socket (PROT_READ by default), kept after the socket is closed
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    if libc.mmap(None, 4096, prot, 1, sock.fileno(), 0) == ctypes.c_void_p(-1).value:
        raise OSError(ctypes.get_errno(), "mmap")
def packet_ring():
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.setsockopt(263, 5, struct.pack("IIII", 4096, 1, 2048, 2))   # PACKET_RX_RING: one block
    mmap_socket(s, prot=3)
    return s
"""
