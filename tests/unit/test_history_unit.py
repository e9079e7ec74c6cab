"""The history store on a real SQLite file: migrations, batching, identities, retention, and
what it does when the database fails (a full tmpfs, a deleted or replaced file)."""
from __future__ import annotations

import sqlite3
import time

import pytest

from api.service import history
from api.service.history import History, HistoryError, HistoryUnavailable
from tests.support.filesystems import full, small_tmpfs
from tracker.live.model import Transition


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


# ---------------------------------------------------------------- a database that fails

WAIT = 20.0  # the writer retries every RETRY_MAX_SECONDS at most


def until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def stored(path) -> int:
    with sqlite3.connect(path) as connection:
        return sum(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                   for table in ("transitions", "verdicts"))


@pytest.mark.root
def test_a_full_disk_keeps_the_entries_and_writes_them_when_space_returns(tmp_path):
    with small_tmpfs(tmp_path / "small") as directory:
        path = directory / "history.sqlite3"
        store = History(path)
        try:
            with full(directory):
                for number in range(3000):
                    store.record_transition(transition(1000 + number, 1.0, "nocr"))
                until(lambda: store.worker.state == "retrying", "the full disk went unnoticed")
                status = store.status()
                assert status["waiting"] > 0 and status["errors"] >= 1 and status["dropped"] == 0
                assert store.worker.reason() == (f"cannot write {path}: database or disk is "
                                                 f"full; retrying, {store.waiting} entries waiting")
            until(lambda: store.waiting == 0, "the waiting entries were not written")
            assert store.worker.state == "running"
            assert store.written == store.offered == 3000 == stored(path)
        finally:
            store.close()


@pytest.mark.root
def test_what_overflows_the_waiting_bound_is_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(history, "QUEUE_CAPACITY", 10)
    with small_tmpfs(tmp_path / "small") as directory:
        store = History(directory / "history.sqlite3")
        try:
            with full(directory):
                store.record_transition(transition(1, 1.0, "nocr"))
                until(lambda: store.worker.state == "retrying", "the full disk went unnoticed")
                for number in range(50):  # one batch is held; the queue takes 10
                    store.record_transition(transition(2 + number, 1.0, "nocr"))
                assert (store.offered, store.dropped, store.waiting) == (11, 40, 11)
            until(lambda: store.waiting == 0, "the waiting entries were not written")
            assert store.written == 11 == stored(store.path)
        finally:
            store.close()


def test_a_deleted_database_is_created_again_and_written(tmp_path):
    path = tmp_path / "history.sqlite3"
    store = History(path)
    try:
        store.record_transition(transition(1, 1.0, "nocr"))
        store.flush()
        for name in ("history.sqlite3", "history.sqlite3-wal", "history.sqlite3-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        until(path.exists, "the database was not created again")
        store.record_transition(transition(2, 1.0, "nocr"))
        store.flush()
        assert store.identities(2) == [1.0] and store.identities(1) == []
        assert store.worker.state == "running"
    finally:
        store.close()


def test_a_file_that_is_no_database_is_a_clear_read_error_until_it_goes(tmp_path):
    path = tmp_path / "history.sqlite3"
    store = History(path)
    try:
        garbage = tmp_path / "garbage"
        garbage.write_bytes(b"not a database at all" * 100)
        for name in ("history.sqlite3-wal", "history.sqlite3-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        garbage.replace(path)  # another file at the path, and not a database
        until(lambda: store.worker.state == "retrying", "the replaced file went unnoticed")
        store.record_transition(transition(3, 1.0, "nocr"))
        assert "file is not a database" in store.worker.reason()
        with pytest.raises(HistoryUnavailable, match=f"cannot read the history database {path}"):
            store.entries(3, 1.0)
        path.unlink()
        until(lambda: store.waiting == 0, "the entry was not written to a new database")
        assert store.identities(3) == [1.0] and store.worker.state == "running"
    finally:
        store.close()


def test_a_row_the_database_cannot_store_is_left_out_alone(tmp_path):
    store = History(tmp_path / "history.sqlite3")
    try:
        store.record_transition(transition(5, 1.0, "nocr"))
        store.record_transition(transition(2 ** 70, 1.0, "nocr"))  # no SQLite integer
        store.record_transition(transition(6, 1.0, "nocr"))
        store.flush()
        assert (store.written, store.rejected, store.waiting) == (2, 1, 0)
        assert store.identities(5) == [1.0] == store.identities(6)
        assert store.worker.state == "running"
    finally:
        store.close()


@pytest.mark.root
def test_what_cannot_be_written_at_stop_is_counted_lost(tmp_path):
    with small_tmpfs(tmp_path / "small") as directory:
        store = History(directory / "history.sqlite3")
        with full(directory):
            for number in range(100):
                store.record_transition(transition(1 + number, 1.0, "nocr"))
            until(lambda: store.worker.state == "retrying", "the full disk went unnoticed")
            store.close()
        assert (store.offered, store.written, store.dropped) == (100, 0, 100)


def test_a_database_locked_by_another_program_is_written_once_it_lets_go(tmp_path, monkeypatch):
    monkeypatch.setattr(history, "WRITE_BUSY_SECONDS", 0.05)
    path = tmp_path / "history.sqlite3"
    store = History(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        store.record_transition(transition(8, 1.0, "nocr"))
        until(lambda: store.worker.state == "retrying", "the lock went unnoticed")
        assert "database is locked" in store.worker.reason()
        assert store.waiting == 1
        other.execute("COMMIT")
        until(lambda: store.waiting == 0, "the entry was not written after the lock went")
        assert store.identities(8) == [1.0] and store.worker.state == "running"
    finally:
        other.close()
        store.close()
