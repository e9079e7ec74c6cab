"""What `crwatch check` prints and the status it exits with, wherever it was judged.

The command audits here (api/cli/check.py) or, when a service runs, the service
answers it (api/service/routes/check.py, asked by the compiled front end): both
refuse the same pids with the same words, stand in the same document for a process
that exited while it was read, print the documents the same way and exit with the
same status, through this module.
"""
from __future__ import annotations

from api import exit_codes
from api.render import verdict_text
from tracker import verdict
from tracker.audit import Audit, ProcessIdentity, ThreadId, identify
from tracker.checks.general import exited
from tracker.environment import Environment
from tracker.procfs import AccessDenied, ProcessGone
from tracker.profiles import Profile
from tracker.safe_text import json_text


def refusals(pids: list[int]) -> list[str]:
    """The lines said on stderr for the pids that cannot be checked (none: all can)."""
    return [f"crwatch: {refusal}" for pid in pids if (refusal := _refusal(pid))]


def _refusal(pid: int) -> str | None:
    """Why this pid cannot be checked (None: it can)."""
    try:
        identify(pid)
    except ProcessGone:
        return f"no process with pid {pid}"
    except ThreadId as thread:
        return (f"{thread.tid} is a thread of process {thread.tgid}; a checkpoint takes whole "
                f"processes: check {thread.tgid}")
    except AccessDenied:
        pass  # judged `unknown`, with what could not be read
    return None


def gone_document(pid: int, chosen: Profile, allow: list[str], tree: bool,
                  environment: Environment | None = None) -> dict:
    """The verdict of a process that exited between the existence check and its audit,
    in the dumper's `environment` (default: this process's)."""
    gone = Audit(root=ProcessIdentity(pid, 0.0, ""), tree=tree, findings=[exited(pid)])
    return verdict.document(gone, chosen, allow, environment)


def printed(documents: list[dict], as_json: bool) -> str:
    """The standard output of the command, its last newline included."""
    if as_json:
        payload = documents[0] if len(documents) == 1 else documents
        return json_text(payload, indent=2) + "\n"
    return "\n\n".join(verdict_text(document) for document in documents) + "\n"


def status(documents: list[dict]) -> int:
    if all(document["checkpointable"] for document in documents):
        return exit_codes.OK
    return exit_codes.NOT_CHECKPOINTABLE
