"""Human-readable text for verdict documents and the rule catalogue."""
from __future__ import annotations

import textwrap
from itertools import groupby

from tracker.profiles import Profile
from tracker.rules import Catalogue

HEADLINES = {
    "ok": "checkpointable",
    "needs_options": "needs options",
    "blocked": "blocked",
    "unknown": "unknown",
}
WIDTH = 100


def verdict_text(document: dict) -> str:
    root = f"pid {document['pid']} ({document['comm']})"
    scope = f", tree of {len(document['processes'])} processes" if document["tree"] else ""
    headline = HEADLINES[document["verdict"]]
    options = " ".join(document["required_options"])
    if options and document["verdict"] == "needs_options":
        headline += ": " + options
    elif options:
        headline += f" (and needs {options})"
    lines = [f"{root}{scope}: {headline}  [profile {document['profile']}, "
             f"CRIU {document['criu_version']}]"]
    comms = {p["pid"]: p["comm"] for p in document["processes"]}
    for pid, reasons in groupby(document["reasons"], key=lambda r: r["pid"]):
        if document["tree"]:
            lines.append(f"  pid {pid} ({comms.get(pid, '?')})")
        for reason in reasons:
            lines.extend(_reason_lines(reason, indent="    " if document["tree"] else "  "))
    lines.append(_conclusion(document))
    return "\n".join(lines)


def _reason_lines(reason: dict, indent: str) -> list[str]:
    label = f"{reason['severity']:<8}"
    body = textwrap.wrap(f"{reason['message']}  [{reason['code']}]", WIDTH - len(indent) - 9)
    lines = [f"{indent}{label} {body[0]}"] + [f"{indent}{'':8} {part}" for part in body[1:]]
    if reason["severity"] != "info":
        for part in textwrap.wrap(f"fix: {reason['remedy']}", WIDTH - len(indent) - 9):
            lines.append(f"{indent}{'':8} {part}")
    return lines


def _conclusion(document: dict) -> str:
    if document["checkpointable"]:
        allowed = [o for o in document["required_options"] if o in document["allowed_options"]]
        return "checkpointable: yes" + (f" (with {' '.join(allowed)})" if allowed else "")
    if document["verdict"] == "needs_options":
        missing = [o for o in document["required_options"] if o not in document["allowed_options"]]
        return f"checkpointable: no (allow {' '.join(missing)} to dump it)"
    if document["verdict"] == "unknown":
        return "checkpointable: no (the process could not be judged)"
    return "checkpointable: no"


def rules_text(catalogue: Catalogue, profile: Profile) -> str:
    lines = [f"{len(catalogue)} rules, severities for profile {profile.label}"]
    for rule in catalogue:
        severity = profile.severity(rule)
        option = f" {rule.option}" if rule.option and severity == "option" else ""
        lines.append(f"{rule.code:<40} {severity:<8}{option}  {rule.title}")
        note = profile.version_note(rule)
        if note:
            lines.append(f"{'':40} ({note})")
    return "\n".join(lines)
