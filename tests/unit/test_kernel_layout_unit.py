"""The struct offsets the device filter reads, found in BTF (probes/kernel_layout.py)."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from probes.kernel_layout import FIELDS, VMLINUX_BTF, Btf, LayoutError, read_layout
from tracker.checks import devices

KIND_INT, KIND_PTR, KIND_STRUCT, KIND_UNION, KIND_TYPEDEF = 1, 2, 4, 5, 8


def blob(types: list[bytes], strings: bytes) -> bytes:
    """A BTF blob: header, type section, string section."""
    section = b"".join(types)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(section), len(section),
                         len(strings))
    return header + section + strings


def btf_type(name_off: int, kind: int, vlen: int, size: int, kind_flag: int = 0) -> bytes:
    return struct.pack("<III", name_off, kind_flag << 31 | kind << 24 | vlen, size)


def member(name_off: int, type_id: int, offset: int) -> bytes:
    return struct.pack("<III", name_off, type_id, offset)


# strings: 1 "int", 5 "file", 10 "f_mode", 17 "f_inode", 25 "pad"
STRINGS = b"\0int\0file\0f_mode\0f_inode\0pad\0"


def test_a_field_inside_an_anonymous_union_behind_a_typedef_is_found():
    types = [
        btf_type(1, KIND_INT, 0, 4) + struct.pack("<I", 32),            # 1 int
        btf_type(0, KIND_PTR, 0, 1),                                     # 2 int *
        btf_type(0, KIND_UNION, 2, 8) + member(25, 1, 0) + member(17, 2, 0),   # 3 union
        btf_type(0, KIND_TYPEDEF, 0, 3),                                 # 4 typedef of 3
        btf_type(5, KIND_STRUCT, 2, 24, kind_flag=1)                     # 5 struct file
        + member(10, 1, 0) + member(0, 4, 128),
    ]
    btf = Btf(blob(types, STRINGS))
    [file] = btf.struct_ids({"file"})["file"]
    assert btf.field_offset(file, "f_mode") == 0
    assert btf.field_offset(file, "f_inode") == 16
    assert btf.field_offset(file, "missing") is None


def test_what_is_not_btf_is_refused(tmp_path: Path):
    with pytest.raises(LayoutError, match="not BTF"):
        Btf(b"\0" * 32)
    with pytest.raises(LayoutError, match="cannot read"):
        read_layout(tmp_path / "vmlinux")


@pytest.mark.skipif(not VMLINUX_BTF.exists(), reason="this kernel has no BTF")
def test_every_field_is_found_in_this_kernels_btf():
    layout = read_layout()
    assert set(layout) == set(FIELDS)
    assert layout["FDTABLE_MAX_FDS"] == 0          # struct fdtable's first field
    assert layout["INODE_MODE"] == 0               # and struct inode's
    assert layout["FDTABLE_FD"] > 0 and layout["TASK_FILES"] > 0


@pytest.mark.parametrize("device, quiet", [
    ((1, 3), True), ((1, 9), True), ((10, 235), True), ((136, 4), True), ((5, 2), True),
    ((4, 1), True), ((4, 0), False), ((10, 232), False), ((10, 200), False), ((10, 229), False),
])
def test_the_quiet_devices_are_the_path_devices_and_the_terminals(device, quiet):
    assert (device in devices.QUIET_DEVICES) is quiet
    assert (device in devices.QUIET_DEVICES) is (device in devices.PATH_DEVICES
                                                 or devices.is_tty(*device))
