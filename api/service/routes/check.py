"""/check: what `crwatch check` would print, and the status it would exit with.

Asked by the command's compiled front end (api/cli/launcher.c) on the unix socket,
which writes the body to the stream `X-Crwatch-Stream` names and exits with
`X-Crwatch-Exit`. The output is the command's own (api.check_output), of verdicts
read as /processes/{pid}/checkpointable reads them but always from an audit begun
after the question (a kept one may miss what no probe sees, an external unix socket
connected, which the command's own audit would find), for the same dumper as the
caller's own check (api.service.caller_dumper), with what the caller may see
(api.service.privacy); each document says `answered_by: service`. Any other status than 200 tells the front
end to run the command itself: 409 when the caller's check would judge otherwise
(another dumper, CRIU version or profile than the service judges for).
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api import check_output, exit_codes
from api.service.auth import unix_caller
from api.service.caller_dumper import OtherDumper, judged_for
from api.service.deps import ServiceDep, ViewerDep
from api.service.errors import NoSuchProcess
from api.service.models import Problem
from api.service.privacy import shown
from api.service.safe_json import SafeJSONResponse
from tracker import environment
from tracker.profiles import Profile, default_criu_version, parse_version

router = APIRouter(tags=["check"])
DEFAULT_PROFILE = "criu"   # the command's, whatever the service's

OTHER_JUDGE = {409: {"model": Problem, "description": "the caller's own check would judge "
                                                     "otherwise: it must audit itself"}}


@router.get("/check", response_class=Response, responses=OTHER_JUDGE)
async def check(
    service: ServiceDep, viewer: ViewerDep, request: Request,
    pid: Annotated[list[int], Query(description="a process id (repeatable)")],
    tree: Annotated[bool, Query(description="false: each pid's own findings (--only)")] = True,
    allow: Annotated[list[str], Query(description="a CRIU option the dump may use "
                                                  "(repeatable)")] = [],
    profile: Annotated[Optional[Literal["criu", "strict"]],
                       Query(description=f"--profile (default {DEFAULT_PROFILE})")] = None,
    criu_version: Annotated[Optional[str], Query(description="--criu-version")] = None,
    json: Annotated[bool, Query(description="print verdict documents (--json)")] = False,
    holders: Annotated[bool, Query(description="name who holds the pipes and sockets "
                                               "outside the tree (--holders)")] = False,
    path: Annotated[Optional[str], Header(alias="X-Crwatch-Path",
                                          description="the caller's PATH (absent: unset)")] = None,
    criu: Annotated[Optional[str], Header(alias="X-Crwatch-Criu",
                                          description="the caller's $CRWATCH_CRIU")] = None,
) -> Response:
    """The output of `crwatch check` with these options, in the body; the status it exits
    with in `X-Crwatch-Exit`; `X-Crwatch-Stream`: stdout, or stderr for refused pids."""
    if any(number <= 0 for number in pid):
        return _problem(422, "a pid is a positive number")
    refusals = check_output.refusals(pid)
    if refusals:
        return _printed("\n".join(refusals) + "\n", exit_codes.USAGE, "stderr")
    if (profile or DEFAULT_PROFILE) != service.profile.name:
        # the probes it attached serve its own profile: another could not see all it needs
        return _problem(409, f"the service judges for profile {service.profile.name}")
    judged_by = service.profile
    try:
        version = parse_version(criu_version) if criu_version else default_criu_version()
        dumper = judged_for(unix_caller(request), path, criu, environment.current())
    except (ValueError, OtherDumper) as error:
        return _problem(409, str(error))
    if version != judged_by.criu_version:
        return _problem(409, "the service judges for CRIU "
                             f"{'.'.join(map(str, judged_by.criu_version))}")
    # Read afresh, never a kept audit: the check here would see what no probe sees (an
    # external unix socket connected, a file deleted) the moment it happens.
    asked = {"tree": tree, "allow": allow, "environment": dumper, "name_holders": holders}
    judged = await run_in_threadpool(_verdicts, service, pid, judged_by, asked)
    documents = [{**shown(document, viewer), "answered_by": "service"} for document in judged]
    return _printed(check_output.printed(documents, json), check_output.status(documents),
                    "stdout")


def _verdicts(service: ServiceDep, pids: list[int], judged_by: Profile, asked: dict) -> list[dict]:
    """The verdict of each pid, audited now."""
    documents = []
    for number in pids:
        try:
            documents.append(service.check(number, **asked))
        except NoSuchProcess:  # gone between the existence check and the audit
            documents.append(check_output.gone_document(number, judged_by, asked["allow"],
                                                        asked["tree"], asked["environment"]))
    return documents


def _printed(text: str, status: int, stream: str) -> Response:
    return Response(text.encode("utf-8", "surrogateescape"), media_type="text/plain; charset=utf-8",
                    headers={"X-Crwatch-Exit": str(status), "X-Crwatch-Stream": stream})


def _problem(status: int, detail: str) -> SafeJSONResponse:
    return SafeJSONResponse({"status": status, "detail": detail}, status_code=status)
