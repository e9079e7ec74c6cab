"""Whether any socket on the host can hold an eBPF filter: one look at the loaded BPF programs.

Only a BPF_PROG_TYPE_SOCKET_FILTER program can be attached with
SO_ATTACH_BPF (the kernel's sk_attach_bpf), and a loaded program stays in
the kernel's program table while a socket holds it, even after its fd is
closed. So when no such program is loaded, no socket has an eBPF filter and
no socket needs asking (SO_GET_FILTER on a copy of every socket fd would add
a few microseconds per socket to every audit). Classic filters are never in
that table, and CRIU dumps them.

A program's type is asked once per program id: asking opens an fd on the
program (BPF_PROG_GET_FD_BY_ID), which the probes of any crwatch on the host
report, so asking again at every audit would have two services re-auditing
each other without end. The kernel hands out program ids cyclically
(bpf_prog_alloc_id: idr_alloc_cyclic up to INT_MAX), so an id names one
program until the ids wrap around. For the same reason a walk that found no
socket filter stays true while no id above the highest it met is loaded: one
BPF_PROG_GET_NEXT_ID tells, where a walk asks once per loaded program (some 60
on a host running the probes: 0.4 ms of every audit of a process with sockets).
Unloading programs adds no filter.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct

BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD = 11, 13, 15
BPF_PROG_TYPE_SOCKET_FILTER = 1
ATTR_SIZE = 128         # larger than every command's attributes; the kernel wants the rest zero
INFO_SIZE = 8           # struct bpf_prog_info up to its id: type, id

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_known_types: dict[int, int] = {}  # program id -> its type, for the programs loaded now
# The highest program id the last walk met when it found no socket filter (None: it
# found one, or no walk yet): past it, a program loaded since.
_clear_through: int | None = None


def socket_filters_possible() -> bool:
    """False when no socket filter program is loaded; True when one is, or when the
    program table cannot be read (no CAP_SYS_ADMIN, another architecture): then every
    socket must be asked."""
    global _clear_through
    if BPF_SYSCALL is None:
        return True
    program, loaded = 0, set()
    ids = (ctypes.c_uint32 * (ATTR_SIZE // 4))()    # start_id, next_id: one buffer for the walk
    try:
        clear_through = _clear_through
        if clear_through is not None and _next_program(ids, clear_through) is None:
            return False  # nothing loaded since a walk found no socket filter
        _clear_through = None
        while (program := _next_program(ids, program)) is not None:
            loaded.add(program)
            kind = _known_types.get(program)
            if kind is None:
                kind = _program_type(program)
                if kind:  # neither unreadable nor gone meanwhile
                    _known_types[program] = kind
            if kind is None or kind == BPF_PROG_TYPE_SOCKET_FILTER:
                return True
    except PermissionError:
        return True
    for unloaded in _known_types.keys() - loaded:
        del _known_types[unloaded]
    _clear_through = max(loaded, default=0)
    return False


def _next_program(ids: ctypes.Array, after: int) -> int | None:
    """The id of the next loaded program, asked through `ids`; None past the last.
    PermissionError when the table cannot be read."""
    ids[0] = after
    if _bpf(BPF_PROG_GET_NEXT_ID, ids) == 0:
        return ids[1]
    code = ctypes.get_errno()
    if code == errno.ENOENT:
        return None
    raise PermissionError(code, os.strerror(code))


def _program_type(program: int) -> int | None:
    """The type of a loaded program; 0 for one that went away meanwhile, None when it
    cannot be read."""
    attr = ctypes.create_string_buffer(struct.pack("=I", program), ATTR_SIZE)
    fd = _bpf(BPF_PROG_GET_FD_BY_ID, attr)
    if fd < 0:
        return 0 if ctypes.get_errno() == errno.ENOENT else None
    try:
        info = ctypes.create_string_buffer(INFO_SIZE)
        attr = ctypes.create_string_buffer(struct.pack("=IIQ", fd, INFO_SIZE, ctypes.addressof(info)),
                                           ATTR_SIZE)
        if _bpf(BPF_OBJ_GET_INFO_BY_FD, attr) != 0:
            return None
        return struct.unpack_from("=I", info.raw)[0]
    finally:
        os.close(fd)


def _bpf(command: int, attr: ctypes.Array) -> int:
    return _libc.syscall(BPF_SYSCALL, command, attr, ATTR_SIZE)
