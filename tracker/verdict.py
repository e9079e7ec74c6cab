"""From findings to the verdict document (schema crwatch.verdict/1)."""
from __future__ import annotations

import time
from typing import Iterable

from tracker.audit import Audit
from tracker.checks.catalogue import catalogue
from tracker.criu.options import Allowed, allows, parse_allow
from tracker.environment import Environment, current
from tracker.profiles import Profile
from tracker.rules import BLOCKER, INFO, OPTION, Finding

SCHEMA = "crwatch.verdict/1"
VERDICT_ORDER = {BLOCKER: 0, OPTION: 1, INFO: 2}


def utc_now() -> str:
    """Now, to the second, as ISO 8601 in UTC: 2026-12-07T23:28:05Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def reason(finding: Finding, profile: Profile) -> dict:
    rule = catalogue()[finding.code]
    remedy = finding.remedy or rule.remedy
    note = profile.version_note(rule)
    if note:
        remedy = f"{remedy} ({note})"
    severity = profile.severity(rule)
    return {
        "code": finding.code,
        "severity": severity,
        "message": finding.message,
        "remedy": remedy,
        "option": rule.option if severity == OPTION else None,
        "option_value": finding.option_value if severity == OPTION else None,
        "pid": finding.pid, "tid": finding.tid, "fd": finding.fd,
        "source": "audit", "since": None,
        "environment_fact": finding.environment_fact,
    }


def judge(findings: list[Finding], profile: Profile) -> tuple[str, list[str]]:
    """The verdict and the options a dump needs, for these findings under this profile."""
    rules = catalogue()
    if any(rules[f.code].makes_unknown for f in findings):
        verdict = "unknown"
    else:
        severities = {profile.severity(rules[f.code]) for f in findings}
        verdict = ("blocked" if BLOCKER in severities else
                   "needs_options" if OPTION in severities else "ok")
    options = sorted({rules[f.code].option for f in findings
                      if profile.severity(rules[f.code]) == OPTION})
    return verdict, options


def checkpointable(findings: list[Finding], profile: Profile, allow: Allowed) -> bool:
    verdict, _ = judge(findings, profile)
    if verdict == "ok":
        return True
    if verdict != "needs_options":
        return False
    rules = catalogue()
    return all(allows(rules[f.code].option, f.option_value, allow)
               for f in findings if profile.severity(rules[f.code]) == OPTION)


def reason_allowed(reason: dict, allow: Allowed) -> bool:
    """A reason (of a verdict or a transition) that the allowed options make harmless."""
    if reason["severity"] == INFO:
        return True
    return reason["severity"] == OPTION and allows(reason["option"], reason["option_value"], allow)


def blocking_reasons(reasons: Iterable[dict], allow: Allowed) -> list[dict]:
    """The reasons that the allowed options do not make harmless."""
    return [reason for reason in reasons if not reason_allowed(reason, allow)]


def document(audit: Audit, profile: Profile, allow: Iterable[str] = (),
             environment: Environment | None = None) -> dict:
    """The verdict document, with the dumper's environment it was judged in."""
    allowed = parse_allow(allow)
    verdict, options = judge(audit.findings, profile)
    # Grouped per process in tree order (root first), the worst first within each.
    order = {identity.pid: rank for rank, identity in enumerate(audit.processes)}
    reasons = sorted((reason(f, profile) for f in audit.findings),
                     key=lambda r: (order.get(r["pid"], len(order)), r["pid"],
                                    VERDICT_ORDER[r["severity"]], r["fd"] is None, r["fd"] or 0,
                                    r["code"]))
    return {
        "schema": SCHEMA,
        "pid": audit.root.pid, "start_time": audit.root.start_time, "comm": audit.root.comm,
        "profile": profile.name, "criu_version": ".".join(map(str, profile.criu_version)),
        "tree": audit.tree,
        "processes": [{"pid": p.pid, "start_time": p.start_time, "comm": p.comm}
                      for p in audit.processes],
        "departed": sorted(audit.departed),
        "verdict": verdict,
        "checkpointable": checkpointable(audit.findings, profile, allowed),
        "required_options": options,
        "allowed_options": sorted(allowed),
        "reasons": reasons,
        "tracked": None,
        "checked_at": utc_now(),
        "environment": (environment or current()).to_json(),
    }
