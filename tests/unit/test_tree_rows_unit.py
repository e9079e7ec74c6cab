"""The process list's tree verdicts from fixture rows: worst member, union of options,
nested namespaces seen only from the root, deep trees and parents outside the list.
(The same with real processes and the real CRIU: test_service.py, test_dashboard.py.)"""
from __future__ import annotations

from api.service.tree_rows import Member, tree_verdicts

HOST = {"pid": "pid:[1]", "uts": "uts:[1]", "ipc": "ipc:[1]", "user": "user:[1]",
        "cgroup": "cgroup:[1]", "time": "time:[1]"}


def member(pid: int, ppid: int, verdict: str = "ok", options: tuple[str, ...] = (),
           namespaces: dict[str, str] | None = None) -> Member:
    return Member(pid, ppid, verdict, options, {**HOST, **(namespaces or {})})


def test_a_tree_is_as_bad_as_its_worst_member_and_needs_every_members_options():
    verdicts = tree_verdicts([
        member(10, 1),
        member(11, 10, "needs_options", ("--tcp-established",)),
        member(12, 10, "needs_options", ("--file-locks",)),
        member(13, 12, "blocked"),
    ], HOST)
    assert (verdicts[10].verdict, verdicts[10].options, verdicts[10].size) == (
        "blocked", ["--file-locks", "--tcp-established"], 4)
    assert verdicts[10].checkpointable is False
    assert (verdicts[11].verdict, verdicts[11].size) == ("needs_options", 1)
    assert (verdicts[12].verdict, verdicts[12].size) == ("blocked", 2)
    assert verdicts[13].verdict == "blocked"


def test_unknown_outranks_blocked_as_in_a_verdict():
    verdicts = tree_verdicts([member(10, 1, "blocked"), member(11, 10, "unknown")], HOST)
    assert verdicts[10].verdict == "unknown"


def test_a_member_in_another_pid_namespace_blocks_the_trees_above_it_but_not_its_own():
    inner = {"pid": "pid:[2]"}
    verdicts = tree_verdicts([
        member(10, 1),              # the root: fine on its own
        member(11, 10),             # unshared the pid namespace for its children
        member(12, 11, namespaces=inner),    # pid 1 of the new namespace
        member(13, 12, namespaces=inner),
    ], HOST)
    assert (verdicts[10].verdict, verdicts[10].nested) == ("blocked", True)
    assert (verdicts[11].verdict, verdicts[11].nested) == ("blocked", True)
    # the namespace's init with its children: its namespace is the root's, nothing nests
    assert (verdicts[12].verdict, verdicts[12].nested, verdicts[12].size) == ("ok", False, 2)
    assert verdicts[12].checkpointable


def test_mount_and_network_namespaces_nest_and_the_dumpers_own_are_not_nested():
    dumper = {**HOST, "uts": "uts:[9]"}  # CRIU runs in a uts namespace of its own
    verdicts = tree_verdicts([
        member(10, 1, namespaces={"uts": "uts:[5]"}),
        member(11, 10, namespaces={"uts": "uts:[9]"}),  # the dumper's: seen already
        Member(12, 10, "ok", (), {**HOST, "uts": "uts:[5]", "mnt": "mnt:[7]", "net": "net:[7]"}),
    ], dumper)
    assert verdicts[10].verdict == "ok" and not verdicts[10].nested


def test_a_deep_chain_and_a_parent_outside_the_list_are_handled():
    chain = [member(100 + depth, 99 + depth) for depth in range(5000)]  # 100 <- 101 <- ...
    chain[-1] = member(5099, 5098, "blocked")
    verdicts = tree_verdicts(chain, HOST)
    assert (verdicts[100].verdict, verdicts[100].size) == ("blocked", 5000)
    assert (verdicts[5099].verdict, verdicts[5099].size) == ("blocked", 1)
