"""Sessions and terminals: what makes CRIU ask for --shell-job.

CRIU restores sessions and ttys only when the tree owns them: the root must
lead its session, every pty slave needs its master in the tree, and a tty
whose session (TIOCGSID, as the holder sees it) is led from outside is a
"dangling tty". --shell-job lets CRIU inherit those from whoever restores.
A tty that was hung up (a pty slave whose master was closed, a terminal
after vhangup) answers every ioctl with EIO: CRIU saves what little it can
of it and leaves it out of the pairs and sessions (parasite.c,
parasite_dump_tty; tty.c, dump_tty_info), and so does crwatch.
CRIU judges each tty once, as the first fd on it in dump order (tree order,
fds ascending) shows it: a pty end is one tty per index, and /dev/tty, the
console, the virtual consoles and the serial lines are one tty each
(tty.c tty_gen_id, dump_one_tty: dump_tty_info runs once per tty_info_id).
With --shell-job, one pty slave may lack its master; each further one must be
named with --external tty[RDEV:DEV], which takes it out of the pairs
(tty.c tty_verify_active_pairs, get_tty_driver).
/dev/tty is restored from the session's pty, so CRIU wants, for that first
/dev/tty fd, a pty of the tree whose session and foreground group are the
/dev/tty's session, held by the same process (tty.c tty_verify_ctty); the
session and group are what TIOCGSID/TIOCGPGRP answer in the holder (0 when
the tty is not its controlling terminal, or was hung up).
The devices module leaves the tty devices (pty masters and slaves, /dev/tty,
console, virtual consoles, USB and low-density serial) to this one.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
from typing import Iterator, NamedTuple

from tracker.checks import tree
from tracker.checks.sockets.fd_query import getfd
from tracker.context import AuditContext
from tracker.procfs import DEFAULT_PROC_ROOT, OpenFd, Proc, ProcessGone, parse_stat
from tracker.rules import BLOCKER, OPTION, Finding, Rule

RULES = (
    Rule("terminal.root_not_session_leader", "The root of the tree does not lead its session",
         OPTION, "pass --shell-job (or start the program with setsid so that it leads its own "
         "session)", option="--shell-job",
         criu_message="The root process %d is not a session leader. Consider using --shell-job "
                      "option"),
    Rule("terminal.slave_without_master", "A pty slave whose master is held outside the tree",
         OPTION, "pass --shell-job, or point the fd at /dev/null or a file before checkpointing",
         option="--shell-job",
         criu_message="Found slave peer index %d without correspond master peer"),
    Rule("terminal.another_slave_without_master", "A second pty slave whose master is held "
         "outside the tree", OPTION,
         "dump with --external tty[RDEV:DEV] naming this slave (and give it back with "
         "--inherit-fd on restore), or checkpoint its master's process too",
         option="--external",
         criu_message="Only one slave external peer is allowed (index %d)"),
    Rule("terminal.foreign_session", "A terminal whose session is led from outside the tree",
         OPTION, "pass --shell-job (the restored tree then inherits the restoring shell's "
         "terminal)",
         option="--shell-job",
         criu_message="Found dangling tty with sid %d pgid %d (%s) on peer fd %d."),
    Rule("terminal.ctty_without_pty", "/dev/tty is held but no pty of the tree has its session "
         "and foreground group", BLOCKER,
         "close /dev/tty, or keep the session's pty (its master, or the slave as the holder's "
         "controlling terminal with the session leader's group in the foreground) in the tree, "
         "before checkpointing",
         criu_message="ctty inheritance detected sid/pgrp %d, no PTY peer with sid/pgrp needed"),
    Rule("terminal.ctty_pty_elsewhere", "/dev/tty is held by one process and its session's pty "
         "by another", BLOCKER,
         "have the process that holds /dev/tty hold the session's pty too (or close /dev/tty) "
         "before checkpointing",
         criu_message="ctty inheritance detected sid/pgrp %d (ctty pid_real %d pty pid_real %d)"),
)

# As CRIU's get_tty_driver(): pty slaves are all major 136 (minors go past 255);
# 128-135 are pty masters opened through their own nodes rather than /dev/ptmx.
PTS_MAJOR, PTM_MAJORS = 136, range(128, 136)
TTYAUX_MAJOR, TTY_MINOR, CONSOLE_MINOR, PTMX_MINOR = 5, 0, 1, 2
VT_MAJOR, VT_MINORS = 4, range(1, 64)
SERIAL_MAJORS = frozenset({188, 204})  # USB serial, low-density serial
TIOCGSID, TIOCGPGRP = 0x5429, 0x540F
STAT_TPGID = 5   # /proc/PID/stat's tpgid, counted after the ")" of comm
TTY_MAJORS = frozenset([PTS_MAJOR, *PTM_MAJORS, TTYAUX_MAJOR, VT_MAJOR, *SERIAL_MAJORS])


class TtyFd(NamedTuple):
    """A tty fd and how CRIU's tty code sees it."""

    open_fd: OpenFd
    kind: str        # master, slave, ctty, console, vt, serial
    rdev: int
    index: int | None  # the pty index, for masters and slaves

    @property
    def slave_rdev(self) -> int | None:
        """The device of the pty slave this fd belongs to (for a master: its peer)."""
        if self.index is None:
            return None
        return os.makedev(PTS_MAJOR, self.index)

    @property
    def info_id(self) -> tuple[str, int | None]:
        """What CRIU's tty_gen_id tells apart: a pty end by its index; any other kind is
        one tty whatever the device (its driver has one fixed index)."""
        return self.kind, self.index


def check_process(ctx: AuditContext, proc: Proc) -> Iterator[Finding]:
    # A session led from outside the pid namespace is namespace.session_outside:
    # --shell-job cannot help there, so it is not offered.
    if (proc.pid == ctx.root_pid and proc.stat.session != proc.pid
            and not tree.session_outside_pidns(proc)):
        leader = (f"pid {proc.stat.session}" if proc.stat.session
                  else "no process (session 0, never set up with setsid)")
        yield Finding("terminal.root_not_session_leader", f"pid {proc.pid} is not a session "
                      f"leader: its session is led by {leader}", proc.pid)
    ttys = list(tty_fds(ctx.tree_fds.get(proc.pid, [])))
    unpaired = ctx.table("terminal.unpaired_slaves", lambda: _unpaired_slaves(ctx))
    for tty in ttys:
        if tty.kind == "slave" and tty.index in unpaired:
            yield _slave_without_master(proc, tty, unpaired)
        session = _session(ctx, proc, tty)
        if session and not ctx.in_tree(session):
            yield Finding("terminal.foreign_session", f"fd {tty.open_fd.fd}: {tty.kind} "
                          f"{tty.open_fd.target} belongs to session {session}, led from outside "
                          "the tree", proc.pid, fd=tty.open_fd.fd)
    # a fixture's ttys answer no ioctl
    if ctx.proc_root == DEFAULT_PROC_ROOT and any(tty.kind == "ctty" for tty in ttys):
        yield from _check_ctty(ctx, proc)


class TtyEntry(NamedTuple):
    """A tty fd as CRIU's tty_verify_ctty sees it."""

    pid: int
    fd: int
    kind: str
    sid: int
    pgrp: int
    index: int | None

    @property
    def pty(self) -> bool:
        return self.kind in ("master", "slave")


def _slave_without_master(proc: Proc, tty: TtyFd, unpaired: list[int]) -> Finding:
    """The first unpaired slave is --shell-job's; each further one needs --external."""
    text = (f"fd {tty.open_fd.fd}: pty slave {tty.open_fd.target} (index {tty.index}) has no "
            "master in the tree")
    if tty.index == unpaired[0]:
        return Finding("terminal.slave_without_master", text, proc.pid, fd=tty.open_fd.fd)
    value = f"tty[{tty.rdev:x}:{tty.open_fd.stat.st_dev:x}]"
    return Finding("terminal.another_slave_without_master",
                   f"{text}, and --shell-job takes only one such slave (index {unpaired[0]})",
                   proc.pid, fd=tty.open_fd.fd, option_value=value,
                   remedy=f"dump with --external {value} (and give the slave back with "
                          "--inherit-fd on restore), or checkpoint its master's process too")


def _unpaired_slaves(ctx: AuditContext) -> list[int]:
    """The indexes of the pty slaves CRIU pairs with no master (not hung up as their first fd
    shows them), the one --shell-job covers first: the pty the first /dev/tty needs if it is
    one of them (an --external tty is no pty to tty_verify_ctty), else the lowest index, the
    one tty_verify_active_pairs passes."""
    first = _first_fds(ctx)
    masters = {tty.index for _, _, tty in first if tty.kind == "master"}
    unpaired = sorted(tty.index for _, proc, tty in first
                      if tty.kind == "slave" and tty.index not in masters
                      and not _hung_up_now(ctx, proc, tty))
    # a fixture's ttys answer no ioctl; with one unpaired slave there is nothing to choose
    if (len(unpaired) < 2 or ctx.proc_root != DEFAULT_PROC_ROOT
            or not any(tty.kind == "ctty" for _, _, tty in first)):
        return unpaired
    needed = _ctty_pty(ctx)
    if needed is not None and needed.kind == "slave" and needed.index in unpaired:
        unpaired.remove(needed.index)
        unpaired.insert(0, needed.index)
    return unpaired


def _hung_up_now(ctx: AuditContext, proc: Proc, tty: TtyFd) -> bool:
    try:
        return _hung_up(ctx, proc, tty)
    except ProcessGone:
        return True         # the fd closed meanwhile: no slave to pair


def _first_fds(ctx: AuditContext) -> list[tuple[int, Proc, TtyFd]]:
    """Each tty of the tree as the first fd on it in CRIU's dump order (tree order, fds
    ascending): CRIU reads a tty's session, group and hangup only there (dump_tty_info runs
    once per tty_info_id)."""
    def collect() -> list[tuple[int, Proc, TtyFd]]:
        first, seen = [], set()
        for pid in tree.dump_order(ctx):
            # the few ttys put in fd order, not the whole table
            for tty in sorted(tty_fds(ctx.tree_fds.get(pid, [])), key=lambda tty: tty.open_fd.fd):
                if tty.info_id not in seen:
                    seen.add(tty.info_id)
                    first.append((pid, ctx.proc(pid), tty))
        return first
    return ctx.table("terminal.first_fds", collect)


def _ctty_pty(ctx: AuditContext) -> TtyEntry | None:
    """The pty tty_verify_ctty pairs with the tree's /dev/tty: the first with its session as
    session and foreground group; None without /dev/tty or such a pty."""
    entries = ctx.table("terminal.ctty_entries", lambda: _tty_entries(ctx))
    ctty = next((e for e in entries if e.kind == "ctty"), None)
    if ctty is None:
        return None
    return next((e for e in entries if e.pty and e.sid == ctty.sid and e.pgrp == ctty.sid), None)


def _check_ctty(ctx: AuditContext, proc: Proc) -> Iterator[Finding]:
    entries = ctx.table("terminal.ctty_entries", lambda: _tty_entries(ctx))
    for ctty in entries:
        if ctty.pid != proc.pid or ctty.kind != "ctty":
            continue
        pty = _ctty_pty(ctx)
        session = f"session {ctty.sid}" if ctty.sid else "no session (hung up, or not its ctty)"
        if pty is None:
            yield Finding("terminal.ctty_without_pty", f"fd {ctty.fd}: /dev/tty of {session}, "
                          f"and no pty fd of the tree has sid and foreground group "
                          f"{ctty.sid}", proc.pid, fd=ctty.fd)
        elif pty.pid != proc.pid:
            yield Finding("terminal.ctty_pty_elsewhere", f"fd {ctty.fd}: /dev/tty of {session}, "
                          f"whose pty (fd {pty.fd}, a {pty.kind}) pid {pty.pid} holds",
                          proc.pid, fd=ctty.fd)


def _tty_entries(ctx: AuditContext) -> list[TtyEntry]:
    """CRIU's all_ttys: each tty of the tree once, from its first fd in dump order, with the
    session and group the parasite reads in that fd's holder."""
    entries = []
    for pid, proc, tty in _first_fds(ctx):
        try:
            sid, pgrp = _sid_and_group(ctx, proc, tty)
        except ProcessGone:
            continue        # the fd closed meanwhile
        entries.append(TtyEntry(pid, tty.open_fd.fd, tty.kind, sid, pgrp, tty.index))
    return entries


def _sid_and_group(ctx: AuditContext, proc: Proc, tty: TtyFd) -> tuple[int, int]:
    """TIOCGSID and TIOCGPGRP as the holder gets them. A master answers for its slave,
    whoever asks: asked here on a copy. Any other tty answers only its own session's
    processes: the holder's session and foreground group when it is the holder's
    controlling terminal (/dev/tty always names it), else 0. A hung-up tty: 0."""
    if tty.kind == "master":
        return _ask_master(proc, tty)
    if _hung_up(ctx, proc, tty):
        return 0, 0
    controlling = proc.stat.tty_nr and (tty.kind == "ctty" or proc.stat.tty_nr == tty.rdev)
    if not controlling:
        return 0, 0
    fields = proc.read("stat").rpartition(")")[2].split()
    return proc.stat.session, int(fields[STAT_TPGID])


def _ask_master(proc: Proc, tty: TtyFd) -> tuple[int, int]:
    copy = getfd(proc.pid, tty.open_fd.fd)
    try:
        return _ioctl_pid(copy, TIOCGSID), _ioctl_pid(copy, TIOCGPGRP)
    finally:
        os.close(copy)


def _ioctl_pid(fd: int, request: int) -> int:
    try:
        answer = fcntl.ioctl(fd, request, b"\0\0\0\0")
    except OSError:
        return 0            # ENOTTY: no session; the parasite reads 0 the same way
    return int.from_bytes(answer, sys.byteorder, signed=True)


def tty_fds(fds: list[OpenFd]) -> Iterator[TtyFd]:
    """The fds on tty devices that CRIU's tty code dumps."""
    for open_fd in fds:
        # Sockets, pipes and anon inodes have no path; the stat of the rest is
        # already cached by the fd dispatcher.
        if not open_fd.target.startswith("/"):
            continue
        try:
            info = open_fd.stat
        except ProcessGone:
            continue  # closed meanwhile, or its process exited: no dump meets it
        rdev = info.st_rdev
        major, minor = os.major(rdev), os.minor(rdev)
        if not stat.S_ISCHR(info.st_mode) or major not in TTY_MAJORS:
            continue
        kind = classify(major, minor)
        if kind == "master":
            index = (_master_index(open_fd) if major == TTYAUX_MAJOR
                     else (major - PTM_MAJORS.start) * 256 + minor)
            yield TtyFd(open_fd, kind, rdev, index)
        elif kind == "slave":
            yield TtyFd(open_fd, kind, rdev, minor)
        elif kind:
            yield TtyFd(open_fd, kind, rdev, None)


def classify(major: int, minor: int) -> str | None:
    if major == PTS_MAJOR:
        return "slave"
    if major in PTM_MAJORS:
        return "master"
    if major in SERIAL_MAJORS:
        return "serial"
    if major == TTYAUX_MAJOR:
        return {TTY_MINOR: "ctty", CONSOLE_MINOR: "console", PTMX_MINOR: "master"}.get(minor)
    if major == VT_MAJOR and minor in VT_MINORS:
        return "vt"
    return None


def _hung_up(ctx: AuditContext, proc: Proc, tty: TtyFd) -> bool:
    """Whether the tty answers TIOCGSID with EIO, as CRIU's parasite finds a hung-up tty.
    Asked on a copy of the fd: the same open file, whose operations the hangup replaced."""
    if ctx.proc_root != DEFAULT_PROC_ROOT:
        return False        # a fixture's fds are not the files the process holds
    copy = getfd(proc.pid, tty.open_fd.fd)
    try:
        fcntl.ioctl(copy, TIOCGSID, b"\0\0\0\0")
    except OSError as error:
        return error.errno == errno.EIO
    finally:
        os.close(copy)
    return False


def _master_index(open_fd: OpenFd) -> int | None:
    index = open_fd.fdinfo.get("tty-index")
    return int(index) if index is not None and index.isdigit() else None


def _session(ctx: AuditContext, proc: Proc, tty: TtyFd) -> int:
    """The session CRIU reads with TIOCGSID on this fd in the holder; 0 when it has none.

    A master reports its slave's session whoever holds it; any other tty only
    reports one when it is the holder's own controlling terminal.
    """
    if tty.kind == "master":
        sessions = ctx.table("terminal.sessions", lambda: _sessions_by_ctty(ctx))
        return sessions.get(tty.slave_rdev, 0) if tty.slave_rdev else 0
    if tty.kind == "ctty":
        return proc.stat.session if proc.stat.tty_nr else 0
    return proc.stat.session if proc.stat.tty_nr == tty.rdev else 0


def _sessions_by_ctty(ctx: AuditContext) -> dict[int, int]:
    """Controlling tty device -> the session it belongs to, over every process of the host."""
    sessions = {}
    for name in os.listdir(ctx.proc_root):
        if not name.isdigit():
            continue
        try:
            with open(ctx.proc_root / name / "stat", encoding="utf-8",
                      errors="surrogateescape") as file:
                stat = parse_stat(file.read())
        except (OSError, ValueError, IndexError):
            continue  # gone, or not a process directory
        if stat.tty_nr:
            sessions[stat.tty_nr] = stat.session
    return sessions
