"""The audits the service keeps for reuse (api/service/audit_cache.py), with a real live
table and real processes: a kept audit is answered again until an event comes for its
process, never without a table, and never for a process gone; a kept tree only while its
members are the same processes; an audit being read is shared only by the calls that came
before it began."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from api.service.audit_cache import AuditCache
from api.service.errors import NoSuchProcess
from probes.events import Event, Kind, Special
from tests.support.subjects import subject
from tracker.audit import audit, descendants
from tracker.live.table import LiveTable
from tracker.profiles import profile

HOLDER = "ready(); hold()"
# A parent that forks a sleeping child at each SIGUSR1.
FORKER = """
import signal
def spawn(*_):
    if os.fork() == 0:
        hold()
signal.signal(signal.SIGUSR1, spawn)
ready(); hold()
"""


def _applied_by_hand(_pids, _timeout: float) -> bool:
    """These tables are fed by the tests, which apply each event before they ask."""
    return True


def _fresh(pid: int, tree: bool = False, holders=None):
    return audit(pid, tree=tree, holders=holders)


def test_a_kept_audit_is_answered_again_until_an_event_comes_for_its_process():
    table = LiveTable(profile("criu", (4, 2, 1)))
    audits = AuditCache(audit=_fresh, live_table=lambda: table,
                        caught_up=_applied_by_hand)
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
    audits = AuditCache(audit=_fresh, live_table=lambda: None,
                        caught_up=_applied_by_hand)
    with subject(HOLDER) as s:
        first, reused = audits.audit(s.pid)
        again, reused_again = audits.audit(s.pid)
    assert (reused, reused_again) == (False, False) and again is not first


def test_a_kept_audit_of_a_process_gone_is_no_such_process():
    table = LiveTable(profile("criu", (4, 2, 1)))
    audits = AuditCache(audit=_fresh, live_table=lambda: table,
                        caught_up=_applied_by_hand)
    with subject(HOLDER) as s:
        audits.audit(s.pid)
        pid = s.pid
    with pytest.raises(NoSuchProcess):
        audits.audit(pid)


def test_a_kept_tree_is_answered_again_only_while_its_members_are_the_same():
    table = LiveTable(profile("criu", (4, 2, 1)))
    audits = AuditCache(audit=_fresh, live_table=lambda: table,
                        caught_up=_applied_by_hand)
    with subject(FORKER) as s:
        try:
            first, reused = audits.audit(s.pid, tree=True)
            assert reused is False and [p.pid for p in first.processes] == [s.pid]
            assert audits.audit(s.pid, tree=True) == (first, True)
            assert audits.audit(s.pid)[1] is False  # its own audit is kept apart
            os.kill(s.pid, signal.SIGUSR1)  # a fork no probe event reports here
            deadline = time.monotonic() + 10
            while len(descendants(s.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            grown, reused = audits.audit(s.pid, tree=True)
            assert reused is False and len(grown.processes) == 2
            assert audits.audit(s.pid, tree=True) == (grown, True)
            child = grown.processes[1].pid
            table.apply(Event(Kind.FD_OPENED, time.monotonic_ns(), child, comm="python",
                              tid=child, fd=3, special=Special.DEVICE, path="/dev/kvm"))
            assert audits.audit(s.pid, tree=True)[1] is False  # an event about a member
        finally:
            for child in descendants(s.pid)[1:]:
                os.kill(child, signal.SIGKILL)


def test_calls_that_come_while_an_audit_is_read_share_the_next_one_begun_after_them():
    began: dict[int, float] = {}

    def slow(pid: int, tree: bool = False, holders=None):
        started = time.monotonic()
        time.sleep(0.2)
        result = audit(pid, tree=tree, holders=holders)
        began[id(result)] = started
        return result

    audits = AuditCache(audit=slow, live_table=lambda: None,
                        caught_up=_applied_by_hand)  # nothing kept: always fresh
    answers: list[tuple[float, object]] = []

    def ask(pid: int) -> None:
        called = time.monotonic()
        answers.append((called, audits.audit(pid)))

    with subject(HOLDER) as s:
        first = threading.Thread(target=ask, args=(s.pid,))
        first.start()
        time.sleep(0.05)  # the first audit is being read when the others come
        others = [threading.Thread(target=ask, args=(s.pid,)) for _ in range(7)]
        for thread in others:
            thread.start()
        for thread in [first, *others]:
            thread.join()
    assert len(answers) == 8
    for called, (result, reused) in answers:
        assert reused is False and began[id(result)] >= called  # read after it was asked
    assert len(began) == 2  # the first call's audit, and one shared by the seven others
