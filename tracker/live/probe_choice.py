"""Which optional probes a tracker attaches: those whose states a served profile judges.

Every futex call on the host pays for the futex probe, and the PI futexes it
follows matter only to a profile that rates task.pi_futex above info (`strict`;
`criu` restores them as they were). A tracker started for profiles none of
which needs a probe leaves it out, and says why; a verdict asked for under a
profile that needs a probe the tracker does not have carries
audit.probe_not_attached, naming what was not seen (never a silent ok).
"""
from __future__ import annotations

from typing import Iterable

from tracker.checks.catalogue import catalogue
from tracker.profiles import Profile
from tracker.rules import INFO, Finding

# probe (a HAVE_ block of probes/crwatch.bpf.c) -> the rules only its events raise
PROBE_RULES = {"futex": ("task.pi_futex",)}
UNSEEN = "audit.probe_not_attached"


def judged_rules(probe: str, judged_by: Profile) -> list[str]:
    """The rules of the probe's states that this profile rates above info."""
    rules = catalogue()
    return [code for code in PROBE_RULES[probe] if judged_by.severity(rules[code]) != INFO]


def why(probe: str, served: Iterable[Profile]) -> tuple[bool, str]:
    """(attach it?, why) for one of PROBE_RULES, by the profiles served."""
    served = list(served)
    for judged_by in served:
        codes = judged_rules(probe, judged_by)
        if codes:
            return True, f"profile {judged_by.name} judges {', '.join(codes)}"
    names = ", ".join(judged_by.name for judged_by in served)
    return False, (f"no served profile ({names}) rates {', '.join(PROBE_RULES[probe])} above "
                   f"info: left out, as every call of its syscalls would pay for it")


def left_out(served: Iterable[Profile]) -> list[str]:
    served = list(served)
    return [probe for probe in PROBE_RULES if not why(probe, served)[0]]


def unseen(missing: Iterable[str], judged_by: Profile, pid: int) -> list[Finding]:
    """What a verdict under `judged_by` cannot see, of the probes `missing` (not attached)."""
    findings = []
    for probe in missing:
        codes = judged_rules(probe, judged_by) if probe in PROBE_RULES else []
        if codes:
            findings.append(Finding(UNSEEN, f"the {probe} probe is not attached: "
                                    f"{', '.join(codes)} cannot be seen for pid {pid}", pid))
    return findings
