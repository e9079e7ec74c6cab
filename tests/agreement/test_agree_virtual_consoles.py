"""Virtual consoles (/dev/tty1..63, major 4), which this machine has, judged by crwatch and by
the real CRIU (tty.c dumps them as TTY_TYPE__VT): held plainly, as the root's controlling
terminal, and as the controlling terminal of a session outside the tree."""
from __future__ import annotations

import os

import pytest

from tests.support.agreement import assert_agrees
from tests.support.subjects import subject

pytestmark = [pytest.mark.criu]

CONSOLE = "/dev/tty5"
# The session a terminal belongs to (TIOCGSID), in the subject.
SESSION_OF = """
import struct
def session_of(fd):
    return struct.unpack("i", fcntl.ioctl(fd, 0x5429, b"\\0" * 4))[0]
"""


def test_a_virtual_console_held_without_being_a_controlling_terminal_dumps():
    assert os.path.exists(CONSOLE)
    with subject(f"fd = os.open({CONSOLE!r}, os.O_RDWR | os.O_NOCTTY); ready(); hold()") as s:
        assert_agrees(s.pid, "virtual console held, not a controlling terminal", expect="ok")


def test_a_virtual_console_as_the_roots_controlling_terminal_dumps():
    # A session leader that opens a tty without O_NOCTTY makes it its controlling terminal.
    code = SESSION_OF + f"""
fd = os.open({CONSOLE!r}, os.O_RDWR)
assert session_of(fd) == os.getpid()
ready(); hold()"""
    with subject(code) as s:
        assert_agrees(s.pid, "virtual console as the root's controlling terminal", expect="ok")


def test_a_virtual_console_another_session_controls_dumps():
    code = SESSION_OF + f"""
fd = os.open({CONSOLE!r}, os.O_RDWR)
assert session_of(fd) == os.getpid()
ready(); hold()"""
    with subject(code):
        opened = f"fd = os.open({CONSOLE!r}, os.O_RDWR | os.O_NOCTTY); ready(); hold()"
        with subject(opened) as s:
            assert_agrees(s.pid, "virtual console controlled by a session outside the tree",
                          expect="ok")
