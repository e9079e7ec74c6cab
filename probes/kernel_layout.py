"""Where the fields the device filter reads sit in the running kernel, from its BTF.

The probes compile against headers that may not be this kernel's (a Debian 6.1
tree on a 6.18 kernel), so they never take a struct layout from them. The few
fields the kernel side reads to tell an opened fd's device (task -> files ->
fdtable -> file -> its flags, and its inode -> mode and rdev) are located here in
/sys/kernel/btf/vmlinux, the running kernel's own description of its types,
and handed to the compiler as cflags. Without BTF there is no layout, and the
probes report every device open (user space judges them all).

The format is the kernel's Documentation/bpf/btf.rst: a header, then the type
section (each type a 12-byte btf_type and kind-specific data), then the strings.
"""
from __future__ import annotations

import struct
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

# cflag name -> (struct, field): what crwatch.bpf.c's fd_device() reads.
FIELDS = {
    "TASK_FILES": ("task_struct", "files"),
    "TASK_NVCSW": ("task_struct", "nvcsw"),
    "TASK_NIVCSW": ("task_struct", "nivcsw"),
    "FILES_FDT": ("files_struct", "fdt"),
    "FDTABLE_MAX_FDS": ("fdtable", "max_fds"),
    "FDTABLE_FD": ("fdtable", "fd"),
    "FILE_INODE": ("file", "f_inode"),
    "FILE_FLAGS": ("file", "f_flags"),
    "INODE_MODE": ("inode", "i_mode"),
    "INODE_RDEV": ("inode", "i_rdev"),
}

_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")   # magic, version, flags, hdr_len, type/str off and len
_TYPE = struct.Struct("<III")          # name_off, info, size or type
_MEMBER = struct.Struct("<III")        # name_off, type, offset
KIND_STRUCT, KIND_UNION = 4, 5
_MODIFIERS = frozenset({8, 9, 10, 11, 18})     # typedef, volatile, const, restrict, type_tag
# Bytes after the btf_type of each kind: fixed, and per vlen entry.
_FIXED_EXTRA = {1: 4, 3: 12, 14: 4, 17: 4}
_PER_ENTRY = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}


class LayoutError(ValueError):
    """The BTF cannot be read, or lacks a field the filter needs."""


class Btf:
    """The types of one BTF blob, indexed by id (1-based, as the kernel numbers them)."""

    def __init__(self, data: bytes):
        if len(data) < _HEADER.size:
            raise LayoutError("BTF shorter than its header")
        magic, _, _, header_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise LayoutError(f"not BTF (magic {magic:#x})")
        self._data = data
        self._strings = data[header_len + str_off:header_len + str_off + str_len]
        self._at = [0]                 # byte offset of each type id's btf_type; id 0 is void
        position, end = header_len + type_off, header_len + type_off + type_len
        while position < end:
            self._at.append(position)
            info = _TYPE.unpack_from(data, position)[1]
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            position += _TYPE.size + _FIXED_EXTRA.get(kind, 0) + _PER_ENTRY.get(kind, 0) * vlen

    def name(self, offset: int) -> str:
        end = self._strings.index(b"\0", offset)
        return self._strings[offset:end].decode()

    def _type(self, type_id: int) -> tuple[int, int, int, int]:
        """(name offset, kind, vlen, kind_flag) of a type."""
        name_off, info, _ = _TYPE.unpack_from(self._data, self._at[type_id])
        return name_off, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31

    def _resolved(self, type_id: int) -> int:
        """The type behind typedefs and qualifiers."""
        while self._type(type_id)[1] in _MODIFIERS:
            type_id = _TYPE.unpack_from(self._data, self._at[type_id])[2]
        return type_id

    def struct_ids(self, names: set[str]) -> dict[str, list[int]]:
        """name -> ids of the structs of that name, for each of `names` (one pass)."""
        at = {name: self._strings.find(b"\0" + name.encode() + b"\0") for name in names}
        wanted = {offset + 1: name for name, offset in at.items() if offset >= 0}
        found: dict[str, list[int]] = {name: [] for name in names}
        for type_id in range(1, len(self._at)):
            name_off, kind, _, _ = self._type(type_id)
            if kind == KIND_STRUCT and name_off in wanted:
                found[wanted[name_off]].append(type_id)
        return found

    def field_offset(self, type_id: int, field: str) -> int | None:
        """Byte offset of `field` in a struct or union, looking into anonymous members."""
        _, kind, vlen, kind_flag = self._type(type_id)
        if kind not in (KIND_STRUCT, KIND_UNION):
            return None
        for index in range(vlen):
            name_off, member_type, offset = _MEMBER.unpack_from(
                self._data, self._at[type_id] + _TYPE.size + index * _MEMBER.size)
            bits = offset & 0xFFFFFF if kind_flag else offset
            if name_off and self.name(name_off) == field:
                return bits // 8
            if not name_off:
                inner = self.field_offset(self._resolved(member_type), field)
                if inner is not None:
                    return bits // 8 + inner
        return None


def read_layout(path: Path = VMLINUX_BTF) -> dict[str, int]:
    """cflag name -> byte offset, for every entry of FIELDS."""
    try:
        btf = Btf(path.read_bytes())
    except OSError as error:
        raise LayoutError(f"cannot read {path}: {error.strerror}") from error
    ids = btf.struct_ids({struct_name for struct_name, _ in FIELDS.values()})
    layout = {}
    for flag, (struct_name, field) in FIELDS.items():
        offsets = {btf.field_offset(type_id, field) for type_id in ids[struct_name]}
        offsets.discard(None)
        if len(offsets) != 1:
            raise LayoutError(f"{path}: struct {struct_name} has "
                              f"{'no' if not offsets else 'more than one'} field {field}")
        layout[flag] = offsets.pop()
    return layout


def layout_cflags(layout: dict[str, int]) -> list[str]:
    return [f"-D{flag}_OFFSET={offset}" for flag, offset in sorted(layout.items())]
