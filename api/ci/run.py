"""`crwatch run -- CMD`: run a command and judge its whole process tree, for CI.

The command runs as a child of crwatch, which is made the tree's child
subreaper so that every process the command starts stays in the tree. The
transitions of the tree come from a running service's `/events`, else from a
`crwatch watch` of its own (root); without either, with `--degraded-ok`,
from audits every `--interval` seconds. At the end, once the feed has caught
up (a barrier), whatever still runs is audited, and the report says every
process that was ever non-checkpointable, why, when and for how long.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from api.ci.feed import Feed, FeedError, choose_feed
from api.ci.recorder import Members, Recorder, become_subreaper
from api.ci.report import document, junit, text
from tracker.environment import current as current_environment
from tracker.procfs import AccessDenied, Proc, ProcessGone
from tracker.profiles import Profile
from tracker.safe_text import json_text
from tracker.verdict import utc_now

EXIT_OK, EXIT_NOT_CHECKPOINTABLE, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 127
TICK_S = 0.02   # how often markers and orphans are looked at while the command runs


def run_run(args, chosen: Profile) -> int:
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        print("crwatch: run needs a command: crwatch run [OPTIONS] -- CMD [ARGS...]",
              file=sys.stderr)
        return EXIT_USAGE
    if _executable(command[0]) is None:
        print(f"crwatch: {command[0]}: command not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    unwritable = [problem for path in (args.json, args.junit) if path
                  and (problem := _unwritable(path))]
    if unwritable:  # said before the command runs, not after a long run
        for problem in unwritable:
            print(f"crwatch: {problem}", file=sys.stderr)
        return EXIT_USAGE
    mode = "marker" if (args.at_signal or args.at_file) else "at-end" if args.at_end \
        else "transient"

    # The dumper's environment (CRIU's feature checks run as children of crwatch) is
    # detected before the tree is followed: those checks are never taken for part of it.
    current_environment()
    become_subreaper()
    members = Members(root=os.getpid(), excluded=set())
    recorder = Recorder(members, chosen, args.allow)
    try:
        feed, source = _feed(args, chosen, recorder)
    except FeedError as error:
        print(f"crwatch: {error}", file=sys.stderr)
        return EXIT_USAGE
    if feed is not None:
        recorder.follow(feed)

    markers: list[dict] = []
    signalled: list[str] = []
    if args.at_signal:
        signal.signal(args.at_signal, lambda number, _: signalled.append(
            f"signal {signal.Signals(number).name}"))
    started_at = utc_now()
    # A workload that must hold its state until it is judged waits for a line here.
    marks = Path(tempfile.mkdtemp(prefix="crwatch-run-")) / "marks"
    marks.touch()
    before = _stamp(args.at_file) if args.at_file else None  # before the command can touch it
    environment = dict(os.environ, CRWATCH_PID=str(os.getpid()), CRWATCH_MARKS=str(marks))
    try:
        # Its own session, as a checkpointed service would have (else every verdict would
        # ask for --shell-job); crwatch passes on the signals a terminal would send it, and
        # if crwatch is killed (a CI timeout), the command gets SIGTERM (setpriv execs it).
        child = subprocess.Popen(["setpriv", "--pdeathsig", "TERM", "--", *command],
                                 env=environment, start_new_session=True)
    except OSError as error:
        _close(feed)
        print(f"crwatch: {command[0]}: {error.strerror}", file=sys.stderr)
        return EXIT_NOT_FOUND
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, lambda number, _: _signal_group(child.pid, number))
    managed = {child.pid} | members.excluded
    try:
        _follow(child, args, recorder, feed, markers, signalled, managed, marks, before)
        if feed is not None:
            feed.barrier()  # every event until now is in, the command still a zombie
        status = _status(child.wait())
        recorder.audit_alive(utc_now(), "end")
    except FeedError as error:
        status = _status(child.wait())
        recorder.audit_alive(utc_now(), "end")
        markers.append({"at": utc_now(), "cause": f"the feed failed: {error}", "audited": 0})
    finally:
        _close(feed)
        shutil.rmtree(marks.parent, ignore_errors=True)

    problems = []
    if mode == "marker" and not any(m["cause"].startswith(("signal", "file")) for m in markers):
        problems.append("the marker never came: the state was never judged")
    report = document(command=command, mode=mode, judged_by=chosen, allow=args.allow,
                      source=source, started_at=started_at, ended_at=utc_now(), status=status,
                      exit_code=0, markers=markers, members=[
                          m for m in members.known.values() if m.pid not in members.excluded],
                      lost=recorder.lost, problems=problems)
    report["exit_code"] = status if status != 0 else \
        (EXIT_OK if report["checkpointable"] else EXIT_NOT_CHECKPOINTABLE)
    print(text(report), file=sys.stderr)
    written = all([_write(args.json, (json_text(report, indent=2) + "\n").encode(), "report"),
                   _write(args.junit, junit(report), "JUnit report")])
    return report["exit_code"] if written or report["exit_code"] else EXIT_USAGE


def _unwritable(path: str) -> str | None:
    """Why a report cannot be written at `path` (None: it can), found by opening it the way
    the report will be written, without changing it: a file made only for this goes again."""
    existed = os.path.lexists(path)
    try:
        # O_NONBLOCK: a FIFO nobody reads is refused (ENXIO) instead of blocking
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC,
                     0o644)
    except OSError as error:
        return f"cannot write a report to {path}: {error.strerror}"
    os.close(fd)
    if not existed:
        os.unlink(path)
    return None


def _write(path: str | None, content: bytes, what: str) -> bool:
    """Write a report file; when that fails after all, say why and print it on stdout instead."""
    if not path:
        return True
    try:
        Path(path).write_bytes(content)
        return True
    except OSError as error:
        print(f"crwatch: cannot write the {what} to {path}: {error.strerror}; it follows on "
              f"stdout", file=sys.stderr)
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
        return False


def _feed(args, chosen: Profile, recorder: Recorder) -> tuple[Feed | None, str]:
    """The service's events if one answers, else a watch of our own (root), else none."""
    feed, base = choose_feed(recorder.on_line, args.service, chosen.name)
    if feed is not None:
        feed.start()
        return feed, feed.source
    if args.degraded_ok:
        print(f"crwatch: warning: not root and no crwatch service at {base}: no probes; "
              f"judging by audits every {args.interval:g} s instead (states shorter than "
              f"that are missed, and only this user's processes can be read)", file=sys.stderr)
        return None, f"audits every {args.interval:g} s (degraded: no probes)"
    raise FeedError(
        f"run needs root to attach the eBPF probes (or a crwatch service at {base}): "
        f"without them, states that come and go are never seen. Run as root, start "
        f"`crwatch serve`, or pass --degraded-ok to judge by audits every "
        f"{args.interval:g} s")


def _follow(child: subprocess.Popen, args, recorder: Recorder, feed: Feed | None,
            markers: list[dict], signalled: list[str], managed: set[int], marks: Path,
            marker_file: tuple[int, int] | None) -> None:
    """Until the command exits: markers, orphans to reap, audits when degraded."""
    next_audit = time.monotonic()
    while True:
        if _exited(child):
            return
        time.sleep(TICK_S)
        causes = [signalled.pop(0) for _ in list(signalled)]
        if args.at_file and (stamp := _stamp(args.at_file)) != marker_file and stamp:
            marker_file = stamp
            causes.append(f"file {args.at_file}")
        for cause in causes:
            at = utc_now()
            if feed is not None:
                feed.barrier()
            audited = recorder.audit_alive(at, cause)
            markers.append({"at": at, "cause": cause, "audited": len(audited)})
            with marks.open("a") as done:  # the workload may go on
                done.write(f"{len(markers)} {cause}\n")
        if feed is None and time.monotonic() >= next_audit:
            recorder.observe_by_audit(utc_now())
            next_audit = time.monotonic() + args.interval
        _reap_orphans(managed)


def _exited(child: subprocess.Popen) -> bool:
    """Whether the command has exited. It is left a zombie, not reaped: its /proc entry
    stays, so the tracker can still tie the events of its last moments to it (an fd
    opened and closed just before it exited) until the feed has caught up."""
    try:
        return os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_group(pid: int, number: int) -> None:
    try:
        os.killpg(pid, number)
    except ProcessLookupError:
        pass


def _reap_orphans(managed: set[int]) -> None:
    """Orphans of the tree are our children now: reap the ones that exited."""
    try:
        children = Proc(os.getpid()).children()
    except (ProcessGone, AccessDenied):
        return
    for pid in children:
        if pid in managed:
            continue
        try:
            if Proc(pid).stat.state == "Z":
                os.waitpid(pid, 0)
        except (ProcessGone, AccessDenied, ChildProcessError):
            continue


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_ctime_ns


def _status(returncode: int) -> int:
    """A shell's view: killed by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _executable(name: str) -> str | None:
    if os.sep in name:
        return name if os.access(name, os.X_OK) and not os.path.isdir(name) else None
    return shutil.which(name)


def _close(feed: Feed | None) -> None:
    if feed is not None:
        feed.close()
