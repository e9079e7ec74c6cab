"""Whose dumper judges a `crwatch check` the service answers for a caller on its socket.

The caller names processes by their pids in its own pid namespace: only a caller in
the service's is answered. A verdict holds for one dumper environment
(tracker.environment): credentials, the CRIU found, the iptables tools on PATH. A
root caller's own check would judge for
a CRIU run by it: the service answers it only when that dumper is the service's
(the same credentials and capabilities, the same mount namespace, the same CRIU
chosen from its $CRWATCH_CRIU and PATH, the same tools found on its PATH), and the
document then names the
caller's PATH, as its own check would; otherwise the caller audits itself. Any other
uid is answered as the HTTP API answers it, for the service's dumper, with what
privacy lets it see (api.service.privacy): its own check could read only its own
processes, and judge them for a CRIU it could not run as root.
"""
from __future__ import annotations

import os

from api.service.peer import UnixPeer
from tracker.criu.runner import first_choice
from tracker.environment import DEFAULT_EXEC_PATH, Credentials, Environment, network_lock_tools
from tracker.procfs import AccessDenied, Proc, ProcessGone


class OtherDumper(Exception):
    """The caller's own check would judge for another dumper (the message says why)."""


def judged_for(peer: UnixPeer | None, path: str | None, criu_variable: str | None,
               served: Environment) -> Environment:
    """The environment to judge this caller's check in; `path` and `criu_variable` are its
    $PATH and $CRWATCH_CRIU (None: unset). OtherDumper when it must audit itself."""
    if peer is None:
        raise OtherDumper("only a caller on the unix socket is known by its credentials")
    # the pids it names are of its pid namespace: only in the service's are they the same
    if _namespace(peer.pid, "pid") != _namespace(os.getpid(), "pid"):
        raise OtherDumper("the caller's pids are of another pid namespace")
    try:
        caller = Credentials.parse(Proc(peer.pid).read("status"))
    except (OSError, ProcessGone, AccessDenied, ValueError) as error:
        raise OtherDumper(f"the caller's credentials cannot be read: {error}") from None
    if peer.uid != 0 or caller.euid != 0:
        return served
    if caller != served.credentials:
        raise OtherDumper("the caller's credentials or capabilities are not the service's")
    if _namespace(peer.pid, "mnt") != _namespace(os.getpid(), "mnt"):
        raise OtherDumper("the caller's PATH names files of another mount namespace")
    search = DEFAULT_EXEC_PATH if path is None else path
    if served.criu_path is None or first_choice(criu_variable, search) != served.criu_path:
        raise OtherDumper("the caller would run another CRIU than the service's")
    if network_lock_tools(search) != served.tools:
        raise OtherDumper("the caller's PATH finds other network-lock tools than the service's")
    return served._replace(path=search)


def _namespace(pid: int, kind: str) -> str:
    try:
        return Proc(pid).namespace(kind)
    except (OSError, ProcessGone, AccessDenied) as error:
        raise OtherDumper(f"the caller's {kind} namespace cannot be read: {error}") from None
