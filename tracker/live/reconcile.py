"""The live table against /proc audits: seeding, re-audits after a loss, and the
drift a frozen recheck finds.

An audit sees the fds, locks, tracers, pid namespaces, host shm and PI waits
of a process, and its view replaces the marks of those kinds (AUDITED_KINDS);
the marks only the probes can see (nonlinear mappings, PI futexes held) it
leaves alone. Each process audited is then followed in the kernel, so that
the probes report what may undo its marks.
"""
from __future__ import annotations

import time
from typing import Callable

from tracker.audit import Audit, ProcessIdentity, ThreadId, audit
from tracker.holders import PASS_MAX_AGE_SECONDS, HostHolders
from tracker.live import reads
from tracker.live.entries import Batch, Entries
from tracker.live.model import Entry, Mark, MarkKey, PiThread
from tracker.procfs import AccessDenied, Proc, ProcessGone
from tracker.profiles import Profile
from tracker.rules import Finding
from tracker.verdict import reason

# Marks a /proc audit can confirm or refute; the others (nonlinear mappings,
# PI futexes held) only the probes see, and a re-audit keeps them.
AUDITED_KINDS = frozenset({"fd", "locks", "traced", "pidns", "shm"})


class LastReaudit:
    """When the last whole-table re-audit began (CLOCK_MONOTONIC)."""

    def __init__(self) -> None:
        self.started_ns = 0


def audited(entry: Entry, key: MarkKey) -> bool:
    """Is the mark one an audit can see (and so confirm or refute)?"""
    if key[0] == "pi":  # a wait the audit sees; a held futex it cannot
        thread = entry.pi.get(key[1])
        return thread is None or key[2] not in thread.held
    return key[0] in AUDITED_KINDS


def seed(table: Entries, batch: Batch,
         progress: Callable[[int, int], None] | None = None) -> None:
    """Audit every process and mark what the probes would have marked; `progress(done,
    total)` is told as it begins and after each process."""
    holders = _pass_holders(table)
    pids = table.pids()
    if progress is not None:
        progress(0, len(pids))
    for done, pid in enumerate(pids, 1):
        audit_into(table, pid, batch, holders)
        if progress is not None:
            progress(done, len(pids))


def reaudit(table: Entries, batch: Batch, lost_ns: int) -> None:
    """Records were lost at `lost_ns`: every entry is stale until audited again, and
    those no audit confirms (their processes are gone) are removed."""
    last = table.kept(LastReaudit)
    if lost_ns and lost_ns <= last.started_ns:
        return  # a re-audit that started after this loss already covers it
    last.started_ns = time.monotonic_ns()
    table.counters.reaudits += 1
    for entry in table.by_pid.values():
        entry.stale = True
    holders = _pass_holders(table)
    for pid in table.pids():
        audit_into(table, pid, batch, holders)
    for entry in [entry for entry in table.by_pid.values() if entry.stale]:
        table.remove(entry, batch)  # not audited: gone


def drift(table: Entries, result: Audit, started_ns: int, gate_tracer: int | None,
          profile: Profile, batch: Batch) -> list[dict]:
    """Compare what the table holds with an audit that read a frozen tree (started at
    `started_ns`), and take the audit's view: the reasons the probes missed and the
    marks that were stale, judged by `profile`. The gate's own ptrace hold
    (`gate_tracer`, which the audit looks through) may have been marked meanwhile:
    that is no stale mark."""
    found_drift: list[dict] = []
    for who in result.processes:
        if result.exited(who.pid) or result.kernel_thread(who.pid):
            continue
        findings = [f for f in result.findings if f.pid == who.pid]
        entry = table.by_pid.get(who.pid)
        held = {} if entry is None or entry.start_time != who.start_time else {
            key: mark for key, mark in entry.marks.items() if audited(entry, key)}
        found = replace_audited(table, who, findings, started_ns, batch)
        for key in found.keys() - held.keys():
            found_drift += [_drift("missed", who, reason(f, profile), "audit")
                            for f in found[key][0]]
        for key in held.keys() - found.keys():
            if _traced_by(held[key], gate_tracer):
                continue
            found_drift += [_drift("stale", who, reason(f, profile), held[key].source,
                                   held[key].since) for f in held[key].findings]
    return found_drift


def _pass_holders(table: Entries) -> HostHolders:
    """One index of pipe and socket holders for a pass that audits every process."""
    return HostHolders(table.proc_root, max_age=PASS_MAX_AGE_SECONDS)


def audit_into(table: Entries, pid: int, batch: Batch, holders: HostHolders | None = None
               ) -> None:
    """Replace the marks a /proc audit can see by what it sees now."""
    started = time.monotonic_ns()
    try:
        result = audit(pid, proc_root=table.proc_root, holders=holders)
    except (ProcessGone, AccessDenied, ThreadId):  # ThreadId: a thread took the pid (exec)
        return
    if result.exited() or result.kernel_thread():
        return
    replace_audited(table, result.root, result.findings, started, batch)


def replace_audited(table: Entries, who: ProcessIdentity, findings: list[Finding],
                    started: int, batch: Batch) -> dict[MarkKey, tuple[list, dict]]:
    """The marks of `who` that an audit can see become what this audit saw."""
    entry = table.by_pid.get(who.pid)
    if entry is not None and entry.start_time != who.start_time:
        table.remove(entry, batch, gone=False)
        entry = None
    found = _audited_marks(table, Proc(who.pid, table.proc_root), findings)
    if entry is None and not found:
        return found
    entry = table.entry(who, batch, None)
    entry.comm, entry.stale, entry.audited_ns = who.comm, False, started
    for key in [key for key in entry.marks if audited(entry, key) and key not in found]:
        del entry.marks[key]
    for key, (key_findings, extra) in found.items():
        table.set(who, key, key_findings, batch, None, ts_ns=started, since_ns=started,
                  source="audit", **extra)
    _sync_audited_pi(entry, found)
    if table.kernel is not None:
        _follow_in_kernel(table, entry)
    return found


def _follow_in_kernel(table: Entries, entry: Entry) -> None:
    """Have the probes report what may undo the audited marks: fd closes, lock calls,
    munmap and shmdt, forks, execs and exits (of the tracee and tracer too)."""
    kernel = table.kernel
    kernel.watch(entry.pid)
    for key, mark in entry.marks.items():
        if key[0] == "fd":
            kernel.track_fd(entry.pid, key[1])
        elif key[0] == "locks":
            kernel.mark_lock_holder(entry.pid)
        elif key[0] == "shm":
            kernel.mark_memory(entry.pid)
        elif key[0] == "traced" and mark.tracer is not None:
            kernel.watch(mark.tracer[1])


def _audited_marks(table: Entries, proc: Proc,
                   findings: list[Finding]) -> dict[MarkKey, tuple[list, dict]]:
    """The audit's findings of the kinds the probes follow, by mark key."""
    found: dict[MarkKey, tuple[list, dict]] = {}
    by_fd: dict[int, list[Finding]] = {}
    for finding in findings:
        code = finding.code
        if code in reads.HELD_LOCK_CODES:
            found.setdefault(("locks",), ([], {}))[0].append(finding)
        elif code == "task.traced" and finding.tid is not None:
            tracer = reads.tracer_of(table.proc_root, finding.tid)
            if tracer is not None:
                found[("traced", finding.tid)] = ([finding], {"tracer": tracer})
        elif code == "task.pi_futex" and finding.tid is not None:
            address = reads.pi_wait_address(proc, finding.tid)
            if address is not None:
                found[("pi", finding.tid, address)] = ([finding], {})
        elif code == "memory.sysv_shm.host_ipc":
            for mapping in reads.sysv_mappings(proc):
                found[("shm", mapping.start)] = ([reads.shm_finding(proc.pid, mapping)],
                                                 {"span": (mapping.start, mapping.end)})
        elif finding.fd is not None and not code.startswith(("lock.", "terminal.")):
            by_fd.setdefault(finding.fd, []).append(finding)
    for fd, fd_findings in by_fd.items():
        target = reads.fd_target(proc, fd)
        if target is not None and reads.probe_visible(target, {f.code for f in fd_findings}):
            found[("fd", fd)] = (fd_findings, {"target": target})
    nested = reads.nested_pid_namespace(proc)
    if nested is not None:
        found[("pidns",)] = ([nested], {})
    return found


def _sync_audited_pi(entry: Entry, found: dict) -> None:
    """The audit sees PI waiters (not holders): its view replaces the waits we knew."""
    waits = {key[1]: key[2] for key in found if key[0] == "pi"}
    for tid, address in waits.items():
        entry.pi.setdefault(tid, PiThread()).waiting = address
    for tid, thread in list(entry.pi.items()):
        if tid not in waits:
            thread.waiting = None
        if thread.idle:
            del entry.pi[tid]


def _traced_by(mark: Mark, tracer_pid: int | None) -> bool:
    return tracer_pid is not None and mark.tracer is not None and mark.tracer[1] == tracer_pid


def _drift(kind: str, who: ProcessIdentity, reason: dict, source: str,
           since: str | None = None) -> dict:
    """One difference between the tracked state and a frozen recheck."""
    return {"kind": kind, "pid": who.pid, "start_time": who.start_time, "comm": who.comm,
            "tracked_source": source if kind == "stale" else None, "tracked_since": since,
            "reason": reason}
