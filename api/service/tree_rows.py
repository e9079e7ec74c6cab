"""The verdict of the tree rooted at each process, from its members' own verdicts.

A checkpoint of a process takes all its descendants (`criu dump -t PID`), so the
process list says for each row whether the tree rooted there is checkpointable.
Auditing every tree would read each process once per ancestor; instead a tree's
verdict is the worst of its members' own verdicts, with the union of their
options, plus the one refusal only the tree's view shows: a member living in a
pid, uts, ipc, user, cgroup or time namespace other than the root's (and other
than the dumper's own), which CRIU refuses ("Can't dump nested %s namespace",
namespaces.py `namespace.nested`; only mount and network namespaces nest).

A member judged alone sees its peers inside the tree as outside it (a unix socket
to its parent, a pipe to a sibling), so this verdict errs towards refusing;
`GET /processes/{pid}/checkpointable` audits the tree itself and is the authority.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tracker.checks.namespaces import KINDS, NESTABLE

VERDICT_RANK = {"ok": 0, "needs_options": 1, "blocked": 2, "unknown": 3}
NON_NESTABLE = tuple(kind for kind in KINDS if kind not in NESTABLE)


@dataclass(frozen=True)
class Member:
    """One row as the tree sees it: its own verdict under one profile, where it lives."""

    pid: int
    ppid: int
    verdict: str
    options: tuple[str, ...]
    namespaces: dict[str, str] = field(default_factory=dict)  # kind: link, NON_NESTABLE kinds


@dataclass(frozen=True)
class TreeVerdict:
    verdict: str
    options: list[str]
    size: int
    nested: bool          # a member lives in a namespace CRIU cannot nest

    @property
    def checkpointable(self) -> bool:
        """With no option allowed, as the rows' own `checkpointable`."""
        return self.verdict == "ok"


@dataclass
class _Subtree:
    rank: int
    options: set[str]
    size: int
    links: dict[str, set[str]]  # kind: every link of its members


def tree_verdicts(members: list[Member], dumper: dict[str, str | None]) -> dict[int, TreeVerdict]:
    """pid: the verdict of the tree rooted there, for every member. `dumper` is the
    namespaces of the process that would dump (CRIU, run from here): not nested."""
    by_pid = {member.pid: member for member in members}
    children: dict[int, list[int]] = {}
    for member in members:
        if member.ppid in by_pid and member.ppid != member.pid:
            children.setdefault(member.ppid, []).append(member.pid)
    subtrees: dict[int, _Subtree] = {}
    for pid in _children_first(by_pid, children):
        subtrees[pid] = _join(by_pid[pid], [subtrees[kid] for kid in children.get(pid, [])])
    ranks = {rank: verdict for verdict, rank in VERDICT_RANK.items()}
    verdicts = {}
    for pid, subtree in subtrees.items():
        nested = _nested(by_pid[pid], subtree, dumper)
        rank = max(subtree.rank, VERDICT_RANK["blocked"]) if nested else subtree.rank
        verdicts[pid] = TreeVerdict(ranks[rank], sorted(subtree.options), subtree.size, nested)
    return verdicts


def _children_first(by_pid: dict[int, Member], children: dict[int, list[int]]) -> list[int]:
    """Every pid, each after all its descendants (iteratively: trees may be deep)."""
    order, seen = [], set()
    for start in by_pid:
        if start in seen:
            continue
        stack = [(start, False)]
        while stack:
            pid, expanded = stack.pop()
            if expanded:
                order.append(pid)
                continue
            if pid in seen:
                continue
            seen.add(pid)
            stack.append((pid, True))
            stack.extend((kid, False) for kid in children.get(pid, []) if kid not in seen)
    return order


def _join(member: Member, kids: list[_Subtree]) -> _Subtree:
    joined = _Subtree(VERDICT_RANK[member.verdict], set(member.options), 1,
                      {kind: {link} for kind, link in member.namespaces.items()})
    for kid in kids:
        joined.rank = max(joined.rank, kid.rank)
        joined.options |= kid.options
        joined.size += kid.size
        for kind, links in kid.links.items():
            joined.links.setdefault(kind, set()).update(links)
    return joined


def _nested(root: Member, subtree: _Subtree, dumper: dict[str, str | None]) -> bool:
    for kind in NON_NESTABLE:
        seen = {root.namespaces.get(kind), dumper.get(kind)}
        if subtree.links.get(kind, set()) - seen:
            return True
    return False
