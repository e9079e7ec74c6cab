"""The audits the service keeps for reuse (api/service/audit_cache.py), with a real live
table and real processes: a kept audit is answered again until an event comes for its
process, never without a table, and never for a process gone."""
from __future__ import annotations

import time

import pytest

from api.service.audit_cache import AuditCache
from api.service.errors import NoSuchProcess
from probes.events import Event, Kind, Special
from tests.support.subjects import subject
from tracker.audit import audit
from tracker.live.table import LiveTable
from tracker.profiles import profile

HOLDER = "ready(); hold()"


def _fresh(pid: int, holders=None):
    return audit(pid, holders=holders)


def test_a_kept_audit_is_answered_again_until_an_event_comes_for_its_process():
    table = LiveTable(profile("criu", (4, 2, 1)))
    audits = AuditCache(audit=_fresh, live_table=lambda: table)
    with subject(HOLDER) as s, subject(HOLDER) as other:
        first, reused = audits.audit(s.pid)
        assert reused is False
        assert audits.audit(s.pid) == (first, True)
        table.apply(Event(Kind.FD_OPENED, time.monotonic_ns(), other.pid, comm="python",
                          tid=other.pid, fd=3, special=Special.DEVICE, path="/dev/kvm"))
        assert audits.audit(s.pid) == (first, True)  # an event about another process
        table.apply(Event(Kind.FD_OPENED, time.monotonic_ns(), s.pid, comm="python",
                          tid=s.pid, fd=3, special=Special.DEVICE, path="/dev/kvm"))
        fresh, reused = audits.audit(s.pid)
        assert reused is False and fresh is not first
        assert audits.audit(s.pid) == (fresh, True)
        audits.forget(s.pid)
        assert audits.audit(s.pid)[1] is False


def test_without_a_live_table_every_audit_is_fresh():
    audits = AuditCache(audit=_fresh, live_table=lambda: None)
    with subject(HOLDER) as s:
        first, reused = audits.audit(s.pid)
        again, reused_again = audits.audit(s.pid)
    assert (reused, reused_again) == (False, False) and again is not first


def test_a_kept_audit_of_a_process_gone_is_no_such_process():
    table = LiveTable(profile("criu", (4, 2, 1)))
    audits = AuditCache(audit=_fresh, live_table=lambda: table)
    with subject(HOLDER) as s:
        audits.audit(s.pid)
        pid = s.pid
    with pytest.raises(NoSuchProcess):
        audits.audit(pid)
