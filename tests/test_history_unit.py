"""The history store on a real SQLite file: migrations, batching, identities, retention."""
from __future__ import annotations

import sqlite3
import time

import pytest

from tracker import history
from tracker.history import History, HistoryError
from tracker.live_model import Transition


def transition(pid: int, start_time: float, state: str, **extra) -> Transition:
    reasons = [] if state == "cr" else [{"code": "device.chr.unsupported", "fd": 3}]
    return Transition(pid, pid, start_time, "python", state, reasons,
                      "2026-12-03T12:00:00.000Z", 1, extra.get("exited", False))


def verdict(pid: int, start_time: float, value: str, codes=("device.chr.unsupported",)) -> dict:
    return {"pid": pid, "start_time": start_time, "comm": "python", "profile": "criu",
            "tree": False, "verdict": value, "required_options": [],
            "reasons": [{"code": code} for code in codes], "checked_at": "2026-12-03T12:00:01Z"}


def test_transitions_and_verdict_changes_survive_a_reopen(tmp_path):
    path = tmp_path / "history.sqlite3"
    store = History(path)
    store.record_transition(transition(42, 100.0, "nocr"))
    store.record_verdict(verdict(42, 100.0, "blocked"))
    store.record_verdict(verdict(42, 100.0, "blocked"))  # unchanged: not kept again
    store.record_transition(transition(42, 100.0, "cr", exited=True))
    store.record_transition(transition(42, 200.0, "nocr"))  # the pid, reused
    store.flush()
    store.close()

    again = History(path)
    try:
        assert again.identities(42) == [200.0, 100.0]
        entries = again.entries(42, 100.0)
        assert [(e["kind"], e.get("state") or e.get("verdict")) for e in entries] == [
            ("transition", "nocr"), ("verdict", "blocked"), ("transition", "cr")]
        assert entries[2]["exited"] is True
        assert [e["state"] for e in again.entries(42, 200.0)] == ["nocr"]
    finally:
        again.close()


def test_the_schema_is_versioned_and_a_newer_one_is_refused(tmp_path):
    path = tmp_path / "history.sqlite3"
    History(path).close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == len(history.MIGRATIONS)
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        connection.execute(f"PRAGMA user_version = {len(history.MIGRATIONS) + 1}")
    with pytest.raises(HistoryError, match="schema version"):
        History(path)


def test_a_storm_is_written_in_few_transactions(tmp_path):
    store = History(tmp_path / "history.sqlite3")
    try:
        for number in range(5000):
            store.record_transition(transition(1000 + number, 1.0, "nocr"))
        store.flush()
        assert store.written == 5000 and store.dropped == 0
    finally:
        store.close()


def test_retention_drops_old_rows(tmp_path, monkeypatch):
    store = History(tmp_path / "history.sqlite3", retention_days=1)
    try:
        store.record_transition(transition(7, 1.0, "nocr"))
        store.flush()
        ten_days_on = time.time() + 10 * 86400
        monkeypatch.setattr(time, "time", lambda: ten_days_on)
        assert store.prune() == 1
        assert store.entries(7, 1.0) == []
    finally:
        store.close()


def test_an_unwritable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(HistoryError, match="cannot open the history database"):
        History(blocker / "history.sqlite3")
