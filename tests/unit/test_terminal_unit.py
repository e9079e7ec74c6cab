"""terminal: tty classification and the session rules, on fixture /proc trees with real ttys."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracker.checks import terminal
from tracker.context import AuditContext
from tracker.procfs import Proc

ROOT, OUTSIDE = 100, 300


@pytest.mark.parametrize(("major", "minor", "kind"), [
    (136, 0, "slave"), (136, 300, "slave"), (5, 2, "master"), (128, 0, "master"),
    (5, 0, "ctty"), (5, 1, "console"), (4, 1, "vt"), (4, 63, "vt"), (188, 0, "serial"),
    (4, 0, None), (4, 64, None), (1, 3, None), (137, 0, None),  # refused by the devices module
])
def test_tty_devices_are_classified_as_criu_does(major, minor, kind):
    assert terminal.classify(major, minor) == kind


@pytest.fixture
def pty():
    master, slave = os.openpty()
    yield os.ttyname(slave), os.fstat(slave).st_rdev
    os.close(master)
    os.close(slave)


class Tree:
    """A fixture /proc whose fds are symlinks to real tty devices."""

    def __init__(self, root: Path):
        self.root = root

    def process(self, pid: int, *, session: int, tty_nr: int = 0,
                fds: dict[int, tuple[str, int | None]] | None = None) -> None:
        base = self.root / str(pid)
        (base / "fd").mkdir(parents=True)
        (base / "fdinfo").mkdir()
        fields = ["S", "1", str(session), str(session), str(tty_nr)] + ["0"] * 45
        (base / "stat").write_text(f"{pid} (subject) {' '.join(fields)}\n")
        (base / "status").write_text(f"Name:\tsubject\nNSsid:\t{session}\n")
        for fd, (device, index) in (fds or {}).items():
            (base / "fd" / str(fd)).symlink_to(device)
            info = "pos:\t0\nflags:\t02\nmnt_id:\t25\n"
            (base / "fdinfo" / str(fd)).write_text(info + (f"tty-index:\t{index}\n"
                                                           if index is not None else ""))

    def findings(self) -> list:
        proc = Proc(ROOT, self.root)
        ctx = AuditContext(root_pid=ROOT, tree_pids={ROOT}, proc_root=self.root)
        ctx.tree_fds[ROOT] = proc.fds()
        return list(terminal.check_process(ctx, proc))


@pytest.fixture
def tree(tmp_path) -> Tree:
    return Tree(tmp_path)


def index_of(rdev: int) -> int:
    return os.minor(rdev)  # pty slaves are all major 136


def test_a_session_leader_without_ttys_has_no_finding(tree):
    tree.process(ROOT, session=ROOT)
    assert tree.findings() == []


def test_a_root_that_does_not_lead_its_session(tree):
    tree.process(ROOT, session=50)
    [finding] = tree.findings()
    assert (finding.code, finding.message) == (
        "terminal.root_not_session_leader",
        f"pid {ROOT} is not a session leader: its session is led by pid 50")


def test_a_slave_needs_its_master_in_the_tree(tree, pty):
    name, rdev = pty
    tree.process(ROOT, session=ROOT, fds={0: (name, None)})
    [finding] = tree.findings()
    assert (finding.code, finding.fd) == ("terminal.slave_without_master", 0)
    assert f"(index {index_of(rdev)})" in finding.message


def test_a_pair_inside_the_tree_with_its_controlling_slave_is_fine(tree, pty):
    name, rdev = pty
    tree.process(ROOT, session=ROOT, tty_nr=rdev,
                 fds={0: (name, None), 3: ("/dev/ptmx", index_of(rdev))})
    assert tree.findings() == []


def test_a_controlling_slave_of_a_session_led_from_outside(tree, pty):
    name, rdev = pty
    tree.process(ROOT, session=50, tty_nr=rdev,
                 fds={0: (name, None), 3: ("/dev/ptmx", index_of(rdev))})
    # Both ends report session 50: the slave as the holder's terminal, the master as its peer's.
    assert sorted((f.code, f.fd) for f in tree.findings()) == [
        ("terminal.foreign_session", 0), ("terminal.foreign_session", 3),
        ("terminal.root_not_session_leader", None)]


def test_a_master_whose_slave_controls_an_outside_session(tree, pty):
    name, rdev = pty
    tree.process(ROOT, session=ROOT, fds={3: ("/dev/ptmx", index_of(rdev))})
    tree.process(OUTSIDE, session=OUTSIDE, tty_nr=rdev)
    [finding] = tree.findings()
    assert (finding.code, finding.fd) == ("terminal.foreign_session", 3)
    assert f"belongs to session {OUTSIDE}" in finding.message


def test_a_slave_that_is_not_the_holders_terminal_has_no_session(tree, pty):
    # TIOCGSID on someone else's terminal fails: CRIU sees session 0 there.
    name, rdev = pty
    tree.process(ROOT, session=ROOT, fds={0: (name, None)})
    tree.process(OUTSIDE, session=OUTSIDE, tty_nr=rdev)
    assert [f.code for f in tree.findings()] == ["terminal.slave_without_master"]
