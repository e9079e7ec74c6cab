"""The engine of `crwatch run -- CMD`: run a command and follow its whole process tree.

The command runs as a child of crwatch, which is made the tree's child
subreaper so that every process the command starts stays in the tree. The
transitions of the tree come from a running service's `/events`, else from a
`crwatch watch` of its own (root); without either, with `--degraded-ok`,
from audits every `--interval` seconds. At the end, once the feed has caught
up (a barrier), whatever still runs is audited, and the report says every
process that was ever non-checkpointable, why, when and for how long. The
command line (api.cli.run) writes that report and decides the exit status.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from api.ci.feed import Feed, FeedError, choose_feed
from api.ci.recorder import Members, Recorder, become_subreaper
from api.ci.report import EndedRun
from tracker.environment import current as current_environment
from tracker.procfs import AccessDenied, Proc, ProcessGone
from tracker.profiles import Profile
from tracker.verdict import utc_now

TICK_S = 0.02   # how often markers and orphans are looked at while the command runs


class RunError(Exception):
    """The run cannot go on: said before the command runs."""


class CommandNotFound(RunError):
    """The command cannot be started."""


@dataclass(frozen=True)
class RunRequest:
    """What to run and how to judge it."""

    command: list[str]
    allow: list[str] = field(default_factory=list)
    at_end: bool = False              # judge only what still runs at the end
    at_signal: int | None = None      # judge the tree each time crwatch gets this signal
    at_file: str | None = None        # ... each time the workload creates or touches it
    degraded_ok: bool = False         # without root or a service: audits every `interval`
    interval: float = 0.5
    service: str | None = None        # the service whose events to use

    @property
    def mode(self) -> str:
        if self.at_signal or self.at_file:
            return "marker"
        return "at-end" if self.at_end else "transient"


def run_and_follow(request: RunRequest, chosen: Profile) -> EndedRun:
    """Run the command, follow its tree until it ends, and say what the tree went through.
    RunError: no feed of transitions; CommandNotFound: the command did not start."""
    command = request.command
    # The dumper's environment (CRIU's feature checks run as children of crwatch) is
    # detected before the tree is followed: those checks are never taken for part of it.
    current_environment()
    become_subreaper()
    members = Members(root=os.getpid(), excluded=set())
    recorder = Recorder(members, chosen, request.allow)
    try:
        feed, source = _feed(request, chosen, recorder)
    except FeedError as error:
        raise RunError(str(error)) from None
    if feed is not None:
        recorder.follow(feed)

    markers: list[dict] = []
    signalled: list[str] = []
    if request.at_signal:
        signal.signal(request.at_signal, lambda number, _: signalled.append(
            f"signal {signal.Signals(number).name}"))
    started_at = utc_now()
    # A workload that must hold its state until it is judged waits for a line here.
    marks = Path(tempfile.mkdtemp(prefix="crwatch-run-")) / "marks"
    marks.touch()
    # stamped before the command can touch it
    before = _stamp(request.at_file) if request.at_file else None
    environment = dict(os.environ, CRWATCH_PID=str(os.getpid()), CRWATCH_MARKS=str(marks))
    try:
        # Its own session, as a checkpointed service would have (else every verdict would
        # ask for --shell-job); crwatch passes on the signals a terminal would send it, and
        # if crwatch is killed (a CI timeout), the command gets SIGTERM (setpriv execs it).
        child = subprocess.Popen(["setpriv", "--pdeathsig", "TERM", "--", *command],
                                 env=environment, start_new_session=True)
    except OSError as error:
        _close(feed)
        raise CommandNotFound(f"{command[0]}: {error.strerror}") from None
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, lambda number, _: _signal_group(child.pid, number))
    managed = {child.pid} | members.excluded
    try:
        _follow(child, request, recorder, feed, markers, signalled, managed, marks, before)
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
    if request.mode == "marker" and not any(m["cause"].startswith(("signal", "file"))
                                            for m in markers):
        problems.append("the marker never came: the state was never judged")
    return EndedRun(command=command, mode=request.mode, judged_by=chosen, allow=request.allow,
                    source=source, started_at=started_at, ended_at=utc_now(), status=status,
                    markers=markers, members=[m for m in members.known.values()
                                              if m.pid not in members.excluded],
                    lost=recorder.lost, problems=problems)


def _feed(request: RunRequest, chosen: Profile,
          recorder: Recorder) -> tuple[Feed | None, str]:
    """The service's events if one answers, else a watch of our own (root), else none."""
    feed, base = choose_feed(recorder.on_line, request.service, chosen.name)
    if feed is not None:
        feed.start()
        return feed, feed.source
    if request.degraded_ok:
        print(f"crwatch: warning: not root and no crwatch service at {base}: no probes; "
              f"judging by audits every {request.interval:g} s instead (states shorter than "
              f"that are missed, and only this user's processes can be read)", file=sys.stderr)
        return None, f"audits every {request.interval:g} s (degraded: no probes)"
    raise FeedError(
        f"run needs root to attach the eBPF probes (or a crwatch service at {base}): "
        f"without them, states that come and go are never seen. Run as root, start "
        f"`crwatch serve`, or pass --degraded-ok to judge by audits every "
        f"{request.interval:g} s")


def _follow(child: subprocess.Popen, request: RunRequest, recorder: Recorder, feed: Feed | None,
            markers: list[dict], signalled: list[str], managed: set[int], marks: Path,
            marker_file: tuple[int, int] | None) -> None:
    """Until the command exits: markers, orphans to reap, audits when degraded."""
    next_audit = time.monotonic()
    while True:
        if _exited(child):
            return
        time.sleep(TICK_S)
        causes = [signalled.pop(0) for _ in list(signalled)]
        if request.at_file and (stamp := _stamp(request.at_file)) != marker_file and stamp:
            marker_file = stamp
            causes.append(f"file {request.at_file}")
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
            next_audit = time.monotonic() + request.interval
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


def _close(feed: Feed | None) -> None:
    if feed is not None:
        feed.close()
