"""Findings of the checkpoint-time gate itself: freezing, its watchdog, CRIU's own refusals."""
from __future__ import annotations

from tracker.rules import BLOCKER, Finding, Rule

RULES = (
    Rule("gate.freeze_incomplete", "A task of the tree could not be frozen for the recheck",
         BLOCKER, "end what holds it (another tracer, a vfork child that has not exec'd yet) "
         "and gate again; CRIU could not seize it either",
         criu_message="Can't seize task / Unable to freeze cgroup"),
    Rule("gate.watchdog_expired", "The watchdog thawed the tree before the recheck finished",
         BLOCKER, "gate again, with a longer --watchdog if the tree has many files",
         makes_unknown=True),
    Rule("gate.helper_died", "The freezer helper died before the recheck finished",
         BLOCKER, "gate again (nothing crwatch froze stays frozen); if the helper keeps "
         "dying, look for what kills it (the OOM killer, a kill by hand)",
         makes_unknown=True),
    Rule("criu.dump_failed", "CRIU refused something the audit did not predict", BLOCKER,
         "read CRIU's log (its path is in the dump report); this is a state crwatch's "
         "catalogue lacks: please report it"),
)


def not_frozen(pid: int, tid: int | None, why: str) -> Finding:
    who = f"task {tid}" if tid is not None else f"the tree of pid {pid}"
    return Finding("gate.freeze_incomplete", f"{who} could not be frozen: {why}", pid, tid=tid)


def helper_died(pid: int, thawed_by: str) -> Finding:
    return Finding("gate.helper_died",
                   f"the freezer helper died before the recheck finished (the tree was thawed "
                   f"by {thawed_by}): what it read may not be one moment", pid)


def watchdog_expired(pid: int, seconds: float) -> Finding:
    return Finding("gate.watchdog_expired",
                   f"the tree was thawed by the watchdog after {seconds:g} s, before the "
                   f"recheck finished: what it read may not be one moment", pid)
