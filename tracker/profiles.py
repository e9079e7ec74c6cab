"""Dumper profiles: how severe each rule is for a given dumper.

`criu` is what a given CRIU release does on this kernel (proven by the tests
that run the real CRIU); `strict` adds the conservative list of the original
kernel checkpoint/restart work.
"""
from __future__ import annotations

from typing import NamedTuple

from tracker.criu.runner import find_criu
from tracker.rules import BLOCKER, Rule, Version

NEWEST_KNOWN_CRIU: Version = (4, 2, 1)
PROFILE_NAMES = ("criu", "strict")


class Profile(NamedTuple):
    name: str
    criu_version: Version

    def severity(self, rule: Rule) -> str:
        severity = rule.criu
        for note in rule.older_criu:
            if self.criu_version < note.fixed_in:
                severity = note.severity
        if self.name == "strict" and rule.strict:
            severity = rule.strict
        return severity

    def version_note(self, rule: Rule) -> str | None:
        """Why this CRIU judges the rule differently from the newest one, if it does."""
        for note in rule.older_criu:
            if self.criu_version < note.fixed_in:
                return note.why
        return None

    @property
    def label(self) -> str:
        return f"{self.name} (CRIU {'.'.join(map(str, self.criu_version))})"


def parse_version(text: str) -> Version:
    parts = [int(part) for part in text.strip().split(".")]
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"not a version: {text!r}")
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def default_criu_version() -> Version:
    """The CRIU that set-up found, else the newest release the catalogue knows."""
    criu = find_criu()
    return criu.version if criu else NEWEST_KNOWN_CRIU


def profile(name: str = "criu", criu_version: Version | None = None) -> Profile:
    if name not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {name!r} (choose from {', '.join(PROFILE_NAMES)})")
    return Profile(name, criu_version or default_criu_version())


__all__ = ["BLOCKER", "Profile", "profile", "parse_version", "PROFILE_NAMES", "NEWEST_KNOWN_CRIU"]
