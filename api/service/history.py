"""The history store: every transition and every change of an audited verdict, in SQLite.

One file (WAL), its schema versioned by `PRAGMA user_version` and brought up
to date by MIGRATIONS at open. Writes go through a queue to one writer thread
that commits them in batches (a storm of events costs one transaction per
FLUSH_SECONDS, not one per event); reads use their own connections. Rows are
keyed by identity (pid, start time), so a recycled pid never inherits a
history, and a process's history outlives it until the retention drops it.
Names are kept without loss (tracker.safe_text: a name that is not UTF-8 as
its bytes; the JSON columns escape it as json.dumps does).

The writer is a supervised Worker (tracker/supervised.py): a batch the
database refuses (disk full, locked, read-only or immutable, I/O error) is
kept and tried again with backoff, with the queue behind it as the bounded
buffer; only what overflows that buffer is lost, and it is counted
(`dropped`). A database file deleted or replaced while the service runs is
noticed before each write and opened (created, with the schema) again. A row
the database can never take (not the database's fault: a value it cannot
encode) is set aside alone and counted (`rejected`), never its batch.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tracker.safe_text import from_column, to_column
from tracker.supervised import Worker

SCHEMA = "crwatch.history/1"
FLUSH_SECONDS = 0.05
BATCH = 1000
QUEUE_CAPACITY = 100_000
# While the database refuses writes, the batch is tried again this often at most.
RETRY_MAX_SECONDS = 2.0
# How long a write waits for a lock another program holds before it counts as refused
# (and /healthz says so): short, the batch is kept and tried again anyway.
WRITE_BUSY_SECONDS = 5.0
PRUNE_SECONDS = 3600
# Errors of a row's values, not of the database: retrying cannot help.
ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
              ValueError, TypeError, OverflowError)
INSERTS = {
    "transition": "INSERT INTO transitions (pid, start_time, comm, tid, state, reasons, exited,"
                  " ts, recorded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "verdict": "INSERT INTO verdicts (pid, start_time, comm, profile, tree, verdict,"
               " required_options, reasons, ts, recorded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
}
REASONS_COLUMN = 5  # of a transition's row: offered as a list, stored as JSON
log = logging.getLogger(__name__)
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


class HistoryWriteError(RuntimeError):
    """The database refuses a write now (the writer tries again)."""


class HistoryUnavailable(RuntimeError):
    """The database cannot be read now (deleted, unreadable, being created again)."""


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=WRITE_BUSY_SECONDS, check_same_thread=False)
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
        self._writer: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except (OSError, sqlite3.Error) as error:
            raise HistoryError(f"cannot open the history database {self.path}: {error}") from None
        self._pending: queue.Queue = queue.Queue(QUEUE_CAPACITY)
        self._in_hand: list[tuple] = []  # the batch being written (refused: tried again)
        self._last_verdicts: dict[tuple, tuple] = {}
        self._counting = threading.Lock()
        self.dropped = 0
        self.offered = 0
        self.written = 0
        self.rejected = 0
        self._abandoned = 0  # waiting at stop and not writable: counted in dropped too
        self._pruned = time.monotonic()
        self.worker = Worker("history", self._step, max_backoff=RETRY_MAX_SECONDS,
                             describe=self._describe, expected=(HistoryWriteError,)).start()

    @property
    def waiting(self) -> int:
        """Entries offered and not written yet (in the queue or in the writer's hands)."""
        # max: an entry can be written before its offer is counted
        return max(self.offered - self.written - self.rejected - self._abandoned, 0)

    def status(self) -> dict:
        return {"path": str(self.path), "offered": self.offered, "written": self.written,
                "waiting": self.waiting, "dropped": self.dropped, "rejected": self.rejected,
                "errors": self.worker.errors}

    def _describe(self, reason: str) -> str:
        return f"{reason}; retrying, {self.waiting} entries waiting"

    # ------------------------------------------------------------ writing

    def record_transition(self, transition) -> None:
        """From the tracker's applier thread: never blocks (a full queue is counted). Its
        reasons are encoded by the writer (_stored), off the thread that applies events."""
        self._offer(("transition", (
            transition.pid, transition.start_time, to_column(transition.comm), transition.tid,
            transition.state, transition.reasons, int(transition.exited),
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
        with self._counting:  # two threads offer: the applier and the requests' verdicts
            try:
                self._pending.put_nowait(item)
                self.offered += 1
            except queue.Full:
                self.dropped += 1

    def _step(self) -> None:
        """One turn of the writer: the refused batch again, else the next one (taken, it
        is kept in hand until written: a refusal leaves it for the next try)."""
        self._in_hand = self._in_hand or self._take()
        # checked last before writing, and each FLUSH_SECONDS when idle
        if self._writer is None or _identity(self.path) != self._identity:
            self._reopen()
        if self._in_hand:
            self._write(self._in_hand)
            self._in_hand = []
        if time.monotonic() - self._pruned > PRUNE_SECONDS:
            self._pruned = time.monotonic()
            try:
                self.prune()
            except sqlite3.Error as error:  # tried again at the next PRUNE_SECONDS
                self._close_writer()
                raise HistoryWriteError(f"cannot prune {self.path}: {error}") from error

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

    def _open(self) -> None:
        connection = connect(self.path)
        try:
            self.schema_version = migrate(connection)
            self._identity = _identity(self.path)
        except BaseException:
            connection.close()
            raise
        self._writer = connection

    def _reopen(self) -> None:
        """Open the file at the path again: it was deleted or replaced, or a write failed."""
        self._close_writer()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except (OSError, sqlite3.Error) as error:
            raise HistoryWriteError(f"cannot open {self.path}: {error}") from error

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except sqlite3.Error:  # it failed already; the reopen will tell
                pass

    def _write(self, items: list[tuple]) -> None:
        try:
            try:
                written = self._insert(items)
            except ROW_ERRORS:  # one row cannot be stored: set it aside, keep the others
                written = self._insert_each(items)
        except sqlite3.Error as error:
            self._close_writer()  # opened afresh for the next try, whatever state it is in
            raise HistoryWriteError(f"cannot write {self.path}: {error}") from error
        self.written += written

    def _insert(self, items: list[tuple]) -> int:
        with self._writer:
            for kind, statement in INSERTS.items():
                self._writer.executemany(statement, [_stored(kind_, row) for kind_, row in items
                                                     if kind_ == kind])
        return len(items)

    def _insert_each(self, items: list[tuple]) -> int:
        written = 0
        with self._writer:
            for kind, row in items:
                try:
                    self._writer.execute(INSERTS[kind], _stored(kind, row))
                    written += 1
                except ROW_ERRORS as error:
                    if not self.rejected:
                        log.error("a history entry cannot be stored and is left out (the next "
                                  "ones are counted, not logged): %s: %r", error, row)
                    self.rejected += 1
        return written

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
        while (self.written + self.rejected < target and time.monotonic() < deadline
               and self.worker.is_alive()):
            time.sleep(FLUSH_SECONDS / 5)

    def close(self) -> None:
        self.worker.stop()
        self._drain()
        self._close_writer()

    def _drain(self) -> None:
        """At shutdown, one last try to write what waits; what cannot be is counted lost."""
        try:
            while self.waiting > 0:
                self._step()
        except HistoryWriteError as error:
            lost = self.waiting
            self._abandoned += lost
            self.dropped += lost
            log.error("%d history entries could not be written before stopping: %s", lost, error)

    # ------------------------------------------------------------ reading

    def identities(self, pid: int) -> list[float]:
        """The start times this pid had, newest first."""
        with _readable(self.path), _reader(self.path) as reader:
            rows = reader.execute(
                "SELECT start_time FROM transitions WHERE pid = ? UNION "
                "SELECT start_time FROM verdicts WHERE pid = ? ORDER BY 1 DESC", (pid, pid))
            return [row[0] for row in rows]

    def entries(self, pid: int, start_time: float) -> list[dict]:
        """Transitions and verdict changes of one identity, oldest first."""
        with _readable(self.path), _reader(self.path) as reader:
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


@contextmanager
def _readable(path: Path) -> Iterator[None]:
    """A failed read becomes HistoryUnavailable, which the API answers with a 503."""
    try:
        yield
    except sqlite3.Error as error:
        raise HistoryUnavailable(f"cannot read the history database {path}: {error}") from error


def _stored(kind: str, row: tuple) -> tuple:
    """The row as its table stores it: a transition's reasons are encoded here, by the
    writer (an encoding error is the row's, counted as rejected)."""
    if kind != "transition":
        return row
    return (*row[:REASONS_COLUMN], json.dumps(row[REASONS_COLUMN]), *row[REASONS_COLUMN + 1:])


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file is at the path now (None: none)."""
    try:
        stat = os.stat(path)
    except OSError:  # gone, or its directory is: opening it again will say which
        return None
    return stat.st_dev, stat.st_ino
