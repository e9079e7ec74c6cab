"""A kept audit is answered again only once every probe event emitted before the question
has been applied (api/service/audit_cache.py, Tracker.caught_up): with the applier held
back, an event for the subject waits in the queue, and the answer must be a fresh audit
that sees what the event reported, not the kept one from before it; a process with no
event waiting keeps its audit meanwhile. The same holds for a question awaited on an
event loop (AuditCache.kept_on_loop, Tracker.caught_up_on_loop)."""
from __future__ import annotations

import asyncio
import os
import signal
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

from api.service.audit_cache import AuditCache
from tests.support.subjects import subject
from tests.support.trackers import ARRIVAL_TIMEOUT, Brake, attached_tracker
from tracker.audit import audit

pytestmark = [pytest.mark.root, pytest.mark.bpf]

# Opens /dev/kvm at SIGUSR1: a device CRIU refuses, which the probes report.
OPENS_KVM = """
held = []
signal.signal(signal.SIGUSR1, lambda *_: held.append(os.open('/dev/kvm', os.O_RDONLY)))
ready(); hold()
"""


def _holds_kvm(pid: int) -> bool:
    return any(os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/kvm"
               for fd in os.listdir(f"/proc/{pid}/fd"))


@contextmanager
def _opened_while_the_applier_is_held(brake: Brake, stopper: int, opener: int) -> Iterator[None]:
    """The applier held by the stopper's transition, then the opener's open of /dev/kvm
    emitted (its open returned) behind it; the applier is let go at the end."""
    brake.pid = stopper
    os.kill(stopper, signal.SIGUSR1)  # its transition holds the applier
    try:
        assert brake.holding.wait(ARRIVAL_TIMEOUT), "the applier was never held"
        os.kill(opener, signal.SIGUSR1)
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while not _holds_kvm(opener):
            assert time.monotonic() < deadline, "the subject never opened /dev/kvm"
            time.sleep(0.01)
        yield
    finally:
        brake.released.set()


def _await_quiet(audits: AuditCache, pid: int):
    """The subject's kept audit, once its start-up's events are applied and it is reused."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while True:
        result, reused = audits.audit(pid)
        if reused:
            return result
        assert time.monotonic() < deadline, "the audit was never reused"
        time.sleep(0.05)


def test_a_kept_audit_is_not_answered_while_an_event_before_the_question_waits():
    brake = Brake()
    with attached_tracker(brake) as tracker, subject(OPENS_KVM) as quiet, \
            subject(OPENS_KVM) as stopper, subject(OPENS_KVM) as bystander:
        audits = AuditCache(audit=lambda pid, tree=False, holders=None: audit(pid, tree=tree),
                            live_table=lambda: tracker.table, caught_up=tracker.caught_up)
        kept = _await_quiet(audits, quiet.pid)
        kept_bystander = _await_quiet(audits, bystander.pid)
        assert "device.chr.unsupported" not in {f.code for f in kept.findings}
        with _opened_while_the_applier_is_held(brake, stopper.pid, quiet.pid):
            assert not tracker.caught_up([quiet.pid], 0.05)
            result, reused = audits.audit(quiet.pid)
            assert reused is False and result is not kept
            assert "device.chr.unsupported" in {f.code for f in result.findings}
            # what waits is about others: a process with nothing pending keeps its audit
            assert audits.audit(bystander.pid) == (kept_bystander, True)
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while not tracker.caught_up([quiet.pid], 0.1):  # released, it applies the event
            assert time.monotonic() < deadline, "the applier never caught up"
            time.sleep(0.01)


def test_an_answer_awaited_on_the_event_loop_waits_for_the_events_before_it_too():
    brake = Brake()
    with attached_tracker(brake) as tracker, subject(OPENS_KVM) as quiet, \
            subject(OPENS_KVM) as stopper, subject(OPENS_KVM) as bystander:
        audits = AuditCache(audit=lambda pid, tree=False, holders=None: audit(pid, tree=tree),
                            live_table=lambda: tracker.table, caught_up=tracker.caught_up,
                            caught_up_on_loop=tracker.caught_up_on_loop)
        kept = _await_quiet(audits, quiet.pid)
        kept_bystander = _await_quiet(audits, bystander.pid)
        assert asyncio.run(audits.kept_on_loop(quiet.pid)) is kept
        with _opened_while_the_applier_is_held(brake, stopper.pid, quiet.pid):
            assert asyncio.run(audits.kept_on_loop(quiet.pid)) is None
            # what waits is about others: a process with nothing pending keeps its audit
            assert asyncio.run(audits.kept_on_loop(bystander.pid)) is kept_bystander
        result, reused = audits.audit(quiet.pid)
        assert reused is False and "device.chr.unsupported" in {f.code for f in result.findings}
