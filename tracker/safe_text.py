"""How a string read from /proc leaves crwatch: the one place that decides it.

procfs decodes every /proc string (comm, cmdline, link targets, mount points,
socket names) as UTF-8 with `surrogateescape`: a byte that is not UTF-8
becomes a lone surrogate U+DC80..U+DCFF, so nothing is lost inside crwatch.
Such a string cannot leave as it is (UTF-8 encoders refuse surrogates), and a
name may hold characters a terminal obeys (ESC sequences, newlines) or that
XML 1.0 forbids. Each exit has its form here:

- JSON (HTTP bodies, server-sent events, every `--json` output, NDJSON):
  `json_text`/`json_bytes`, pure ASCII; a byte that is not UTF-8 shows as the
  four characters `\\xNN`, every other character is JSON's own escape.
- Terminal and JUnit XML: `visible` (and `visible_all` for a whole document):
  a byte that is not UTF-8 shows as `\\xNN`; newline, tab and carriage return
  as `\\n`, `\\t`, `\\r`; the other C0 controls and DEL as `\\xNN` (the same byte);
  C1 controls, the line and paragraph separators, the bidirectional controls
  and the non-characters U+FFFE, U+FFFF as `\\uNNNN`. What is left is printable
  and allowed by XML 1.0.
- SQLite: `to_column`/`from_column`, lossless: text when it is UTF-8, else its
  bytes (a BLOB), read back as the same string.

A backslash is not doubled: `\\xff` in a name reads the same as the byte 0xff
(as `ls -b` and Python's `backslashreplace` show them). The dashboard mirrors
`visible` in JavaScript (api/service/static/dashboard.html, `shown`).
"""
from __future__ import annotations

import json
import re
from typing import Any

# Patterns compiled (and cached by `re`) when a string first needs them: most output is
# plain ASCII, and compiling them at import costs every command's start.
# Characters a terminal may obey or XML 1.0 forbids (the surrogates are bytes that are not UTF-8).
_HIDDEN = ("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
           "\u2066-\u2069\ud800-\udfff\ufffe\uffff]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
_SURROGATE = "[\ud800-\udfff]"
_NON_ASCII = "[^\x00-\x7e]"  # and DEL, which json.dumps escapes too


def _escaped(char: str) -> str:
    """The visible form of one hidden character."""
    point = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if point < 0x80:
        return f"\\x{point:02x}"
    if 0xDC80 <= point <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
        return f"\\x{point - 0xDC00:02x}"
    return f"\\u{point:04x}"


def visible(text: str) -> str:
    """`text` with every character a terminal may obey, or XML forbids, shown as an escape."""
    if text.isascii() and text.isprintable():
        return text  # the common case, without a regex pass
    return re.sub(_HIDDEN, lambda found: _escaped(found.group()), text)


def visible_all(value: Any) -> Any:
    """`value` (a document of dicts, lists and scalars) with every string made `visible`."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, dict):
        return {visible_all(key): visible_all(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [visible_all(item) for item in value]
    return value


def unicode_text(text: str) -> str:
    """`text` as valid Unicode: a byte that is not UTF-8 becomes the four characters \\xNN."""
    if text.isascii():
        return text
    return re.sub(_SURROGATE, lambda found: _escaped(found.group()), text)


def _json_escape(found: re.Match) -> str:
    """JSON's escape of one non-ASCII character; a byte that is not UTF-8 as the text \\xNN."""
    point = ord(found.group())
    if 0xD800 <= point <= 0xDFFF:
        return "\\" + _escaped(found.group())  # an escaped backslash, then xNN (or uNNNN)
    if point > 0xFFFF:  # JSON writes these as a surrogate pair
        point -= 0x10000
        return f"\\u{0xD800 + (point >> 10):04x}\\u{0xDC00 + (point & 0x3FF):04x}"
    return f"\\u{point:04x}"


def json_text(value: Any, *, indent: int | None = None) -> str:
    """`value` as JSON in pure ASCII (so also valid UTF-8), whatever bytes its strings hold.

    Only strings hold non-ASCII characters in json.dumps' output, so each one
    found is escaped in place, the same way json.dumps' default would, but for
    the surrogates, which become the text \\xNN instead of an invalid \\udcNN."""
    if indent is None:
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = _indented(value, indent)
    if text.isascii() and "\x7f" not in text:
        return text
    return re.sub(_NON_ASCII, _json_escape, text)


# ---------------------------------------------------------------- indented JSON

# json.dumps writes indented JSON in Python, a call per value: 16 ms for the 2,500
# reasons of a 12,500-fd check. The C encoder writes any container of scalars alone,
# its item separator carrying the newline and the indent: the same text, 10 times faster.
_SCALARS = frozenset({str, int, float, bool, type(None)})
_KEYS = frozenset({str})
_COMPACT = json.JSONEncoder(ensure_ascii=False)
_flat_encoders: dict[str, json.JSONEncoder] = {}  # by the indent of their items


class _NotPlain(Exception):
    """A value the fast path leaves to json.dumps."""


def _indented(value: Any, indent: int) -> str:
    """json.dumps(value, ensure_ascii=False, indent=indent), the same text."""
    try:
        return _indented_at(value, " " * indent, "\n")
    except _NotPlain:
        # a key that is not a string, or a type json.dumps would convert or refuse
        return json.dumps(value, ensure_ascii=False, indent=indent)


def _indented_at(value: Any, step: str, outer: str) -> str:
    """`value` indented, its items on lines that begin with `outer` + `step`."""
    kind = type(value)
    if kind in _SCALARS:
        return _COMPACT.encode(value)
    inner = outer + step
    if kind is dict:
        if not value:
            return "{}"
        if not _KEYS.issuperset(map(type, value)):
            raise _NotPlain
        if _SCALARS.issuperset(map(type, value.values())):
            return "{" + inner + _flat_encoder(inner).encode(value)[1:-1] + outer + "}"
        items = (f"{_COMPACT.encode(key)}: {_indented_at(item, step, inner)}"
                 for key, item in value.items())
        return "{" + inner + ("," + inner).join(items) + outer + "}"
    if kind is list or kind is tuple:
        if not value:
            return "[]"
        if _SCALARS.issuperset(map(type, value)):
            return "[" + inner + _flat_encoder(inner).encode(value)[1:-1] + outer + "]"
        items = (_indented_at(item, step, inner) for item in value)
        return "[" + inner + ("," + inner).join(items) + outer + "]"
    raise _NotPlain


def _flat_encoder(inner: str) -> json.JSONEncoder:
    """The C encoder whose item separator starts the next item's line."""
    encoder = _flat_encoders.get(inner)
    if encoder is None:
        encoder = _flat_encoders[inner] = json.JSONEncoder(
            ensure_ascii=False, separators=("," + inner, ": "))
    return encoder


def json_bytes(value: Any, *, indent: int | None = None) -> bytes:
    return json_text(value, indent=indent).encode("ascii")


def to_column(text: str) -> str | bytes:
    """A string as SQLite keeps it without loss: text when it is UTF-8, else its bytes."""
    if text.isascii() or not re.search(_SURROGATE, text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte made (from JSON input, not from /proc)
        return unicode_text(text)


def from_column(value: str | bytes) -> str:
    """What to_column stored, as the string it was."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value
