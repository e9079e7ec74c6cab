"""Supervised workers: a failing step is retried, counted, logged once per cause, and shown."""
from __future__ import annotations

import logging
import os
import threading
import time

from tracker import supervised
from tracker.supervised import Callback, Worker, backoff

WAIT = 10.0  # for a worker's thread to reach a point the test awaits


class Script:
    """A step that plays a list of outcomes (an exception to raise, or a value to return),
    then parks on `gate` until the test opens it; `called[n]` is set when call n starts."""

    def __init__(self, outcomes: list, park_at: int):
        self.outcomes = outcomes
        self.park_at = park_at
        self.calls = 0
        self.called = [threading.Event() for _ in range(len(outcomes) + 2)]
        self.gate = threading.Event()

    def __call__(self):
        index = self.calls
        self.calls += 1
        self.called[min(index, len(self.called) - 1)].set()
        if index == self.park_at:
            self.gate.wait(WAIT)
        outcome = self.outcomes[min(index, len(self.outcomes) - 1)]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def test_a_failing_step_is_retried_counted_and_shown_until_it_works_again():
    script = Script([OSError("disk full"), OSError("disk full"), None, None], park_at=2)
    worker = Worker("writer", script, first_backoff=0.001,
                    describe=lambda reason: f"{reason}; 7 waiting").start()
    try:
        assert script.called[2].wait(WAIT)  # the third try runs: two failed before it
        status = worker.status()
        assert (status["state"], status["reason"], status["errors"], status["restarts"]) == (
            "retrying", "disk full; 7 waiting", 2, 2)
        script.gate.set()
        assert script.called[3].wait(WAIT)  # a step after the one that worked
        status = worker.status()
        assert (status["state"], status["reason"], status["errors"]) == ("running", None, 2)
    finally:
        script.gate.set()
        worker.stop()
    assert worker.state == "stopped" and not worker.is_alive()


def test_the_same_cause_is_logged_once_and_a_new_one_again(caplog):
    script = Script([ValueError("a"), ValueError("a"), ValueError("a"), ValueError("b"), None],
                    park_at=5)
    caplog.set_level(logging.WARNING, logger=supervised.__name__)
    worker = Worker("loop", script, first_backoff=0.001).start()
    try:
        assert script.called[5].wait(WAIT)
    finally:
        script.gate.set()
        worker.stop()
    messages = [record.getMessage() for record in caplog.records]
    assert [m for m in messages if m.startswith("loop failed")] == [
        "loop failed (retrying; the same error is not logged again): a",
        "loop failed (retrying; the same error is not logged again): b"]
    assert "loop works again after 4 failed tries" in messages
    assert worker.errors == 4


def test_backoff_doubles_up_to_its_cap():
    assert [backoff(n, 0.1, 1.0) for n in (1, 2, 3, 4, 5, 9)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_stopping_ends_a_backoff_at_once():
    script = Script([RuntimeError("down")], park_at=-1)
    worker = Worker("slow", script, first_backoff=600).start()
    assert script.called[0].wait(WAIT)
    worker.stop(timeout=WAIT)  # a backoff of 600 s that did not end would outlast this
    assert not worker.is_alive() and worker.state == "stopped"


def test_a_worker_asked_for_a_nice_value_runs_its_thread_alone_at_it():
    seen: list[tuple[int, int]] = []

    def step() -> bool:
        seen.append((os.getpriority(os.PRIO_PROCESS, 0), os.getpriority(os.PRIO_PROCESS,
                                                                         os.getpid())))
        return False

    worker = Worker("niced", step, nice=os.getpriority(os.PRIO_PROCESS, 0) + 3).start()
    deadline = time.monotonic() + WAIT
    while worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    # its own thread's value (Linux: the nice value is a thread's), not the process's
    assert seen == [(os.getpriority(os.PRIO_PROCESS, 0) + 3, os.getpriority(os.PRIO_PROCESS, 0))]
    assert worker.niced is True


def test_a_loop_that_ends_by_itself_is_dead():
    worker = Worker("reader", lambda: False).start()
    deadline = time.monotonic() + WAIT
    while worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    status = worker.status()
    assert (status["state"], status["reason"]) == ("dead", "its loop ended")


def test_a_callback_failure_never_reaches_the_caller_and_is_shown():
    calls = []

    def work(value):
        calls.append(value)
        if value < 0:
            raise ValueError(f"bad {value}")

    guarded = Callback("subscriber", work)
    guarded(-1)
    guarded(-2)
    assert (guarded.state, guarded.reason(), guarded.errors) == ("retrying", "bad -2", 2)
    guarded(3)
    assert (guarded.state, guarded.reason(), guarded.errors) == ("running", None, 2)
    assert calls == [-1, -2, 3]


def test_an_expected_error_is_one_line_and_a_bug_has_its_traceback(caplog):
    caplog.set_level(logging.ERROR, logger=supervised.__name__)
    def fail(error: Exception):
        raise error

    guarded = Callback("writer", fail, expected=(OSError,))
    guarded(OSError("disk full"))
    guarded(KeyError("bug"))
    assert [(record.exc_info is not None) for record in caplog.records] == [False, True]


class _FailingRows:
    """The collaborators ProcessRows is given, failing on every row while `broken`."""

    def __init__(self):
        self.broken = True
        self.refused = threading.Event()

    def row(self, pid: int, holders=None) -> dict:
        if self.broken:
            self.refused.set()
            raise RuntimeError("the audit broke")
        return {"pid": pid}

    def stale(self, row: dict) -> bool:
        return False

    def forget_old_audits(self) -> None:
        pass


def test_the_process_list_survives_a_failing_refresh_and_fills_again():
    from api.service.state import ProcessRows

    service = _FailingRows()
    rows = ProcessRows(row=service.row, stale=service.stale,
                       after_pass=service.forget_old_audits)
    rows.start()
    try:
        assert rows.snapshot() == []  # the failed first pass does not hold requests
        assert service.refused.wait(WAIT)
        status = rows.worker.status()
        assert (status["state"], status["reason"]) == ("retrying", "the audit broke")
        service.broken = False
        deadline = time.monotonic() + WAIT
        while not rows.snapshot():
            assert time.monotonic() < deadline, "the list never filled again"
            time.sleep(0.01)
        assert os.getpid() in [row["pid"] for row in rows.snapshot()]
        assert rows.worker.state == "running" and rows.worker.errors >= 1
    finally:
        rows.stop()
