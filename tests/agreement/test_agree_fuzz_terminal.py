"""Terminal states the differential fuzzer found crwatch and the real CRIU judging differently.

- Two pty slaves whose masters are held outside the tree: --shell-job covers one, each
  further one must be named with --external tty[RDEV:DEV] (tty.c tty_verify_active_pairs:
  "Only one slave external peer is allowed").
- CRIU judges each tty once, from its first fd in dump order (tree order, fds ascending):
  /dev/tty inherited by a child is checked in the parent only, and the first /dev/tty's
  pty must be held by the same process (tty.c tty_verify_ctty).
The test holds the masters that are outside the tree; subjects lead their own session.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import pytest

from tests.support.agreement import assert_agrees
from tests.support.subjects import subject
from tracker.criu.runner import find_criu

pytestmark = [pytest.mark.criu]

# The subject opens each slave named in SLAVES itself (the test keeps its own copies).
OPEN_SLAVES = """
import termios
slaves = [os.open(name, os.O_RDWR | os.O_NOCTTY) for name in SLAVES]
"""

# A child that keeps the last slave while the parent closes it, reported once the child has
# closed the others (an EOF on a pipe).
CHILD_KEEPS_LAST = """
go_r, go_w = os.pipe()
kid = os.fork()
if kid == 0:
    for fd in slaves[:-1] + [go_r]:
        os.close(fd)
    os.close(go_w)
    hold()
os.close(go_w)
os.read(go_r, 1)
os.close(go_r)
os.close(slaves[-1])
ready(str(kid)); hold()
"""


@contextmanager
def outside_ptys(count: int) -> Iterator[list[str]]:
    """`count` fresh ptys whose masters (and slaves) the test holds: their slave paths."""
    pairs = [os.openpty() for _ in range(count)]
    try:
        yield [os.ttyname(slave) for _, slave in pairs]
    finally:
        for master, slave in pairs:
            os.close(master)
            os.close(slave)


def external_value(path: str) -> str:
    info = os.stat(path)
    return f"tty[{info.st_rdev:x}:{info.st_dev:x}]"


def codes_of(document: dict, code: str) -> list[dict]:
    return [r for r in document["reasons"] if r["code"] == code]


@pytest.mark.parametrize("count", [2, 3])
def test_slaves_without_masters_need_shell_job_and_external_for_all_but_the_first(count):
    with outside_ptys(count) as names:
        code = f"SLAVES = {names!r}\n" + OPEN_SLAVES + "ready(); hold()\n"
        with subject(code) as s:
            document = assert_agrees(
                s.pid, f"{count} pty slaves, masters held by the test", expect="needs_options",
                codes={"terminal.slave_without_master", "terminal.another_slave_without_master"},
                criu_error="without correspond master peer")
            values = [external_value(name) for name in names]
            # assert_agrees drops --external with all its values: each value is needed too
            for left_out in values[1:]:
                kept = [part for value in values[1:] if value != left_out
                        for part in ("--external", value)]
                refused = find_criu().dump(s.pid, ["--shell-job", *kept])
                assert not refused.ok and "Only one slave external peer is allowed" in refused.log
    others = codes_of(document, "terminal.another_slave_without_master")
    assert [r["option_value"] for r in others] == values[1:]
    assert document["required_options"] == ["--external", "--shell-job"]


def test_two_slaves_without_masters_in_a_parent_and_its_child():
    with outside_ptys(2) as names:
        code = f"SLAVES = {names!r}\n" + OPEN_SLAVES + CHILD_KEEPS_LAST
        with subject(code) as s:
            document = assert_agrees(
                s.pid, "pty slaves without masters, one in the root and one in its child",
                expect="needs_options", tree=True,
                codes={"terminal.slave_without_master", "terminal.another_slave_without_master"})
            values = [external_value(name) for name in names]
    second, = codes_of(document, "terminal.another_slave_without_master")
    assert second["pid"] == int(s.note) and second["option_value"] == values[1]


def test_one_slave_without_master_on_two_fds_needs_only_shell_job():
    with outside_ptys(1) as names:
        code = (f"SLAVES = {names * 2!r}\n" + OPEN_SLAVES + CHILD_KEEPS_LAST)
        with subject(code) as s:
            document = assert_agrees(
                s.pid, "one pty slave without master, in the root and its child",
                expect="needs_options", tree=True, codes={"terminal.slave_without_master"})
    assert document["required_options"] == ["--shell-job"]


def test_the_slave_dev_tty_needs_is_the_one_shell_job_covers():
    # The controlling slave has the higher index: naming it --external would leave /dev/tty
    # without its pty (tty_verify_ctty), so the lower one is the external one.
    with outside_ptys(2) as names:
        code = f"SLAVES = {names!r}\n" + OPEN_SLAVES + """
fcntl.ioctl(slaves[1], termios.TIOCSCTTY, 0)
os.open('/dev/tty', os.O_RDWR)
ready(); hold()
"""
        with subject(code) as s:
            document = assert_agrees(
                s.pid, "two pty slaves without masters, the second controlling, /dev/tty open",
                expect="needs_options",
                codes={"terminal.slave_without_master", "terminal.another_slave_without_master"})
            values = [external_value(name) for name in names]
    second, = codes_of(document, "terminal.another_slave_without_master")
    assert second["option_value"] == values[0]


CTTY = """
import pty, termios
signal.signal(signal.SIGHUP, signal.SIG_IGN)
master, slave = pty.openpty()
fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
"""


def test_dev_tty_inherited_by_a_child_is_judged_in_the_parent_only():
    code = CTTY + """
tty = os.open('/dev/tty', os.O_RDWR)
go_r, go_w = os.pipe()
kid = os.fork()
if kid == 0:
    os.close(go_r)
    os.close(go_w)
    hold()
os.close(go_w)
os.read(go_r, 1)            # EOF once the child has closed its copy of the pipe
os.close(go_r)
ready(str(kid)); hold()
"""
    with subject(code) as s:
        assert_agrees(s.pid, "pty and /dev/tty in a parent, inherited by its child",
                      expect="ok", tree=True)


def test_dev_tty_in_a_child_whose_controlling_slave_has_its_master_in_the_parent():
    # The fuzzer's pty_across_fork + dev_tty: the parent keeps the master, the child makes the
    # slave its controlling terminal and opens /dev/tty. The master answers for the child's
    # session whoever holds it, and comes first in dump order.
    code = """
import pty, termios
master, slave = pty.openpty()
go_r, go_w = os.pipe()
kid = os.fork()
if kid == 0:
    os.close(master)
    os.close(go_r)
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    os.open('/dev/tty', os.O_RDWR)
    os.close(go_w)
    hold()
os.close(go_w)
os.close(slave)
os.read(go_r, 1)
os.close(go_r)
ready(str(kid)); hold()
"""
    with subject(code) as s:
        kid = int(s.note)
        document = assert_agrees(
            s.pid, "/dev/tty and its controlling slave in a child, the master in its parent",
            expect="blocked", tree=True, codes={"terminal.ctty_pty_elsewhere"},
            criu_error=f"ctty inheritance detected sid/pgrp {kid} (ctty pid_real {kid} "
                       f"pty pid_real {s.pid})")
    reason, = codes_of(document, "terminal.ctty_pty_elsewhere")
    assert reason["pid"] == kid


def test_a_hung_up_slave_is_no_second_slave_without_master():
    # Closing a master hangs its slave up: CRIU leaves a hung-up tty out of the pairs, so the
    # one slave whose master the test holds is the only one --shell-job has to cover.
    with outside_ptys(1) as names:
        code = f"SLAVES = {names!r}\n" + OPEN_SLAVES + """
master, slave = os.openpty()
os.close(master)
ready(); hold()
"""
        with subject(code) as s:
            document = assert_agrees(
                s.pid, "a hung-up pty slave and one whose master the test holds",
                expect="needs_options", codes={"terminal.slave_without_master"})
    assert document["required_options"] == ["--shell-job"]


def test_only_the_first_dev_tty_of_the_tree_needs_its_pty_in_its_holder():
    # The child leads a session of its own whose terminal is a pty the parent holds the master
    # of; the child keeps only /dev/tty. CRIU saves /dev/tty once, from the parent's fd.
    code = CTTY + """
tty = os.open('/dev/tty', os.O_RDWR)
other_master, other_slave = pty.openpty()
go_r, go_w = os.pipe()
kid = os.fork()
if kid == 0:
    for fd in (tty, master, slave, other_master, go_r):
        os.close(fd)
    os.setsid()
    fcntl.ioctl(other_slave, termios.TIOCSCTTY, 0)
    os.open('/dev/tty', os.O_RDWR)
    os.close(other_slave)
    os.close(go_w)
    hold()
os.close(go_w)
os.close(other_slave)
os.read(go_r, 1)
os.close(go_r)
ready(str(kid)); hold()
"""
    with subject(code) as s:
        assert_agrees(s.pid, "/dev/tty in a parent with its pty, and in a child of another "
                             "session without its pty", expect="ok", tree=True)
