"""Human-readable text for verdict documents and the rule catalogue.

Every document is made visible (tracker.safe_text) before it is laid out: a name
or path with control characters or bytes that are not UTF-8 shows them as
escapes, and never moves the terminal's cursor or colours its text.
"""
from __future__ import annotations

import textwrap
from itertools import groupby

from tracker.checks.catalogue import Catalogue
from tracker.profiles import Profile
from tracker.safe_text import visible_all

HEADLINES = {
    "ok": "checkpointable",
    "needs_options": "needs options",
    "blocked": "blocked",
    "unknown": "unknown",
}
WIDTH = 100


def verdict_text(document: dict) -> str:
    document = visible_all(document)
    root = f"pid {document['pid']} ({document['comm']})"
    count = len(document["processes"])
    scope = (f", tree of {count} process{'es' if count != 1 else ''}" if document["tree"]
             else ", its own findings only (not its descendants')")
    if document.get("departed"):
        scope += f" ({len(document['departed'])} more exited while it was read)"
    headline = HEADLINES[document["verdict"]]
    options = " ".join(document["required_options"])
    if options and document["verdict"] == "needs_options":
        headline += ": " + options
    elif options:
        headline += f" (and needs {options})"
    # a verdict the service judged says so (`crwatch check` answered on its socket)
    source = ", answered by the crwatch service" if document.get("answered_by") else ""
    lines = [f"{root}{scope}: {headline}  [profile {document['profile']}, "
             f"CRIU {document['criu_version']}{source}]"]
    comms = {p["pid"]: p["comm"] for p in document["processes"]}
    for pid, reasons in groupby(document["reasons"], key=lambda r: r["pid"]):
        if document["tree"]:
            lines.append(f"  pid {pid} ({comms.get(pid, '?')})")
        for reason in reasons:
            lines.extend(reason_lines(reason, indent="    " if document["tree"] else "  "))
    lines.append(_conclusion(document))
    return "\n".join(lines)


def reason_lines(reason: dict, indent: str) -> list[str]:
    reason = visible_all(reason)
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


def gate_text(document: dict) -> str:
    """A gate document for people: how it froze, the verdict, the drift, CRIU's outcome."""
    document = visible_all(document)
    lines = [f"gate: {_freeze_text(document['freeze'])}", verdict_text(document["verdict"]),
             _drift_text(document["drift"])]
    dump = document["dump"]
    if dump is not None:
        lines.append(_dump_text(dump, document["drift"]["criu"]))
    lines.append(f"gate: {GATE_OUTCOMES[document['outcome']]}")
    return "\n".join(lines)


def _freeze_text(freeze: dict) -> str:
    if freeze["method"] is None:
        return f"could not be frozen ({freeze['error']})"
    how = f"cgroup {freeze['cgroup']}" if freeze["method"] == "cgroup" else "ptrace"
    refused = len(freeze["unfrozen"])
    if freeze["tasks"] == 0:  # every task refused (a kernel thread, one traced already)
        return f"nothing could be frozen with {how} (see gate.freeze_incomplete below)"
    tasks = _count(freeze["tasks"], "task")
    if refused:
        tasks += f", {refused} could not be"
    held = (f"frozen with {how} for {freeze['frozen_ms']:.1f} ms ({tasks}, "
            f"freezing took {freeze['freeze_ms']:.1f} ms)")
    if freeze.get("helper_died"):
        thawed = {"owner": "crwatch thawed it", "kernel": "the kernel resumed its tasks",
                  "nobody": "it stays frozen as it was found"}[freeze["thawed_by"]]
        held += f"; the freezer helper died and {thawed}"
    elif freeze["expired"]:
        held += f"; the watchdog thawed it after {freeze['watchdog_seconds']:g} s"
    return held


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number:,} {noun}s"


GATE_OUTCOMES = {
    "passed": "passed (checkpointable now)",
    "refused": "refused (not checkpointable: nothing was dumped)",
    "dumped": "passed, and CRIU dumped the tree",
    "dump_failed": "passed, but CRIU failed (see the reasons above)",
}


def _drift_text(drift: dict) -> str:
    if not drift["tracked"]:
        return "drift: not compared (no tracked state: no crwatch service with probes did this gate)"
    differences = drift["missed"] + drift["stale"]
    if not differences:
        return "drift: none (the tracked state agreed with the recheck)"
    lines = [f"drift: {len(drift['missed'])} missed by the probes, "
             f"{len(drift['stale'])} stale marks (the tracked state is corrected)"]
    for item in differences:
        reason = item["reason"]
        lines.append(f"  {item['kind']:<7} pid {item['pid']}: {reason['message']}  "
                     f"[{reason['code']}]")
    return "\n".join(lines)


def _dump_text(dump: dict, criu_reasons: list[dict]) -> str:
    criu = f"CRIU {dump['criu']['version']}" if dump["criu"] else "CRIU"
    if not dump["ran"]:
        return f"dump: {criu} was not run (the gate did not pass)"
    command = " ".join(dump["command"])
    if dump["ok"]:
        frozen = " (handed the frozen cgroup)" if dump["while_frozen"] else ""
        return (f"dump: {criu} dumped it into {dump['directory']} in {dump['seconds']:.2f} s"
                f"{frozen}\n  {command}")
    lines = [f"dump: {criu} failed (exit {dump['returncode']}); log: {dump['log']}", f"  {command}"]
    for reason in criu_reasons:
        lines.extend(reason_lines(reason, indent="  "))
    return "\n".join(lines)
