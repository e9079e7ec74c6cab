"""/processes/{pid}/...: the verdict and the per-fd report of one process."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from api.service.deps import ServiceDep, ViewerDep
from api.service.models import (
    FdReport,
    Gate,
    GateRequestBody,
    History,
    Problem,
    ProcessDetail,
    ProcessList,
    Verdict,
)
from api.service.privacy import shown
from api.service.safe_json import SafeJSONResponse

router = APIRouter(prefix="/processes", tags=["processes"])

PID_MAX = 4_194_304  # the kernel's limit (PID_MAX_LIMIT on 64-bit)
Pid = Annotated[int, Path(gt=0, le=PID_MAX, description="a process id")]
ProfileName = Annotated[Optional[Literal["criu", "strict"]],
                        Query(description="dumper profile (default: the service's)")]
NOT_FOUND = {404: {"model": Problem, "description": "no such process (or it exited meanwhile)"},
             422: {"model": Problem, "description": "bad input, or the id of a thread (the "
                                                    "problem names its process)"}}
Verdicts = Literal["ok", "needs_options", "blocked", "unknown"]
Tree = Annotated[bool, Query(description="judge the process with all its descendants, as a "
                                         "checkpoint takes them (false: its own findings)")]


@router.get("", response_model=ProcessList, response_model_by_alias=True)
def processes(
    service: ServiceDep, viewer: ViewerDep,
    verdict: Annotated[Optional[Verdicts],
                       Query(description="only processes with this verdict (their own)")] = None,
    tree_verdict: Annotated[Optional[Verdicts],
                            Query(description="only processes whose tree has this verdict")] = None,
    comm: Annotated[Optional[str], Query(max_length=64,
                                         description="only commands containing this")] = None,
    cgroup: Annotated[Optional[str], Query(max_length=4096, description="only cgroups (v2 "
                                           "paths, e.g. a container's) containing this")] = None,
    offset: Annotated[int, Query(ge=0, le=PID_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    profile: ProfileName = None,
) -> dict:
    """Every process but kernel threads, judged (an audit is reused while no probe event
    came for its process), filtered and paginated in pid order. A row has the process's
    own verdict and that of the tree rooted there (`tree_verdict`): the worst of its
    members' own, refusing also a member in a namespace CRIU cannot nest. Members judged
    alone see their peers in the tree as outside it, so `tree_verdict` errs towards
    refusing: `/processes/{pid}/checkpointable` audits the tree and decides."""
    listed = shown(service.processes(
        verdict_is=verdict, tree_verdict_is=tree_verdict, comm=comm, cgroup=cgroup,
        offset=offset, limit=limit,
        profile_name=profile), viewer)
    # Built by the service in the model's shape: returned as it is, without the
    # per-field validation that would cost more than the listing itself.
    return SafeJSONResponse(listed)


@router.get("/{pid}", response_model=ProcessDetail, response_model_by_alias=True,
            responses=NOT_FOUND)
def process(service: ServiceDep, viewer: ViewerDep, pid: Pid, tree: Tree = True,
            profile: ProfileName = None) -> dict:
    """The verdict of the process's tree (as /checkpointable), its command line and cgroup."""
    return shown(service.process(pid, tree=tree, profile_name=profile), viewer)


@router.get("/{pid}/checkpointable", response_model=Verdict, response_model_by_alias=True,
            responses=NOT_FOUND)
async def checkpointable(
    service: ServiceDep, viewer: ViewerDep, pid: Pid,
    tree: Tree = True,
    allow: Annotated[list[str], Query(description="a CRIU option the dump may use "
                                                  "(repeatable), e.g. --tcp-established")] = [],
    profile: ProfileName = None,
) -> dict:
    """Can it be checkpointed now, with all its descendants (a checkpoint takes them)? The
    reasons come from an audit (`source: audit`: read for this request, or the last one,
    `audit_reused`, while no probe event came for any process of it and its tree has the
    same members) and, for what no audit can see (a PI futex held, a remap_file_pages
    mapping), from the probes (`source: probe`); the profile asked for judges both.
    `tracked` is what the probes follow, `nocr` when this profile refuses a tracked
    reason."""
    def answer(document: dict | None = None) -> SafeJSONResponse:
        if document is None:
            document = service.checkpointable(pid, tree=tree, allow=allow,
                                              profile_name=profile)
        # Built by the service in the model's shape: returned as it is, without the
        # per-field validation and encoding that cost more than a reused audit.
        return SafeJSONResponse(shown(document, viewer))

    # A small kept audit is answered here on the event loop (a few reads of /proc),
    # sparing the two hand-offs between threads that each wait for the interpreter's
    # lock while another thread computes; an audit to read goes to the threadpool.
    kept = await service.kept_checkpointable(pid, tree=tree, allow=allow,
                                             profile_name=profile)
    if kept is None:
        return await run_in_threadpool(answer)
    if viewer.everything:  # encoded once for all who see everything
        return Response(kept.body, media_type=SafeJSONResponse.media_type)
    return answer(kept.document)


@router.get("/{pid}/fds", response_model=FdReport, response_model_by_alias=True,
            responses=NOT_FOUND)
def fds(service: ServiceDep, viewer: ViewerDep, pid: Pid, profile: ProfileName = None) -> dict:
    """Every open fd of the process, with the audit's reasons for each."""
    return shown(service.fds(pid, profile_name=profile), viewer)


@router.get("/{pid}/history", response_model=History, response_model_by_alias=True,
            responses={404: {"model": Problem, "description": "nothing recorded, no such process"},
                       503: {"model": Problem, "description": "the database cannot be read now"}})
def history(service: ServiceDep, viewer: ViewerDep, pid: Pid,
            start_time: Annotated[Optional[float], Query(
                ge=0, description="which identity (default: the running one, else the newest "
                                  "recorded)")] = None) -> dict:
    """Transitions and verdict changes of one process identity, also after it exited."""
    return shown(service.history_of(pid, start_time), viewer)


@router.post("/{pid}/gate", response_model=Gate, response_model_by_alias=True,
             responses={**NOT_FOUND,
                        409: {"model": Problem, "description": "a gate of this pid is running"},
                        503: {"model": Problem, "description": "no usable CRIU for the dump"}})
def gate(service: ServiceDep, viewer: ViewerDep, pid: Pid,
         body: Optional[GateRequestBody] = None) -> dict:
    """Freeze the tree, recheck it, judge it (with what only the probes see), thaw it; with
    `dump`, hand it to the real CRIU with exactly the options the verdict requires. Needs
    the token. `tree: false` rechecks the pid alone, never for a dump."""
    body = body or GateRequestBody()
    # its caller holds the token, so the viewer sees everything (api.service.privacy)
    return shown(service.gates.run(
        pid, tree=body.tree, allow=body.allow, profile_name=body.profile,
        watchdog_s=body.watchdog_seconds,
        dump_dir=body.dump.directory if body.dump else None,
        leave_running=body.dump.leave_running if body.dump else True), viewer)
