"""Probe-found reasons in a verdict: what only the live table knows joins the audit.

The audit decides, but two states leave nothing a /proc read can see: a PI futex
held without waiters (the owner TID is only in the futex word, and only while
contended does a thread show it), and a nonlinear mapping made by
remap_file_pages() (the kernel emulates it with ordinary mappings since 4.0).
The probes saw them begin (LiveTable.probe_found); their findings join the
audit's, so that the profile asked for judges them: `criu` dumps both (info),
`strict` refuses both. In the document they say `source: probe` and since when.
"""
from __future__ import annotations

from typing import Iterable

from tracker import verdict
from tracker.audit import Audit
from tracker.environment import Environment
from tracker.profiles import Profile
from tracker.rules import Finding

ProbeFound = list[tuple[Finding, str]]  # (finding, since), from LiveTable.probe_found


def document(result: Audit, found: ProbeFound, judged_by: Profile,
             allow: Iterable[str] = (), environment: Environment | None = None) -> dict:
    """The verdict document of the audit's findings and the probes' together."""
    joined = Audit(result.root, result.tree, result.processes,
                   [*result.findings, *(finding for finding, _ in found)], result.departed)
    judged = verdict.document(joined, judged_by, allow, environment)
    since = {_key(finding.code, finding.pid, finding.tid, finding.message): when
             for finding, when in found}
    for reason in judged["reasons"]:
        when = since.get(_key(reason["code"], reason["pid"], reason["tid"], reason["message"]))
        if when is not None:
            reason["source"], reason["since"] = "probe", when
    return judged


def findings(found: ProbeFound) -> list[Finding]:
    return [finding for finding, _ in found]


def _key(code: str, pid: int, tid: int | None, message: str) -> tuple:
    return code, pid, tid, message
