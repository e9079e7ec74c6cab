"""Sessions and terminals against the real CRIU: what --shell-job is for."""
from __future__ import annotations

import os

import pytest

from tests.support.agreement import assert_agrees
from tests.support.subjects import subject

pytestmark = [pytest.mark.criu]


def test_subject_with_null_stdio_leading_its_session_dumps():
    with subject("ready(); hold()") as s:
        assert_agrees(s.pid, "session leader, stdio on /dev/null", expect="ok")


def test_root_that_does_not_lead_its_session_needs_shell_job():
    # The subject leads its own session; its child, the audited root, does not.
    # (The test's own session would not do: CI may run in session 0, which has
    # no leader at all, a different state: namespace.session_outside.)
    code = """
kid = os.fork()
if kid == 0:
    hold()
ready(str(kid)); hold()
"""
    with subject(code) as parent:
        kid = int(parent.note)
        assert_agrees(kid, "root that does not lead its session", expect="needs_options",
                      codes={"terminal.root_not_session_leader"},
                      criu_error=f"The root process {kid} is not a session leader")


def test_pty_pair_with_its_controlling_slave_inside_dumps():
    code = """
import termios
master, slave = os.openpty()
fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
ready()
hold()
"""
    with subject(code) as s:
        assert_agrees(s.pid, "pty master and controlling slave both inside", expect="ok")


def test_slave_whose_master_is_outside_needs_shell_job():
    master, slave = os.openpty()
    code = f"""
import termios
fd = os.open({os.ttyname(slave)!r}, os.O_RDWR)
fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
ready(str(fd))
hold()
"""
    try:
        with subject(code) as s:
            document = assert_agrees(
                s.pid, "controlling pty slave, master held by the test", expect="needs_options",
                codes={"terminal.slave_without_master"},
                criu_error="without correspond master peer")
        assert {r["fd"] for r in document["reasons"]} == {int(s.note)}
    finally:
        os.close(master)
        os.close(slave)


def test_master_whose_slave_controls_an_outside_session_needs_shell_job():
    holder = """
master, slave = os.openpty()
name = os.ttyname(slave)
os.close(slave)
ready(f"{master} {name}")
hold()
"""
    with subject(holder) as s:
        master_fd, name = s.note.split()
        controller = f"""
import termios
fd = os.open({name!r}, os.O_RDWR)
fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
ready()
hold()
"""
        with subject(controller) as outside:
            document = assert_agrees(
                s.pid, "pty master whose slave is another session's terminal",
                expect="needs_options", codes={"terminal.foreign_session"},
                criu_error=f"Found dangling tty with sid {outside.pid}")
    reason = next(r for r in document["reasons"] if r["code"] == "terminal.foreign_session")
    assert reason["fd"] == int(master_fd)
    assert f"session {outside.pid}" in reason["message"]


def test_pty_slave_whose_master_was_closed_dumps():
    # Closing the master hangs the slave up and removes its /dev/pts node: CRIU saves a
    # hung-up tty as it is and needs no master for it.
    code = """
master, slave = os.openpty()
os.close(master)
ready(str(slave))
hold()
"""
    with subject(code) as s:
        assert os.readlink(f"/proc/{s.pid}/fd/{s.note}").endswith(" (deleted)")
        document = assert_agrees(s.pid, "pty slave whose master was closed", expect="ok")
    assert "terminal.slave_without_master" not in {r["code"] for r in document["reasons"]}


def test_controlling_pty_slave_hung_up_by_its_closed_master_dumps():
    # The hangup also ends the session's hold on the terminal; SIGHUP is ignored to survive it.
    code = """
import termios
signal.signal(signal.SIGHUP, signal.SIG_IGN)
master, slave = os.openpty()
fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
os.close(master)
ready(str(slave))
hold()
"""
    with subject(code) as s:
        assert_agrees(s.pid, "controlling pty slave hung up by its closed master", expect="ok")


def test_slave_whose_master_is_outside_is_not_hung_up_and_needs_shell_job():
    # The same slave, its master still open outside the tree: the hangup test must not
    # take a live pair for a hung-up one.
    master, slave = os.openpty()
    code = f"fd = os.open({os.ttyname(slave)!r}, os.O_RDWR | os.O_NOCTTY)\nready()\nhold()"
    try:
        with subject(code) as s:
            assert_agrees(s.pid, "pty slave, master held by the test, not controlling",
                          expect="needs_options", codes={"terminal.slave_without_master"},
                          criu_error="without correspond master peer")
    finally:
        os.close(master)
        os.close(slave)
