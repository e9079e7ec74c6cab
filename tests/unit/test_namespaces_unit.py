"""namespaces: id maps, and the own/nested judgement on fixture /proc trees."""
from __future__ import annotations

from pathlib import Path

import pytest

from tracker.checks import namespaces
from tracker.context import AuditContext
from tracker.procfs import Proc

ROOT, CHILD = 100, 101
HOST = {kind: f"{kind}:[40265318{n:02d}]" for n, kind in enumerate(namespaces.KINDS)}


def test_id_maps_that_map_zero():
    assert namespaces.maps_zero("         0          0 4294967295\n")
    assert namespaces.maps_zero("         0       1000          1\n")
    assert namespaces.maps_zero("      1000       1000          1\n"
                                "         0     100000      65536\n")


def test_id_maps_that_do_not_map_zero():
    assert not namespaces.maps_zero("")
    assert not namespaces.maps_zero("         1     100000      65536\n")


class Tree:
    """A fixture /proc: crwatch (`self`) in HOST namespaces, and processes placed as told."""

    def __init__(self, root: Path):
        self.root = root
        self.place("self", HOST)

    def place(self, name: str | int, links: dict[str, str], *, nspid: str = "",
              nssid: str = "", time_for_children: str | None = None) -> None:
        ns = self.root / str(name) / "ns"
        ns.mkdir(parents=True)
        for kind, link in links.items():
            (ns / kind).symlink_to(link)
        (ns / "time_for_children").symlink_to(time_for_children or links["time"])
        if name == "self":
            return
        pid = int(name)
        (self.root / str(pid) / "status").write_text(
            f"Name:\tsubject\nNSpid:\t{nspid or pid}\nNSsid:\t{nssid or pid}\n")
        fields = ["S", "1", str(pid), str(pid)] + ["0"] * 46
        (self.root / str(pid) / "stat").write_text(f"{pid} (subject) {' '.join(fields)}\n")

    def findings(self, pid: int) -> list:
        ctx = AuditContext(root_pid=ROOT, tree_pids={ROOT, CHILD}, proc_root=self.root)
        return list(namespaces.check_process(ctx, Proc(pid, self.root)))


@pytest.fixture
def tree(tmp_path) -> Tree:
    return Tree(tmp_path)


def test_a_tree_in_the_host_namespaces_has_no_finding(tree):
    tree.place(ROOT, HOST)
    tree.place(CHILD, HOST)
    assert tree.findings(ROOT) == [] and tree.findings(CHILD) == []


def test_the_roots_own_namespaces_are_noted(tree):
    tree.place(ROOT, dict(HOST, uts="uts:[1]", ipc="ipc:[2]"))
    [finding] = tree.findings(ROOT)
    assert (finding.code, finding.message) == (
        "namespace.own", f"pid {ROOT} lives in its own ipc, uts namespaces")


def test_a_root_in_its_own_pid_namespace_must_be_its_init(tree):
    tree.place(ROOT, dict(HOST, pid="pid:[1]"), nspid=f"{ROOT}\t2", nssid=f"{ROOT}\t2")
    assert sorted(f.code for f in tree.findings(ROOT)) == [
        "namespace.own", "namespace.pid_without_init"]


def test_the_init_of_its_own_pid_namespace_is_fine(tree):
    tree.place(ROOT, dict(HOST, pid="pid:[1]"), nspid=f"{ROOT}\t1", nssid=f"{ROOT}\t1")
    assert [f.code for f in tree.findings(ROOT)] == ["namespace.own"]


def test_a_session_leader_outside_the_pid_namespace_is_refused(tree):
    tree.place(ROOT, dict(HOST, pid="pid:[1]"), nspid=f"{ROOT}\t1", nssid="50\t0")
    assert "namespace.session_outside" in [f.code for f in tree.findings(ROOT)]


@pytest.mark.parametrize("kind", ["pid", "uts", "ipc", "user", "cgroup", "time"])
def test_nested_namespaces_that_criu_refuses(tree, kind):
    tree.place(ROOT, HOST)
    tree.place(CHILD, dict(HOST, **{kind: f"{kind}:[7]"}))
    [finding] = tree.findings(CHILD)
    assert finding.code == "namespace.nested"
    assert finding.message == (f"pid {CHILD} lives in a nested {kind} namespace ({kind}:[7]; "
                               f"the root's is {HOST[kind]})")


@pytest.mark.parametrize("kind", ["net", "mnt"])
def test_nested_mount_and_network_namespaces_are_noted(tree, kind):
    tree.place(ROOT, HOST)
    tree.place(CHILD, dict(HOST, **{kind: f"{kind}:[7]"}))
    assert [f.code for f in tree.findings(CHILD)] == ["namespace.nested_subns"]


def test_a_child_in_the_roots_own_namespace_is_not_nested(tree):
    tree.place(ROOT, dict(HOST, uts="uts:[1]"))
    tree.place(CHILD, dict(HOST, uts="uts:[1]"))
    assert tree.findings(CHILD) == []


def test_a_time_namespace_unshared_for_children_is_refused(tree):
    tree.place(ROOT, HOST, time_for_children="time:[9]")
    [finding] = tree.findings(ROOT)
    assert finding.code == "namespace.nested"
    assert "time namespace for its children (time:[9]" in finding.message
