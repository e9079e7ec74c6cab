"""The types every layer speaks: a Rule (a stable code, its severities and remedy), a
Finding (one thing an audit saw, named by a rule's code), and how messages name ids.

Each check module declares its own rules; tracker.checks.catalogue gathers them.

May import: the standard library only (everything in tracker builds on it).
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

BLOCKER, OPTION, INFO = "blocker", "option", "info"
SEVERITIES = (BLOCKER, OPTION, INFO)

Version = tuple[int, int, int]


class VersionNote(NamedTuple):
    """CRIU releases before `fixed_in` judge this rule differently."""

    fixed_in: Version
    severity: str
    why: str


class Rule(NamedTuple):
    code: str
    title: str
    criu: str                      # severity under the `criu` profile
    remedy: str
    option: str | None = None      # the CRIU option that fixes it, when one exists
    strict: str | None = None      # severity under `strict`; defaults to the criu one,
    #                                raised to blocker for options
    criu_message: str = ""         # what CRIU prints when it refuses this state
    older_criu: tuple[VersionNote, ...] = ()
    makes_unknown: bool = False    # the process could not be judged: the verdict is `unknown`
    family: str = ""               # its module, in the catalogue's copy: no part of the rule

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rule):
            return NotImplemented
        return self[:-1] == other[:-1]

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash(self[:-1])

    def problems(self) -> list[str]:
        """What makes this rule malformed (the catalogue refuses such a rule)."""
        problems = []
        if self.criu not in SEVERITIES:
            problems.append(f"unknown severity {self.criu!r}")
        if (self.criu == OPTION) != (self.option is not None):
            problems.append("an option rule names its option, and only an option rule does")
        return problems


class Finding(NamedTuple):
    """One thing an audit saw, named by a rule code, about one exact resource."""

    code: str
    message: str
    pid: int
    tid: int | None = None
    fd: int | None = None
    remedy: str | None = None      # overrides the rule's remedy when the fix depends on the resource
    option_value: str | None = None  # e.g. the size for --ghost-limit
    environment_fact: str | None = None  # the fact about the dumper that decided it


# A message names this many ids of a larger set, then counts the rest; a set up to
# IDS_IN_FULL long is named in full.
IDS_NAMED, IDS_IN_FULL = 3, 5


def id_list(ids: Iterable[int]) -> str:
    """`12, 14, 15` or, for a large set, `12, 14, 15 and 1,997 more` (sorted): a message
    stays short when 2,000 processes share a file."""
    ordered = sorted(set(ids))
    if len(ordered) <= IDS_IN_FULL:
        return ", ".join(map(str, ordered))
    named = ", ".join(map(str, ordered[:IDS_NAMED]))
    return f"{named} and {len(ordered) - IDS_NAMED:,} more"


def pid_list(pids: Iterable[int]) -> str:
    """`pid 12`, `pids 12, 14` or `pids 12, 14, 15 and 1,997 more`."""
    ordered = set(pids)
    return f"pid{'s' if len(ordered) != 1 else ''} {id_list(ordered)}"
