"""CRIU's option syntax, in one place: sizes, the options a caller allows, CRIU's command line.

Sizes are CRIU's (`--ghost-limit 12M`: bytes, or a K/M/G suffix). An allowed option
is written as on CRIU's command line (`--ghost-limit=10M`, `tcp-established`); an
option allowed again adds a value, since `--external` names one resource each time.
The reasons of a verdict name the options a dump needs; `arguments_for` turns them
into the arguments CRIU is given, and `given_options` reads them back from CRIU's own
command line (the action script's view of the dump it is part of).

May import: the standard library only (the rules name options; this says how they
are written).
"""
from __future__ import annotations

from collections.abc import Collection, Iterable

SIZE_SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
# The units a size is written in, largest first (CRIU reads K too; a ghost limit is
# never that small).
SIZE_UNITS = (("G", 1 << 30), ("M", 1 << 20))
GHOST_LIMIT = "--ghost-limit"
# Options whose value may follow as the next word of CRIU's command line.
VALUE_OPTIONS = (GHOST_LIMIT, "--external", "--network-lock")
SHORT_OPTIONS = {"-j": "--shell-job"}

Allowed = dict[str, tuple[str | None, ...]]


def parse_size(text: str) -> int:
    """CRIU's size syntax for --ghost-limit: bytes, or a K/M/G suffix."""
    text = text.strip().upper()
    if text and text[-1] in SIZE_SUFFIXES:
        return int(text[:-1]) * SIZE_SUFFIXES[text[-1]]
    return int(text)


def ghost_limit_value(size: int) -> str:
    """The smallest round --ghost-limit (CRIU's K/M/G syntax) that lets a ghost of `size` bytes pass."""
    for suffix, unit in SIZE_UNITS:
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return f"{-(-size // (1 << 20))}M"


def parse_allow(options: Iterable[str]) -> Allowed:
    """`--ghost-limit=10M` or `--tcp-established` -> {option: (its values, or None)}; an
    option given again adds a value (--external names one resource each time)."""
    parsed: Allowed = {}
    for text in options:
        text = text.strip()
        if not text.startswith("-"):
            text = "--" + text
        name, _, value = text.replace(" ", "=", 1).partition("=")
        parsed[name] = parsed.get(name, ()) + (value or None,)
    return parsed


def allows(option: str, value: str | None, allow: Allowed) -> bool:
    """Does the caller's parsed --allow list cover this option (and its value)?"""
    return any(_covers(option, value, granted) for granted in allow.get(option, ()))


def _covers(option: str, value: str | None, granted: str | None) -> bool:
    if value is None or granted is None:
        return True
    if option == GHOST_LIMIT:
        try:
            return parse_size(granted) >= parse_size(value)
        except ValueError:
            return False
    return granted == value  # e.g. --external=unix[INODE] names one socket


def arguments_for(reasons: Iterable[dict]) -> list[str]:
    """The CRIU command line that verdict reasons ask for: each option once, with the
    value its reasons name (--ghost-limit gets the largest size any reason needs, and
    no more)."""
    arguments: list[str] = []
    values: dict[str, list[str | None]] = {}
    for reason in reasons:
        option = reason.get("option")
        if option and reason.get("option_value") not in values.setdefault(option, []):
            values[option].append(reason.get("option_value"))
    for option, given in values.items():
        named = [value for value in given if value]
        if option == GHOST_LIMIT and named:
            named = [max(named, key=parse_size)]
        arguments += [part for value in (named or [None])
                      for part in ([option, value] if value else [option])]
    return arguments


def given_options(argv: Iterable[str], named: Collection[str]) -> list[str]:
    """The options of a CRIU command line that are in `named`, as `--allow` values
    (`--ghost-limit 8M` and `--ghost-limit=8M` both read `--ghost-limit=8M`, `-j`
    reads `--shell-job`)."""
    found: list[str] = []
    words = iter(argv)
    for word in words:
        name, has_value, value = SHORT_OPTIONS.get(word, word).partition("=")
        if name not in named:
            continue
        if name in VALUE_OPTIONS and not has_value:
            value = next(words, "")
        found.append(f"{name}={value}" if value else name)
    return found
