"""Terminals and sessions (tracker/checks/terminal.py; CRIU tty.c)."""
from __future__ import annotations

import fcntl
import os
import termios

from bench.fuzz import generator


def has_controlling_terminal() -> bool:
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
        return True
    except OSError:
        return False


def take_controlling(fd: int) -> None:
    """Make the pty slave `fd` the controlling terminal, leading a new session if the process
    does not lead one; a process that already has a controlling terminal keeps it."""
    if has_controlling_terminal():
        return
    if os.getsid(0) != os.getpid():
        os.setsid()
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


@generator("terminal", weight=1.5, draw=lambda rng, place: {"controlling": rng.random() < 0.5,
                                                            "keep": rng.choice(("both", "both", "master"))})
def pty_pair(ctx, controlling, keep):
    """a pty pair in the process (the slave as its controlling terminal or not), or only the master"""
    master, slave = ctx.keep(*os.openpty())
    if controlling and keep == "both":
        take_controlling(slave)
    if keep == "master":
        os.close(slave)


@generator("terminal", draw=lambda rng, place: {"controlling": rng.random() < 0.7})
def pty_across_fork(ctx, controlling):
    """a pty whose master this process keeps and whose slave its children keep (the first child
    as its controlling terminal, or none)"""
    master, slave = ctx.keep(*os.openpty())
    ctx.shared_fds.add(slave)

    def in_child():
        os.close(master)
        if controlling and ctx.child_number == 0:   # a terminal controls one session
            take_controlling(slave)
    ctx.in_children.append(in_child)
    ctx.after_children.append(lambda children: os.close(slave) if children else None)


@generator("terminal", draw=lambda rng, place: {"controlling": rng.random() < 0.7})
def pty_slave_master_outside(ctx, controlling):
    """a pty slave (the controlling terminal or not) whose master a process outside the tree holds"""
    master, slave = os.openpty()
    ctx.outside(master)
    os.close(master)
    ctx.keep(slave)
    if controlling:
        take_controlling(slave)


@generator("terminal")
def dev_tty(ctx):
    """/dev/tty open, the controlling terminal being a pty the process holds"""
    master, slave = ctx.keep(*os.openpty())
    take_controlling(slave)
    ctx.keep(os.open("/dev/tty", os.O_RDWR))
