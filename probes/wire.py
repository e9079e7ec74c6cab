"""The wire record of probes/record.h, and its decoder into Events.

Pure Python (no bcc): `Record` mirrors the C struct field by field (a test
compares it with the layout the BPF compiler produced), and `decode` turns
one raw record into an Event. A record that is short, of an unknown kind or
otherwise garbage raises DecodeError, which the reader counts.
"""
from __future__ import annotations

import ctypes
import struct

from probes.events import Event, Kind, Special

COMM_LEN = 16
PATH_LEN = 128


class Record(ctypes.Structure):
    """struct record of probes/record.h."""

    _fields_ = [
        ("kind", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("ts_ns", ctypes.c_uint64),
        ("tid", ctypes.c_uint32),
        ("comm", ctypes.c_char * COMM_LEN),
        ("fd", ctypes.c_int32),
        ("arg", ctypes.c_uint64),
        ("arg2", ctypes.c_uint64),
        ("special", ctypes.c_uint32),
        ("path", ctypes.c_char * PATH_LEN),
    ]


RECORD_SIZE = ctypes.sizeof(Record)


class DecodeError(ValueError):
    """A raw record that is no valid record: counted, never fatal."""


_STRUCT_CODES = {ctypes.c_uint32: "I", ctypes.c_int32: "i", ctypes.c_uint64: "Q"}


def struct_format(record: type[ctypes.Structure], fields: list[str]) -> str:
    """The struct-module format reading `fields` (in order) of a ctypes Structure, padding
    included, so that decoding follows the mirror (struct is much faster than ctypes)."""
    parts, position = ["<"], 0
    for name, ctype in record._fields_:
        if name not in fields:
            continue
        offset = getattr(record, name).offset
        if offset > position:
            parts.append(f"{offset - position}x")
        if issubclass(ctype, ctypes.Array):
            parts.append(f"{ctypes.sizeof(ctype)}s")
        else:
            parts.append(_STRUCT_CODES[ctype])
        position = offset + ctypes.sizeof(ctype)
    return "".join(parts)


# Everything but the path, which only FD_OPENED fills: slicing 128 bytes per record costs.
_HEAD = struct.Struct(struct_format(Record, [name for name, _ in Record._fields_ if name != "path"]))
_PATH = slice(Record.path.offset, Record.path.offset + PATH_LEN)
# LOST is made by the reader, never sent by the kernel side.
_KINDS = {kind.value: kind for kind in Kind if kind is not Kind.LOST}
_SPECIALS = {special.value: special for special in Special}
_COMMS: dict[bytes, str] = {}   # a few hundred distinct names: decode each once
_COMMS_MAX = 4096
_new_tuple = tuple.__new__


def decode(raw: bytes) -> Event:
    if len(raw) != RECORD_SIZE:
        raise DecodeError(f"record of {len(raw)} bytes, expected {RECORD_SIZE}")
    kind_value, tgid, ts_ns, tid, comm, fd, arg, arg2, special_value = _HEAD.unpack_from(raw)
    kind = _KINDS.get(kind_value)
    special = _SPECIALS.get(special_value)
    if kind is None or special is None:
        raise DecodeError(f"record with unknown kind {kind_value} or special {special_value}")
    path = _text(raw[_PATH]) if kind is Kind.FD_OPENED else ""
    # tuple.__new__ straight: Event(...) would run the named tuple's own __new__, a Python
    # function, for each of up to hundreds of thousands of records a second
    return _new_tuple(Event, (kind, ts_ns, tgid, tid, _COMMS.get(comm) or _comm(comm), fd,
                              arg, arg2, special, path))


def _comm(field: bytes) -> str:
    text = _COMMS.get(field)
    if text is None:
        if len(_COMMS) >= _COMMS_MAX:
            _COMMS.clear()
        text = _COMMS[field] = _text(field)
    return text


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "replace")
