"""/dev/tty and its session's pty, judged by crwatch and by the real CRIU.

CRIU restores /dev/tty from the session's pty: for each /dev/tty fd it wants a pty fd
of the tree whose session and foreground group are the /dev/tty's session, held by the
same process (tty.c tty_verify_ctty). The subjects lead their own session and make a
fresh pty their controlling terminal.
"""
from __future__ import annotations

import pytest

from tests.support.agreement import assert_agrees
from tests.support.subjects import subject

pytestmark = [pytest.mark.criu]

# A session leader with a fresh pty as its controlling terminal, and /dev/tty open.
CTTY = """
import pty, termios
signal.signal(signal.SIGHUP, signal.SIG_IGN)     # closing the master hangs the session up
master, slave = pty.openpty()
fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
"""


@pytest.mark.parametrize(("closed", "state"), [
    (("slave", "master"), "both pty ends closed"),
], ids=["no-pty"])
def test_dev_tty_without_its_sessions_pty_is_blocked(closed, state):
    code = CTTY + "tty = os.open('/dev/tty', os.O_RDWR)\n" + "".join(
        f"os.close({end})\n" for end in closed) + "ready(str(tty)); hold()\n"
    with subject(code) as s:
        document = assert_agrees(s.pid, f"/dev/tty held, {state}", expect="blocked",
                                 codes={"terminal.ctty_without_pty"},
                                 criu_error="ctty inheritance detected sid/pgrp 0, no PTY peer")
    reason = next(r for r in document["reasons"] if r["code"] == "terminal.ctty_without_pty")
    assert reason["fd"] == int(s.note)


@pytest.mark.parametrize(("closed", "state"), [
    ((), "both pty ends kept"),
    (("slave",), "the master kept"),
    (("master",), "the slave kept, hung up with its session"),
], ids=["both", "master", "hung-up-slave"])
def test_dev_tty_with_its_sessions_pty_in_the_same_process_is_ok(closed, state):
    code = CTTY + "tty = os.open('/dev/tty', os.O_RDWR)\n" + "".join(
        f"os.close({end})\n" for end in closed) + "ready(); hold()\n"
    with subject(code) as s:
        assert_agrees(s.pid, f"/dev/tty held, {state}", expect="ok")


def test_dev_tty_in_a_child_with_the_pty_in_its_parent_is_blocked():
    code = CTTY + """
go_r, go_w = os.pipe()
kid = os.fork()
if kid == 0:
    tty = os.open('/dev/tty', os.O_RDWR)
    for fd in (master, slave, go_r):
        os.close(fd)
    os.close(go_w)          # EOF for the parent: /dev/tty is open and the pty closed here
    hold()
os.close(go_w)
os.read(go_r, 1)
os.close(go_r)
ready(str(kid)); hold()
"""
    with subject(code) as s:
        kid = int(s.note)
        document = assert_agrees(s.pid, "/dev/tty in a child, the pty in its parent",
                                 expect="blocked", codes={"terminal.ctty_pty_elsewhere"}, tree=True,
                                 criu_error=f"ctty inheritance detected sid/pgrp {s.pid} "
                                            f"(ctty pid_real {kid} pty pid_real {s.pid})")
    reason = next(r for r in document["reasons"] if r["code"] == "terminal.ctty_pty_elsewhere")
    assert reason["pid"] == kid and f"pid {s.pid} holds" in reason["message"]
