"""Response models: the documents the service returns, as OpenAPI shows them."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, Field


class Reason(BaseModel):
    code: str = Field(description="stable rule code (GET /rules)")
    severity: Literal["blocker", "option", "info"]
    message: str
    remedy: Optional[str]
    option: Optional[str] = Field(description="the CRIU option that makes the dump succeed")
    option_value: Optional[str] = Field(None, description="its value, e.g. a size or unix[INO]")
    pid: int
    tid: Optional[int]
    fd: Optional[int]
    source: Literal["audit", "probe", "criu"]
    since: Optional[str] = Field(description="when the state began (probe reasons)")
    environment_fact: Optional[str] = Field(
        None, description="the fact about the dumper's environment that decided this reason, "
                          "e.g. \"no iptables or ip6tables on the dumper's PATH\"")


class CapabilitySet(BaseModel):
    hex: str = Field(description="as /proc/PID/status prints it, e.g. 000001fffeffffff")
    missing: list[str] = Field(description="the capabilities the set lacks, e.g. sys_resource")


class DumperFacts(BaseModel):
    uid: int
    gid: int
    euid: int
    capabilities: dict[Literal["effective", "permitted", "bounding"], CapabilitySet]
    can_checkpoint: bool = Field(description="CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN is effective")
    unprivileged: bool = Field(description="not root: CRIU needs --unprivileged")
    sys_resource: bool = Field(description="CAP_SYS_RESOURCE is effective: CRIU can read the "
                                           "rlimits of processes under other ids")


class CriuFacts(BaseModel):
    path: Optional[str]
    version: Optional[str]
    features: dict[str, bool] = Field(description="`criu check --feature NAME` results")
    libraries: dict[str, bool] = Field(description="libraries CRIU's binary loads (libbpf: BPF "
                                                   "maps; libnftables: the nftables lock)")


class NetworkLockFacts(BaseModel):
    path: str = Field(description="the PATH CRIU searches for the iptables tools")
    tools: dict[str, Optional[str]] = Field(description="iptables tool -> where PATH finds it")
    ipv6: bool = Field(description="the kernel has IPv6: CRIU's namespace lock also runs "
                                   "ip6tables-restore")
    connections: Literal["iptables", "nftables", "none"] = Field(
        description="how CRIU can lock TCP connections: iptables (its default), nftables "
                    "(--network-lock nftables needed), none")
    namespace: Literal["iptables", "nftables", "none"] = Field(
        description="the same for a tree in its own network namespace")


class Environment(BaseModel):
    """crwatch.environment/1: the dumper's environment a verdict is judged in."""

    schema_: str = Field(alias="schema")
    kernel: str
    dumper: DumperFacts
    criu: CriuFacts
    network_lock: NetworkLockFacts
    detected_in_seconds: float


class Tracked(BaseModel):
    """What the probes say now (a hint: the audit decides)."""

    state: Literal["cr", "nocr"]
    since: Optional[str]
    stale: bool = Field(description="events were lost since: a re-audit is pending")
    start_time: float
    reasons: list[Reason]


class ProcessRef(BaseModel):
    pid: int
    start_time: float
    comm: str


class Verdict(BaseModel):
    """crwatch.verdict/1: the audit's verdict, and what the probes track."""

    schema_: str = Field(alias="schema")
    pid: int
    start_time: float
    comm: str
    profile: str
    criu_version: str
    tree: bool
    processes: list[ProcessRef]
    departed: list[int] = Field([], description="descendants that exited while the tree was "
                                                "read: no longer part of it, not judged")
    verdict: Literal["ok", "needs_options", "blocked", "unknown"]
    checkpointable: bool
    required_options: list[str]
    allowed_options: list[str]
    reasons: list[Reason] = Field(description="from the audit, read for this request")
    tracked: Optional[Tracked] = Field(description="from the probes; null: never marked")
    checked_at: str = Field(description="when the audit was read")
    audit_reused: bool = Field(False, description="the audit is an earlier one, kept because no "
                                                  "probe event came for the process since")
    environment: Environment = Field(description="the dumper's environment it was judged in")


class ProcessDetail(Verdict):
    """crwatch.process/1: the verdict document, with the process's command line and cgroup."""

    cmdline: list[str]
    cgroup: str


class ProcessRow(BaseModel):
    pid: int
    ppid: int = Field(description="its parent now")
    start_time: float
    comm: str
    cgroup: str
    verdict: Literal["ok", "needs_options", "blocked", "unknown"]
    checkpointable: bool = Field(description="with no option allowed")
    required_options: list[str]
    codes: list[str] = Field(description="the reason codes of its audit")
    tracked: Optional[Literal["cr", "nocr"]] = Field(description="what the probes say")
    tree_verdict: Literal["ok", "needs_options", "blocked", "unknown"] = Field(
        description="of the tree rooted here (what a checkpoint takes): the worst of its "
                    "members' own verdicts, blocked when a member is in a namespace CRIU "
                    "cannot nest; errs towards refusing (members judged alone see their peers "
                    "as outside): /processes/{pid}/checkpointable decides")
    tree_checkpointable: bool = Field(description="the tree, with no option allowed")
    tree_required_options: list[str]
    tree_size: int = Field(description="how many processes the tree has")
    tree_nested_namespace: bool = Field(description="a member lives in a pid/uts/ipc/user/"
                                                    "cgroup/time namespace not the root's")


class ProcessList(BaseModel):
    """crwatch.processes/1: one page of the processes that match the filters."""

    schema_: str = Field(alias="schema")
    profile: str
    total: int = Field(description="how many match, on every page")
    offset: int
    limit: int
    processes: list[ProcessRow]
    checked_at: str


class FdEntry(BaseModel):
    fd: int
    target: str = Field(description="the /proc/PID/fd link text")
    kind: str
    reasons: list[Reason]


class FdReport(BaseModel):
    """crwatch.fds/1: every fd of a process, with the audit's reasons for each."""

    schema_: str = Field(alias="schema")
    pid: int
    start_time: float
    comm: str
    fds: list[FdEntry]
    checked_at: str


class HistoryEntry(BaseModel):
    kind: Literal["transition", "verdict"]
    comm: str
    ts: str
    reasons: list[dict]
    state: Optional[Literal["cr", "nocr"]] = Field(None, description="transitions")
    tid: Optional[int] = None
    exited: Optional[bool] = None
    verdict: Optional[str] = Field(None, description="verdict changes")
    profile: Optional[str] = None
    tree: Optional[bool] = None
    required_options: Optional[list[str]] = None


class History(BaseModel):
    """crwatch.history/1: what was recorded of one identity (pid, start time)."""

    schema_: str = Field(alias="schema")
    pid: int
    start_time: float
    comm: str
    alive: bool = Field(description="this identity still runs")
    identities: list[float] = Field(description="start times recorded for this pid, newest first")
    entries: list[HistoryEntry]


class EventLine(BaseModel):
    """crwatch.event/1: one line of `GET /events` (`data:`) and of `crwatch watch`."""

    schema_: str = Field(alias="schema")
    kind: Literal["ready", "transition", "lost"]
    ts: str
    probes: Optional[list[dict]] = Field(None, description="ready: each probe's status")
    degraded: Optional[str] = Field(None, description="ready: why the probes are not attached")
    device_filter: Optional[dict] = Field(None, description="ready: whether the opens of devices "
                                          "every profile accepts stay in the kernel, and why")
    pid: Optional[int] = None
    tid: Optional[int] = None
    start_time: Optional[float] = None
    comm: Optional[str] = None
    ppid: Optional[int] = Field(None, description="transition: its parent when last read")
    state: Optional[Literal["cr", "nocr"]] = Field(None, description="transition")
    reasons: Optional[list[Reason]] = Field(None, description="transition to nocr")
    exited: Optional[bool] = Field(None, description="transition: the process exited")
    profiles: Optional[dict[str, Literal["cr", "nocr"]]] = Field(
        None, description="transition: the state under each profile after it (`state` is "
                          "`nocr` while any profile refuses a reason)")
    count: Optional[int] = Field(None, description="lost: how many records")
    total: Optional[int] = None
    reaudits: Optional[int] = None
    where: Optional[str] = Field(None, description="lost: 'client' when this stream's reader "
                                                   "was too slow")


class ProbeStatus(BaseModel):
    name: str
    state: str
    reason: Optional[str]
    tracepoints: list[str]
    why: Optional[str] = Field(None, description="for a probe attached by profile: which served "
                                                 "profile needs it, or why none does")


class WorkerStatus(BaseModel):
    name: str
    state: Literal["running", "retrying", "dead", "stopped"]
    since: str = Field(description="when it entered this state")
    reason: Optional[str] = Field(description="why it is not running")
    errors: int
    restarts: int


class HistoryStatus(BaseModel):
    path: str
    offered: int = Field(description="entries handed to the writer")
    written: int
    waiting: int = Field(description="offered, not written yet (kept while the database "
                                     "refuses them)")
    dropped: int = Field(description="lost: the waiting entries overflowed their bound")
    rejected: int = Field(description="left out: a value the database cannot store")
    errors: int
class Connections(BaseModel):
    open: int = Field(description="connections open now, /events streams included")
    limit: int = Field(description="the most open at once (api/service/connections.py)")
    fd_limit: int = Field(description="the service's RLIMIT_NOFILE")
    fds_open: int = Field(description="the service's open fds now")
    refused: int = Field(description="connections closed at once: every one was busy")
    evicted: int = Field(description="connections between requests closed to make room")
    timed_out: int = Field(description="connections closed for sending no whole request in time")
    stalled: int = Field(description="connections closed for reading nothing of a response")
    accept_errors: int = Field(description="accept() failures (out of fds)")
    event_streams: int = Field(description="open GET /events streams")
    event_streams_limit: int
    event_clients_cut_off: int = Field(description="/events clients cut off, too far behind")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    degraded: Optional[str] = Field(description="why, when degraded")
    reasons: dict[str, str] = Field(description="why, per part that cannot work (probes, "
                                                "or a worker)")
    workers: list[WorkerStatus]
    history: Optional[HistoryStatus]
    probes: list[ProbeStatus]
    device_filter: Optional[dict] = Field(None, description="whether the opens of devices every "
                                          "profile accepts stay in the kernel, and why")
    startup: Optional[dict] = Field(None, description="the tracker's start: its phase and "
                                    "the seconds each phase took (probes, seeding, total)")
    counters: dict
    connections: Connections


class Rule(BaseModel):
    code: str
    family: str
    title: str
    severity: str
    severities: dict[str, str]
    option: Optional[str]
    remedy: Optional[str]
    criu_message: Optional[str]
    version_note: Optional[str]


class Rules(BaseModel):
    schema_: str = Field(alias="schema")
    profile: str
    criu_version: str
    rules: list[Rule]


class DumpRequest(BaseModel):
    directory: str = Field(min_length=2, max_length=4096, pattern=r"^/",
                           description="absolute path on the service's host for CRIU's images")
    leave_running: bool = Field(True, description="false: CRIU ends the tree after the dump")


class GateRequestBody(BaseModel):
    """POST /processes/{pid}/gate: what to recheck, and whether to hand off to CRIU."""

    model_config = {"extra": "forbid"}
    tree: bool = Field(True, description="the pid with all its descendants, as a checkpoint "
                                         "takes them (false: the pid alone, never with dump)")
    allow: list[Annotated[str, Field(max_length=256)]] = Field(
        [], max_length=64, description="CRIU options the dump may use, e.g. --tcp-established")
    profile: Optional[Literal["criu", "strict"]] = None
    watchdog_seconds: float = Field(5.0, gt=0, le=60,
                                    description="the longest the tree may stay frozen")
    dump: Optional[DumpRequest] = Field(None, description="dump with the real CRIU when the "
                                                          "gate passes")


class FreezeReport(BaseModel):
    method: Optional[Literal["cgroup", "ptrace"]] = Field(
        description="cgroup: the v2 freezer of a cgroup the tree owns; null: not frozen")
    cgroup: Optional[str] = None
    pids: list[int] = []
    tasks: int = 0
    freeze_ms: Optional[float] = None
    frozen_ms: Optional[float] = Field(None, description="how long the tree stayed frozen")
    watchdog_seconds: Optional[float] = None
    expired: bool = Field(False, description="the watchdog thawed it before crwatch did")
    helper_died: bool = Field(False, description="the freezer helper died while it held the "
                                                 "tree (crwatch, or the kernel, thawed it)")
    thawed_by: Optional[Literal["crwatch", "watchdog", "owner", "kernel", "nobody"]] = Field(
        None, description="crwatch: on its command; watchdog: at the deadline; owner: crwatch "
                          "after the helper died (cgroup); kernel: the tracer's exit (ptrace); "
                          "nobody: the cgroup was frozen before crwatch came")
    already_frozen: bool = False
    unfrozen: list[dict] = Field([], description="tasks that could not be frozen, and why")
    error: Optional[str] = None


class DriftItem(BaseModel):
    kind: Literal["missed", "stale"]
    pid: int
    start_time: float
    comm: str
    tracked_source: Optional[str] = Field(description="stale: where the mark came from")
    tracked_since: Optional[str]
    reason: Reason


class Drift(BaseModel):
    tracked: bool = Field(description="false: no tracked state to compare (probes not attached)")
    missed: list[DriftItem] = Field(description="reasons the recheck found that were not tracked")
    stale: list[DriftItem] = Field(description="tracked marks the recheck did not find")
    criu: list[Reason] = Field(description="CRIU failures the audit did not predict")


class DumpReport(BaseModel):
    directory: str
    criu: Optional[dict]
    ran: bool
    while_frozen: bool = Field(description="CRIU was handed the tree still frozen")
    leave_running: bool
    command: list[str]
    ok: bool
    returncode: Optional[int]
    seconds: Optional[float]
    errors: list[str]
    log: Optional[str]


class Gate(BaseModel):
    """crwatch.gate/1: a recheck under freeze, its verdict, the drift, CRIU's outcome."""

    schema_: str = Field(alias="schema")
    pid: int
    start_time: float
    comm: str
    tree: bool
    outcome: Literal["passed", "refused", "dumped", "dump_failed"]
    checkpointable: bool
    verdict: Verdict
    freeze: FreezeReport
    drift: Drift
    dump: Optional[DumpReport]
    checked_at: str


class Problem(BaseModel):
    """Every error: a status and a sentence."""

    status: int
    detail: str
    thread_group_leader: Optional[int] = Field(None, description="422 for a thread's id: "
                                                                 "the process it belongs to")
