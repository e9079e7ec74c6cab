"""What a caller may see of a process: what it could read of that process itself.

A caller is root, holds the token, or runs as the service's own uid: it sees
everything. Otherwise it is a uid U (api.service.peer identifies loopback callers) and
sees the detail of a process -- command line, fd targets, reason messages and
remedies, which carry paths, socket names, addresses -- only when U could read
that process's /proc/PID/fd itself. The kernel's rule (ptrace_may_access in
read mode), in short: the process's real, effective, saved and file-system uids
are all U, its gids are all equal (no set-group-id gain), it holds no permitted
capability, and it is dumpable. Anything else, or a process that has exited (its
owner can no longer be checked), is shown redacted: verdicts, reason codes,
severities, options, pids, fd numbers and kinds stay (they say what kind of
thing blocks a checkpoint, not what it is called), the rest is replaced whole
by what the rule catalogue says of the code, so no part of a path or name can
leak through however it is spelled. Names, cgroups and ppids stay too: every
local user reads them in /proc/PID/stat and /proc/PID/cgroup anyway. Of the
dumper's environment (the service's own), the PATH it searches, the tools
found there and its CRIU's path are hidden the same way: they come from the
service's environment, which only root may read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from tracker.checks.catalogue import catalogue
from tracker.procfs import AccessDenied, Proc, ProcessGone

HIDDEN = "(hidden: not this caller's process)"
ENVIRONMENT_SCHEMA = "crwatch.environment/1"


@dataclass(frozen=True)
class Viewer:
    """Who asks: `uid` None when unidentified; `everything` for root, the service's own
    uid and the token's holder."""

    uid: int | None
    everything: bool = False

    @classmethod
    def of(cls, uid: int | None, *, token: bool = False) -> Viewer:
        return cls(uid, token or uid == 0 or (uid is not None and uid == os.geteuid()))

    def sees(self, owner: int | None) -> bool:
        return self.everything or (self.uid is not None and owner == self.uid)


def owner(pid: int, start_time: float) -> int | None:
    """The uid that may read this process besides root (None: root alone may, or the
    process is not this identity any more)."""
    proc = Proc(pid)
    try:
        dump_owner = os.stat(f"/proc/{pid}/fd").st_uid  # root's when it is not dumpable
        status = proc.status
        still = proc.stat.start_time == start_time  # read last: the reads were of it
    except (OSError, ProcessGone, AccessDenied):
        return None
    uids, gids = set(status.get("Uid", "").split()), set(status.get("Gid", "").split())
    if (not still or len(uids) != 1 or len(gids) != 1
            or int(status.get("CapPrm", "1"), 16) != 0):
        return None
    uid = int(uids.pop())
    return uid if uid == dump_owner else None


def shown(document: dict, viewer: Viewer,
          owner_of: Callable[[int, float], int | None] = owner) -> dict:
    """The document as this viewer may see it. The processes it is about are known by
    its `pid` and `start_time` and those of its `processes`; the detail of any other
    pid (a reason recorded about a process long gone) is hidden from a restricted viewer."""
    if viewer.everything:
        return document
    identities = {item["pid"]: item["start_time"] for item in document.get("processes", ())
                  if isinstance(item, dict) and "start_time" in item}
    if "pid" in document and document.get("start_time") is not None:
        identities[document["pid"]] = document["start_time"]
    visible: dict[int, bool] = {}

    def sees(pid: int | None) -> bool:
        if pid not in visible:
            start = identities.get(pid)
            visible[pid] = start is not None and viewer.sees(owner_of(pid, start))
        return visible[pid]

    return _walk(document, document.get("pid"), sees)


def environment_shown(environment: dict, viewer: Viewer) -> dict:
    """The dumper's environment without the paths of the service's own set-up."""
    if viewer.everything:
        return environment
    lock = environment["network_lock"]
    return {**environment, "criu": {**environment["criu"], "path": HIDDEN},
            "network_lock": {**lock, "path": HIDDEN,
                             "tools": {name: found and HIDDEN
                                       for name, found in lock["tools"].items()}}}


def _walk(value: Any, pid: int | None, sees: Callable[[int | None], bool]) -> Any:
    """The value with the detail of the processes not seen replaced; what holds none is
    returned as it is (a list of a thousand rows is not copied)."""
    if isinstance(value, list):
        if not any(isinstance(item, (dict, list)) for item in value):
            return value  # codes, options: strings only
        items = [_walk(item, pid, sees) for item in value]
        return value if all(new is old for new, old in zip(items, value)) else items
    if not isinstance(value, dict):
        return value
    if isinstance(value.get("pid"), int):
        pid = value["pid"]
    if value.get("schema") == ENVIRONMENT_SCHEMA:
        return environment_shown(value, Viewer(None))
    if "code" in value and "message" in value:  # a reason
        return value if sees(pid) else hidden_reason(value)
    changed = {}
    for key, item in value.items():
        if key == "cmdline" and not sees(pid):
            changed[key] = []
        elif key == "target" and not sees(pid):
            changed[key] = HIDDEN
        elif isinstance(item, (dict, list)):
            new = _walk(item, pid, sees)
            if new is not item:
                changed[key] = new
    return {**value, **changed} if changed else value


def hidden_reason(reason: dict) -> dict:
    """The reason with what the catalogue says of its code in place of its own words."""
    rule = catalogue()[reason["code"]] if reason["code"] in catalogue() else None
    title = rule.title if rule else "A reason"
    where = f", fd {reason['fd']}" if reason.get("fd") is not None else ""
    return {**reason, "message": f"{title}{where} {HIDDEN}",
            "remedy": rule.remedy if rule else HIDDEN}


class LineView:
    """One event line as restricted viewers see it: its process's owner read once, and
    its redacted form made once, for all the clients (the hub keeps one per line)."""

    def __init__(self, line: dict, owner_of: Callable[[int, float], int | None] = owner):
        self.line = line
        self._owner_of = owner_of
        self._judged: tuple[int | None, dict] | None = None   # (owner, redacted line)

    def shown(self, viewer: Viewer) -> dict:
        line = self.line
        if viewer.everything or "pid" not in line or "start_time" not in line:
            return line
        if self._judged is None:
            self._judged = (self._owner_of(line["pid"], line["start_time"]),
                            shown(line, Viewer(None), lambda *_: None))
        return line if viewer.sees(self._judged[0]) else self._judged[1]
