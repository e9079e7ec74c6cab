"""CRIU's dump log, read back into reasons: what failed, in which task, on which resource.

CRIU logs one `Error (file.c:line): ...` line for the cause of a failure and
then a few for its consequences ("Dump files (pid: N) failed", "Dumping
FAILED."); only the causes become reasons.
"""
from __future__ import annotations

import re

from tracker.rules import Finding

# Logged by every CRIU run without CAP_SYS_RESOURCE; never a dump blocker.
NOISE = ("rlimit: Can't setup RLIMIT_NOFILE for self",)
# CRIU's own trouble under load, not a state of the dumped tree: the only failures
# a comparison with crwatch may retry (counted and reported when it does).
TRANSIENT = (
    "Unable to detach from PID",          # compel, unseizing a task that is busy exiting a stop
    "Can't wait or bad status for",       # the parasite's daemon, killed by a timeout under load
    "Timeout reached. Try to interrupt",  # seize: a task did not stop within --timeout
)
# Patterns, compiled (and cached by `re`) when a log is first read: every command imports
# this module, few read a log, and compiling them all costs 2 ms of each start.
_ERROR = r"Error \((?P<source>[^)]*)\): (?P<text>.*)"
_DUMPING_TASK = r"Dumping task \(pid: (\d+)"
_PID = r"\bpid[: ]+(\d+)"
_FD = r"\b(?:file|fd)[ =:]+(\d+)\b"
_CONSEQUENCES = (
    r"^Dumping FAILED",
    r"^Dump files \(pid: \d+\) failed",
    r"^Dumping \(pid: \d+\) failed",
    r"^One of more action scripts failed",
    r"^Pre dump script failed",
)


def failure_findings(log: str, root_pid: int, log_path: str | None = None) -> list[Finding]:
    """One `criu.dump_failed` finding per cause CRIU logged (the first error when all
    look like consequences), naming the task and fd it was about when the log says."""
    current_task = root_pid
    causes: list[Finding] = []
    fallback: Finding | None = None
    seen: set[str] = set()
    for line in log.splitlines():
        if task := re.search(_DUMPING_TASK, line):
            current_task = int(task[1])
        error = re.search(_ERROR, line)
        if error is None or error["text"] in seen or any(n in line for n in NOISE):
            continue
        seen.add(error["text"])
        finding = _finding(error["text"], error["source"], current_task, log_path)
        if any(re.search(pattern, error["text"]) for pattern in _CONSEQUENCES):
            fallback = fallback or finding
        else:
            causes.append(finding)
    if not causes and fallback is not None:
        causes.append(fallback)
    return causes


def _finding(text: str, source: str, task: int, log_path: str | None) -> Finding:
    named_pid = re.search(_PID, text)
    fd = re.search(_FD, text)
    where = f" (see {log_path})" if log_path else ""
    return Finding("criu.dump_failed", f"CRIU: {text} [{source}]{where}",
                   int(named_pid[1]) if named_pid else task, fd=int(fd[1]) if fd else None)


def transient(errors: list[str]) -> bool:
    """Whether a failed dump's errors are all CRIU's own trouble under load."""
    causes = [line for line in errors if not any(n in line for n in NOISE)]
    return bool(causes) and all(any(t in line for t in TRANSIENT) for line in causes)
