"""The history store: every transition and every change of an audited verdict, in SQLite.

One file (WAL), its schema versioned by `PRAGMA user_version` and brought up
to date by MIGRATIONS at open. Writes go through a queue to one writer thread
that commits them in batches (a storm of events costs one transaction per
FLUSH_SECONDS, not one per event); reads use their own connections. Rows are
keyed by identity (pid, start time), so a recycled pid never inherits a
history, and a process's history outlives it until the retention drops it.
Names are kept without loss (tracker.safe_text: a name that is not UTF-8 as
its bytes; the JSON columns escape it as json.dumps does).
"""
from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable

from tracker.safe_text import from_column, to_column

SCHEMA = "crwatch.history/1"
FLUSH_SECONDS = 0.05
BATCH = 1000
QUEUE_CAPACITY = 100_000
MIGRATIONS: list[str] = [
    # 1: transitions of the live table, and verdicts of audits when they change
    """
    CREATE TABLE transitions (
        id INTEGER PRIMARY KEY, pid INTEGER NOT NULL, start_time REAL NOT NULL,
        comm TEXT NOT NULL, tid INTEGER, state TEXT NOT NULL, reasons TEXT NOT NULL,
        exited INTEGER NOT NULL, ts TEXT NOT NULL, recorded REAL NOT NULL);
    CREATE INDEX transitions_identity ON transitions (pid, start_time);
    CREATE INDEX transitions_recorded ON transitions (recorded);
    CREATE TABLE verdicts (
        id INTEGER PRIMARY KEY, pid INTEGER NOT NULL, start_time REAL NOT NULL,
        comm TEXT NOT NULL, profile TEXT NOT NULL, tree INTEGER NOT NULL,
        verdict TEXT NOT NULL, required_options TEXT NOT NULL, reasons TEXT NOT NULL,
        ts TEXT NOT NULL, recorded REAL NOT NULL);
    CREATE INDEX verdicts_identity ON verdicts (pid, start_time);
    CREATE INDEX verdicts_recorded ON verdicts (recorded);
    """,
]


class HistoryError(RuntimeError):
    """The database cannot be opened or is newer than this crwatch."""


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=30, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash of crwatch loses nothing
    return connection


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the schema up to date; returns its version."""
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise HistoryError(f"the history database has schema version {version}; this crwatch "
                           f"knows up to {len(MIGRATIONS)}")
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        with connection:
            connection.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    return len(MIGRATIONS)


class History:
    def __init__(self, path: Path, retention_days: float = 30.0):
        self.path = Path(path)
        self.retention_seconds = retention_days * 86400
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = connect(self.path)
            self.schema_version = migrate(self._writer)
        except (OSError, sqlite3.Error) as error:
            raise HistoryError(f"cannot open the history database {self.path}: {error}") from None
        self._pending: queue.Queue = queue.Queue(QUEUE_CAPACITY)
        self._last_verdicts: dict[tuple, tuple] = {}
        self.dropped = 0
        self.offered = 0
        self.written = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crwatch-history", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ writing

    def record_transition(self, transition) -> None:
        """From the tracker's applier thread: never blocks (a full queue is counted)."""
        self._offer(("transition", (
            transition.pid, transition.start_time, to_column(transition.comm), transition.tid,
            transition.state, json.dumps(transition.reasons), int(transition.exited),
            transition.ts, time.time())))

    def record_verdict(self, document: dict) -> None:
        """An audit's verdict, kept only when it differs from the identity's last one."""
        key = (document["pid"], document["start_time"], document["profile"], document["tree"])
        codes = tuple(sorted(reason["code"] for reason in document["reasons"]))
        value = (document["verdict"], codes)
        if self._last_verdicts.get(key) == value:
            return
        self._last_verdicts[key] = value
        self._offer(("verdict", (
            document["pid"], document["start_time"], to_column(document["comm"]),
            document["profile"],
            int(document["tree"]), document["verdict"], json.dumps(document["required_options"]),
            json.dumps(document["reasons"]), document["checked_at"], time.time())))

    def _offer(self, item: tuple) -> None:
        try:
            self._pending.put_nowait(item)
            self.offered += 1
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        pruned = 0.0
        while True:
            stopping = self._stopping.is_set()
            items = self._take()
            if items:
                self._write(items)
            if time.monotonic() - pruned > 3600:
                pruned = time.monotonic()
                self.prune()
            if stopping and self._pending.empty():
                return

    def _take(self) -> list[tuple]:
        try:
            items = [self._pending.get(timeout=FLUSH_SECONDS)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + FLUSH_SECONDS
        while len(items) < BATCH and time.monotonic() < deadline:
            try:
                items.append(self._pending.get(timeout=max(deadline - time.monotonic(), 0)))
            except queue.Empty:
                break
        return items

    def _write(self, items: Iterable[tuple]) -> None:
        transitions = [row for kind, row in items if kind == "transition"]
        verdicts = [row for kind, row in items if kind == "verdict"]
        with self._writer:
            self._writer.executemany(
                "INSERT INTO transitions (pid, start_time, comm, tid, state, reasons, exited, ts,"
                " recorded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", transitions)
            self._writer.executemany(
                "INSERT INTO verdicts (pid, start_time, comm, profile, tree, verdict,"
                " required_options, reasons, ts, recorded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                verdicts)
        self.written += len(transitions) + len(verdicts)

    def prune(self) -> int:
        """Drop what is older than the retention; returns how many rows went."""
        cutoff = time.time() - self.retention_seconds
        with self._writer:
            gone = sum(self._writer.execute(f"DELETE FROM {table} WHERE recorded < ?",
                                            (cutoff,)).rowcount
                       for table in ("transitions", "verdicts"))
        self._last_verdicts.clear()
        return gone

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything offered so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        target = self.offered
        while self.written < target and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(FLUSH_SECONDS / 5)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(30)
        self._writer.close()

    # ------------------------------------------------------------ reading

    def identities(self, pid: int) -> list[float]:
        """The start times this pid had, newest first."""
        with _reader(self.path) as reader:
            rows = reader.execute(
                "SELECT start_time FROM transitions WHERE pid = ? UNION "
                "SELECT start_time FROM verdicts WHERE pid = ? ORDER BY 1 DESC", (pid, pid))
            return [row[0] for row in rows]

    def entries(self, pid: int, start_time: float) -> list[dict]:
        """Transitions and verdict changes of one identity, oldest first."""
        with _reader(self.path) as reader:
            transitions = reader.execute(
                "SELECT comm, tid, state, reasons, exited, ts, recorded FROM transitions "
                "WHERE pid = ? AND start_time = ?", (pid, start_time)).fetchall()
            verdicts = reader.execute(
                "SELECT comm, profile, tree, verdict, required_options, reasons, ts, recorded "
                "FROM verdicts WHERE pid = ? AND start_time = ?", (pid, start_time)).fetchall()
        found = [(recorded, {"kind": "transition", "comm": from_column(comm), "tid": tid,
                             "state": state,
                             "reasons": json.loads(reasons), "exited": bool(exited), "ts": ts})
                 for comm, tid, state, reasons, exited, ts, recorded in transitions]
        found += [(recorded, {"kind": "verdict", "comm": from_column(comm), "profile": profile,
                              "tree": bool(tree), "verdict": verdict_,
                              "required_options": json.loads(options),
                              "reasons": json.loads(reasons), "ts": ts})
                  for comm, profile, tree, verdict_, options, reasons, ts, recorded in verdicts]
        return [entry for _, entry in sorted(found, key=lambda pair: pair[0])]


class _reader:
    """A short-lived read connection (WAL lets it read while the writer writes)."""

    def __init__(self, path: Path):
        self.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)

    def __enter__(self) -> sqlite3.Connection:
        return self.connection

    def __exit__(self, *_) -> None:
        self.connection.close()
