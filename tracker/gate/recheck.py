"""The checkpoint-time gate: freeze the tree, recheck it, judge, thaw; hand off to CRIU.

This is what a checkpoint(2) in the kernel would do: refuse at the moment of
the checkpoint if anything is unsupported. When the tree owns its cgroup there
is no window between the check and the dump: CRIU is handed the cgroup still
frozen. With ptrace the tree is released just before CRIU seizes it again, and
whatever CRIU still refuses is read back from its log as a reason.

A dump's CRIU starts with the freeze, not after the verdict: it runs its own
start-up meanwhile and waits before it seizes anything (held_dump.py). The
verdict still comes first: only a checkpointable tree is answered `dump`, and only
when CRIU was started with exactly the verdict's arguments.

The recheck does not name who outside the tree holds the other end of its pipes and
sockets (as `crwatch check` without --holders): that takes a walk over every fd of the
host, with the tree frozen, for info reasons no verdict depends on.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tracker import verdict
from tracker.audit import Audit, ProcessIdentity, audit, identify
from tracker.checks.gate import helper_died, not_frozen, watchdog_expired
from tracker.criu.log import failure_findings
from tracker.criu.options import arguments_for
from tracker.criu.runner import Criu, DumpResult
from tracker.environment import Environment, of
from tracker.gate.freeze import DEFAULT_WATCHDOG_S, THAWED_BY, Freeze, FreezeError, Frozen, tree_pids
from tracker.gate.held_dump import HeldDump
from tracker.gate.own_processes import refusal, role
from tracker.gate.ready_helper import ReadyHelper
from tracker.live import probe_found
from tracker.live.probe_found import ProbeFound
from tracker.profiles import Profile

SCHEMA = "crwatch.gate/1"

# (the audit, when it began, the pid of the gate's ptrace holder): the drift, or None
Reconcile = Callable[[Audit, int, "int | None"], "list[dict] | None"]
# What only the probes see of the tree's processes (LiveTable.probe_found).
ProbeFinder = Callable[[list[ProcessIdentity]], ProbeFound]


class GateError(Exception):
    """The gate cannot run at all (no usable CRIU for a dump, a bad images directory)."""


class CriuUnavailable(GateError):
    """A dump was asked for and there is no CRIU that works here."""


class CrwatchInside(GateError):
    """pid 1, or a tree holding crwatch itself: refused before anything is frozen."""


@dataclass(frozen=True)
class GateRequest:
    pid: int
    tree: bool = True                 # False: the pid alone (a recheck without a dump only)
    allow: tuple[str, ...] = ()
    dump_dir: Path | None = None      # hand off to CRIU, images here
    leave_running: bool = True
    watchdog_s: float = DEFAULT_WATCHDOG_S
    hold_s: float = 0.0               # stay frozen this long after the recheck (tests the watchdog)

    def check(self) -> None:
        """Refuse a dump of the pid alone (CRIU has no such thing) and a relative directory."""
        if self.dump_dir is not None:
            images_directory(self.dump_dir, None)
        if self.dump_dir is not None and not self.tree:
            raise GateError(f"a dump takes pid {self.pid} with all its descendants (criu dump "
                            f"-t {self.pid}): the gate of a dump judges that whole tree, not "
                            f"the pid alone (--only, tree=false)")


@dataclass
class _Run:
    result: Audit
    frozen: Frozen | None
    probe_found: ProbeFound = field(default_factory=list)
    freeze_error: str | None = None
    dump: DumpResult | None = None
    dumped_frozen: bool = False


def gate(request: GateRequest, judged_by: Profile, *, criu: Criu | None = None,
         reconcile: Reconcile | None = None, probe_finder: ProbeFinder | None = None,
         ready_helper: ReadyHelper | None = None) -> dict:
    """Run the gate and return its document (schema crwatch.gate/1). `ready_helper`: a
    freezer helper started ahead for it (and the next one started once it has ended).

    Raises ProcessGone when the pid does not exist, ThreadId for the id of a thread,
    GateError when a dump was asked for and cannot be made (or of the pid alone),
    CrwatchInside for pid 1 or a tree holding crwatch. The images directory is made only
    when CRIU is about to run.
    """
    request.check()
    if request.dump_dir is not None:
        criu = _usable(criu)
        judged_by = judged_by._replace(criu_version=criu.version)  # the rules of this CRIU
    identify(request.pid)  # ProcessGone before anything is frozen
    refuse_crwatch(request.pid, request.tree)
    # Judged in the environment of the CRIU that would dump (default: find_criu()'s).
    dumper = of(criu) if criu is not None else None
    started_ns = time.monotonic_ns()
    freeze = Freeze(request.pid, request.tree, watchdog_s=request.watchdog_s,
                    ready=ready_helper)
    held = _head_start(criu, request, freeze.cgroup)
    try:
        run = _frozen_recheck(request, freeze, judged_by, criu, held, probe_finder, dumper)
        document = probe_found.document(run.result, run.probe_found, judged_by, request.allow,
                                         dumper)
        holder = run.frozen.hold.tracer if run.frozen is not None and run.frozen.hold else None
        drift = reconcile(run.result, started_ns, holder) if reconcile is not None else None

        if run.dump is None and held is not None and held.answered:
            run.dump = held.dump()  # answered at the thaw, by the verdict judged frozen
        elif (request.dump_dir is not None and run.dump is None and document["checkpointable"]
                and run.frozen is not None
                and not (run.frozen.expired or run.frozen.helper_died)):
            run.dump = _dump(criu, request, document, held, cgroup=None)
    finally:
        if held is not None:
            held.cancel()  # no dump was answered: that CRIU has touched nothing
        if ready_helper is not None:
            ready_helper.replenish()  # for the next gate, now that this one's dump is made
    criu_findings = []
    if run.dump is not None and not run.dump.ok:
        criu_findings = failure_findings(run.dump.log, request.pid, run.dump.log_path)
    return _document(request, judged_by, document, run, drift, criu_findings, criu)


def refuse_crwatch(pid: int, tree: bool) -> None:
    """CrwatchInside when freezing pid (with its tree) would freeze init or crwatch."""
    own = {os.getpid(): role(os.getpid()) or "the process running this gate"}
    why = refusal(pid, [pid] if pid == 1 else tree_pids(pid, tree), own)
    if why:
        raise CrwatchInside(why)


def _head_start(criu: Criu | None, request: GateRequest, cgroup: Path | None) -> HeldDump | None:
    """CRIU started now for the dump a verdict asks for most: no options, and the cgroup
    handed over frozen when the tree owns one. None: no dump, or no head start."""
    if request.dump_dir is None:
        return None
    arguments = ["--freeze-cgroup", str(cgroup)] if cgroup is not None else []
    try:
        return HeldDump(criu, request.pid, arguments, images_dir=request.dump_dir,
                        leave_running=request.leave_running)
    except OSError:
        return None  # CRIU starts after the verdict, as it does when the arguments differ


def _frozen_recheck(request: GateRequest, freeze: Freeze, judged_by: Profile, criu: Criu | None,
                    held: HeldDump | None, probe_finder: ProbeFinder | None,
                    dumper: Environment | None) -> _Run:
    answer_at_thaw: Callable[[], None] | None = None
    try:
        frozen = freeze.__enter__()
    except FreezeError as error:
        # Still audit (every reason at once), but never call it checkpointable.
        result = audit(request.pid, tree=request.tree, environment=dumper, name_holders=False)
        result.findings.append(not_frozen(request.pid, None, str(error)))
        return _Run(result, None, _probe_found(probe_finder, result), freeze_error=str(error))
    try:
        result = audit(request.pid, tree=request.tree, hold=frozen.hold, environment=dumper,
                       name_holders=False)
        result.findings += [not_frozen(request.pid, item["tid"], item["why"])
                            for item in frozen.unfrozen]
        if request.hold_s:
            freeze.hold(request.hold_s)
        run = _Run(result, frozen, _probe_found(probe_finder, result))
        if request.dump_dir is not None:
            judged = probe_found.document(result, run.probe_found, judged_by, request.allow,
                                           dumper)
            if (frozen.method == "cgroup" and frozen.complete and judged["checkpointable"]
                    and freeze.holding()):
                # No window: CRIU takes the cgroup frozen, and freezes it again when it ends.
                run.dump = _dump(criu, request, judged, held, cgroup=frozen.cgroup,
                                 on_start=freeze.handoff)
                run.dumped_frozen = True
            elif (frozen.method == "ptrace" and judged["checkpointable"] and held is not None
                  and held.matches(arguments_for(judged["reasons"]))):
                # CRIU may seize the tree as soon as the helper has let go of every task
                # (one it could not stop makes the verdict a refusal), not once it exited.
                answer_at_thaw = held.answer
    finally:
        freeze.release(on_thawed=answer_at_thaw)
    if frozen.expired:
        run.result.findings.append(watchdog_expired(request.pid, request.watchdog_s))
    if frozen.helper_died and not run.dumped_frozen:  # after a handoff CRIU held the tree
        run.result.findings.append(helper_died(request.pid, THAWED_BY[frozen.thawed_by]))
    return run


def _probe_found(probe_finder: ProbeFinder | None, result: Audit) -> ProbeFound:
    """What the probes saw of the frozen tree and no audit can (none without probes)."""
    return probe_finder(result.processes) if probe_finder is not None else []


def _dump(criu: Criu, request: GateRequest, document: dict, held: HeldDump | None, *,
          cgroup: str | None, on_start: Callable[[int], None] | None = None) -> DumpResult:
    """Dump with exactly the verdict's arguments: the held CRIU if it has them, else a
    new one (`on_start` is told CRIU's pid before it may seize the tree)."""
    arguments = [*arguments_for(document["reasons"]),
                 *(["--freeze-cgroup", cgroup] if cgroup else [])]
    if held is not None and held.matches(arguments):
        return held.dump(on_answer=on_start)
    if held is not None:
        held.cancel()
    _prepare(request.dump_dir)
    return criu.dump(request.pid, arguments, images_dir=request.dump_dir,
                     leave_running=request.leave_running, on_start=on_start)


def _usable(criu: Criu | None) -> Criu:
    if criu is None:
        raise CriuUnavailable("no CRIU that runs was found: name one with --criu (or "
                              "$CRWATCH_CRIU), put criu on PATH, or run scripts/setup.sh")
    if not criu.supported:
        raise CriuUnavailable(f"CRIU {criu.version_text} at {criu.path} is too old for this kernel "
                        f"(4.2 or newer is needed)")
    return criu


def images_directory(directory: str | Path, root: Path | None) -> Path:
    """Where a dump may write: an absolute path, inside `root` (when one is set) once `..`
    and symlinks are resolved. The resolved path is the one to use. Nothing is made."""
    directory = Path(directory)
    if not directory.is_absolute():
        raise GateError(f"the images directory must be an absolute path: {directory}")
    if root is None:
        return directory
    resolved, inside = Path(os.path.realpath(directory)), Path(os.path.realpath(root))
    if resolved != inside and inside not in resolved.parents:
        shown = directory if resolved == directory else f"{directory} (that is {resolved})"
        raise GateError(f"the images directory {shown} is outside the dump root {inside} "
                        f"(crwatch serve --dump-root; crwatch gate --local writes anywhere)")
    return resolved


def _prepare(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GateError(f"cannot use {directory} for the images: {error.strerror}") from None


def _document(request: GateRequest, judged_by: Profile, judged: dict, run: _Run,
              drift: list[dict] | None, criu_findings: list, criu: Criu | None) -> dict:
    criu_reasons = [verdict.reason(finding, judged_by) for finding in criu_findings]
    for item in criu_reasons:
        item["source"] = "criu"
    dump = run.dump
    if not judged["checkpointable"]:
        outcome = "refused"
    elif request.dump_dir is None:
        outcome = "passed"
    else:
        outcome = "dumped" if dump is not None and dump.ok else "dump_failed"
    freeze = (run.frozen.as_dict(request.watchdog_s) if run.frozen is not None
              else {"method": None, "error": run.freeze_error})
    return {
        "schema": SCHEMA,
        "pid": judged["pid"], "start_time": judged["start_time"], "comm": judged["comm"],
        "tree": request.tree,
        "outcome": outcome,
        "checkpointable": judged["checkpointable"] and outcome != "dump_failed",
        "verdict": judged,
        "freeze": freeze,
        "drift": {
            "tracked": drift is not None,
            "missed": [item for item in drift or [] if item["kind"] == "missed"],
            "stale": [item for item in drift or [] if item["kind"] == "stale"],
            "criu": criu_reasons,
        },
        "dump": None if request.dump_dir is None else {
            "directory": str(request.dump_dir),
            "criu": {"path": criu.path, "version": criu.version_text} if criu else None,
            "ran": dump is not None,
            "while_frozen": run.dumped_frozen,
            "leave_running": request.leave_running,
            "command": dump.command if dump else [],
            "ok": bool(dump and dump.ok),
            "returncode": dump.returncode if dump else None,
            "seconds": round(dump.seconds, 3) if dump else None,
            "errors": dump.errors if dump else [],
            "log": dump.log_path if dump else None,
        },
        "checked_at": verdict.utc_now(),
    }
