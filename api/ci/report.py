"""The report of `crwatch run`: what an ended run says (EndedRun), its document
(crwatch.run/1), its text, and JUnit XML."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cached_property

from api.ci.recorder import Member
from api.render import WIDTH, reason_lines
from tracker import verdict
from tracker.criu import options
from tracker.profiles import Profile
from tracker.safe_text import visible_all

SCHEMA = "crwatch.run/1"
MODES = {"transient": "every moment of the run", "at-end": "what still runs at the end",
         "marker": "the moments the workload marked"}


def member_failures(member: Member, mode: str, allowed: dict) -> list[str]:
    """Why this process fails the run (empty: it passes)."""
    failures = []
    if mode == "transient":
        for episode in member.episodes:
            blocking = verdict.blocking_reasons(episode.reasons, allowed)
            if blocking:
                failures.append(f"non-checkpointable from {episode.since}"
                                + (f" for {episode.duration_ms:.0f} ms" if episode.until
                                   else " until the end")
                                + ": " + "; ".join(_short(r) for r in blocking))
    for taken in member.audits:
        if mode == "marker" and taken["cause"] == "end":
            continue
        document = taken["verdict"]
        if not document["checkpointable"]:
            blocking = verdict.blocking_reasons(document["reasons"], allowed)
            failures.append(f"not checkpointable at {taken['cause']} ({taken['at']}): "
                            + "; ".join(_short(r) for r in blocking))
    return failures


@dataclass
class EndedRun:
    """What a run's report says, but the exit status it ends with: that is its caller's to
    decide (the command line's, from the command's status and `checkpointable`)."""

    command: list[str]
    mode: str
    judged_by: Profile
    allow: list[str]
    source: str
    started_at: str
    ended_at: str
    status: int             # the command's, as a shell shows it: 128 + N when killed by N
    members: list[Member]   # the processes followed, the feed's own left out
    markers: list[dict]
    lost: int
    problems: list[str]

    @cached_property
    def processes(self) -> list[dict]:
        """Each process the run has something to say about, oldest first."""
        allowed = options.parse_allow(self.allow)
        processes = []
        for member in sorted(self.members, key=lambda m: (m.start_time, m.pid)):
            if not member.episodes and not member.audits:
                continue  # never anything to say about it
            failures = member_failures(member, self.mode, allowed)
            processes.append({
                "pid": member.pid, "start_time": member.start_time, "comm": member.comm,
                "cmdline": member.cmdline, "parent": member.parent, "failed": bool(failures),
                "failures": failures,
                "episodes": [episode.as_dict(allowed) for episode in member.episodes],
                "audits": [{"at": taken["at"], "cause": taken["cause"],
                            "verdict": taken["verdict"]["verdict"],
                            "checkpointable": taken["verdict"]["checkpointable"],
                            "required_options": taken["verdict"]["required_options"],
                            "reasons": taken["verdict"]["reasons"]} for taken in member.audits],
            })
        return processes

    @property
    def checkpointable(self) -> bool:
        return not any(p["failed"] for p in self.processes) and not self.problems

    def document(self, exit_code: int) -> dict:
        """The report (crwatch.run/1), with the exit status the run ends with."""
        return {"schema": SCHEMA, "command": self.command, "mode": self.mode,
                "profile": self.judged_by.name,
                "criu_version": ".".join(map(str, self.judged_by.criu_version)),
                "allowed_options": sorted(options.parse_allow(self.allow)), "source": self.source,
                "started_at": self.started_at, "ended_at": self.ended_at,
                "command_status": self.status, "exit_code": exit_code,
                "followed": len(self.members), "lost_events": self.lost,
                "markers": self.markers, "problems": self.problems,
                "checkpointable": self.checkpointable, "processes": self.processes}


def text(report: dict) -> str:
    report = visible_all(report)
    command = " ".join(" ".join(report["command"]).split())
    command = command if len(command) <= 80 else command[:77] + "..."
    lines = [f"crwatch run: `{command}` exited with status {report['command_status']}; "
             f"{report['followed']} processes followed ({report['source']}); judged on "
             f"{MODES[report['mode']]}, profile {report['profile']} "
             f"(CRIU {report['criu_version']})"]
    if report["lost_events"]:
        lines.append(f"  warning: {report['lost_events']} events were lost: transient states "
                     f"may be missing")
    for problem in report["problems"]:
        lines.append(f"  {problem}")
    for process in report["processes"]:
        shown = " ".join(" ".join(process["cmdline"]).split())
        head = f"pid {process['pid']} ({process['comm']}) `{shown[:80]}`"
        lines.append(f"{head}: {'FAILED' if process['failed'] else 'ok'}")
        for episode in process["episodes"]:
            span = (f"for {episode['duration_ms']:.0f} ms" if episode["until"]
                    else "until the end")
            allowed = " (allowed)" if episode["allowed"] else ""
            lines.append(f"  nocr at {episode['since']} {span}{allowed}")
            for reason in episode["reasons"]:
                lines.extend(reason_lines(reason, indent="    "))
        for taken in process["audits"]:
            state = "checkpointable" if taken["checkpointable"] else taken["verdict"]
            lines.append(f"  audit at {taken['cause']} ({taken['at']}): {state}")
            for reason in taken["reasons"]:
                if reason["severity"] != "info":
                    lines.extend(reason_lines(reason, indent="    "))
    failed = [p for p in report["processes"] if p["failed"]]
    allowed = f" (allowed: {' '.join(report['allowed_options'])})" \
        if report["allowed_options"] else ""
    lines.append(f"result: {'checkpointable' if report['checkpointable'] else 'NOT checkpointable'}"
                 f"{allowed}; {len(failed)} of {len(report['processes'])} processes reported "
                 f"failed; exit {report['exit_code']}")
    return "\n".join(line[:WIDTH * 3] for line in lines)


def junit(report: dict) -> bytes:
    """One test case per process the run has something to say about. Its strings are made
    visible first: XML 1.0 has no way to write most control characters, even escaped."""
    report = visible_all(report)
    suite = ET.Element("testsuite", name="crwatch run", tests=str(len(report["processes"])),
                       failures=str(sum(p["failed"] for p in report["processes"])),
                       errors=str(len(report["problems"])), timestamp=report["started_at"])
    ET.SubElement(ET.SubElement(suite, "properties"), "property", name="command",
                  value=" ".join(report["command"]))
    for process in report["processes"]:
        case = ET.SubElement(suite, "testcase", classname="crwatch.run",
                             name=f"pid {process['pid']} ({process['comm']}) "
                                  f"{' '.join(process['cmdline'])[:80]}")
        if process["failed"]:
            failure = ET.SubElement(case, "failure", type="not-checkpointable",
                                    message=process["failures"][0][:300])
            failure.text = "\n".join(process["failures"])
    for problem in report["problems"]:
        case = ET.SubElement(suite, "testcase", classname="crwatch.run", name="crwatch")
        ET.SubElement(case, "error", message=problem)
    return ET.tostring(suite, encoding="utf-8", xml_declaration=True)


def _short(reason: dict) -> str:
    return f"{reason['message']} [{reason['code']}]"
