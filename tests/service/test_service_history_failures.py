"""A real `crwatch serve` whose history database fails under it: the disk fills, the files
turn immutable, the database is deleted or replaced. The service says so in /healthz and
/metrics, keeps the transitions waiting, and writes every one of them once it can."""
from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.filesystems import ext4_image, full, immutable
from tests.support.servers import Server, metrics
from tests.support.subjects import subject

pytestmark = [pytest.mark.bpf]

WAIT = 30.0  # the writer retries every 2 s at most; a loaded runner is slow
DB = "history.sqlite3"
KVM_HOLDER = "fd = os.open('/dev/kvm', os.O_RDONLY)\nready(str(fd))\nhold()"
# 100 transitions: each child is nocr once it opened the device, and cr when it exits
KVM_CHILDREN = """
for _ in range(50):
    child = os.fork()
    if child == 0:
        os.open('/dev/kvm', os.O_RDONLY)
        os._exit(0)
    os.waitpid(child, 0)
ready()
hold()
"""


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> Iterator[Path]:
    with ext4_image(tmp_path_factory.mktemp("history") / "disk") as directory:
        yield directory


@pytest.fixture(scope="module")
def server(disk) -> Iterator[Server]:
    running = Server("--db", str(disk / DB))
    try:
        yield running
    finally:
        stderr = running.stop()
        assert "Traceback" not in stderr, stderr
        failures = [line for line in stderr.splitlines() if "history failed" in line]
        assert len(failures) == len(set(failures)), failures  # each cause logged once


def until(condition, what: str):
    deadline = time.monotonic() + WAIT
    while not (found := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.02)
    return found


def history_reason(server: Server) -> str | None:
    health = server.ok("/healthz")
    return health["reasons"].get("history") if health["status"] == "degraded" else None


def assert_everything_was_written(server: Server, disk: Path) -> dict:
    """Once the database takes writes again: none waits, none was lost, and the rows in
    the file are those the service says it wrote (counted while nothing moved: the
    host's other processes make transitions too)."""
    def settled():
        before = server.ok("/healthz")["history"]
        with sqlite3.connect(disk / DB) as connection:
            rows = sum(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                       for table in ("transitions", "verdicts"))
        after = server.ok("/healthz")["history"]
        return (before, rows) if before == after and before["waiting"] == 0 else None
    counts, rows = until(settled, "entries still wait, or the history never settled")
    assert rows == counts["written"]
    assert counts["offered"] == counts["written"] + counts["rejected"]
    assert counts["dropped"] == 0
    health = server.ok("/healthz")
    assert health["status"] == "ok", health["reasons"]
    assert {w["name"]: w["state"] for w in health["workers"]}["history"] == "running"
    return counts


def outage(server: Server, disk: Path, cause: str) -> tuple[int, int]:
    """Transitions (and a verdict, which needs no probe) made while the database refuses
    them: the service is degraded with the cause and the count waiting. Returns (offered,
    waiting) then."""
    offered = server.ok("/healthz")["history"]["offered"]
    with subject(KVM_CHILDREN), subject(KVM_HOLDER) as holder:
        server.ok(f"/processes/{holder.pid}/checkpointable")
        reason = until(lambda: (why := history_reason(server)) and "entries waiting" in why
                       and why, f"the history never said it could not write ({cause})")
        assert reason.startswith("cannot ") and cause in reason, reason
        assert str(disk / DB) in reason
        status = until(lambda: (h := server.ok("/healthz")["history"])["offered"] > offered
                       and h["waiting"] > 0 and h, "no transition waited")
        samples = metrics(server)
        assert samples['crwatch_worker_up{worker="history"}'] == 0
        assert samples["crwatch_history_waiting"] > 0
        assert samples["crwatch_history_errors_total"] >= 1
        assert samples["crwatch_degraded"] == 1
        code, _ = server.get(f"/processes/{holder.pid}/history")
        assert code in (200, 404)  # readable, or nothing of it written yet: never a 500
    return status["offered"], status["waiting"]


def test_healthz_lists_every_worker_running_and_the_history_counts(server, disk):
    health = server.ok("/healthz")
    assert {worker["name"]: worker["state"] for worker in health["workers"]} == dict.fromkeys(
        ("applier", "probe-reader", "process-list", "event-hub", "history-recorder",
         "history"), "running")
    assert health["reasons"] == {} and health["history"]["path"] == str(disk / DB)
    samples = metrics(server)
    assert samples['crwatch_worker_up{worker="history"}'] == 1
    assert samples["crwatch_history_offered_total"] >= samples["crwatch_history_written_total"]


def test_a_full_disk_degrades_the_service_and_loses_no_transition(server, disk):
    assert_everything_was_written(server, disk)
    with full(disk):
        offered, waiting = outage(server, disk, "database or disk is full")
    counts = assert_everything_was_written(server, disk)
    # rejected: a value SQLite cannot store (a process name that is not UTF-8)
    assert counts["written"] + counts["rejected"] >= offered
    print(f"full disk: {waiting} entries waiting of {offered} offered; after recovery "
          f"{counts['written']} written of {counts['offered']} offered, "
          f"{counts['dropped']} dropped")


def _opened_log(reader: sqlite3.Connection, disk: Path) -> Path:
    reader.execute("SELECT count(*) FROM transitions").fetchone()
    return disk / f"{DB}-wal"


def test_an_immutable_database_degrades_the_service_and_loses_no_transition(server, disk):
    assert_everything_was_written(server, disk)
    # A reader kept open keeps the write-ahead log: the last connection to close deletes
    # it, and chattr needs it there.
    with closing(sqlite3.connect(disk / DB)) as reader, \
            immutable(disk / DB, _opened_log(reader, disk)):
        offered, waiting = outage(server, disk, "")
        reason = history_reason(server)
        assert "disk I/O error" in reason or "readonly database" in reason, reason
    counts = assert_everything_was_written(server, disk)
    # rejected: a value SQLite cannot store (a process name that is not UTF-8)
    assert counts["written"] + counts["rejected"] >= offered
    print(f"immutable: {waiting} entries waiting of {offered} offered; after recovery "
          f"{counts['written']} written of {counts['offered']} offered")


def test_a_deleted_database_is_created_again_and_answers(server, disk):
    for name in (DB, f"{DB}-wal", f"{DB}-shm"):
        (disk / name).unlink(missing_ok=True)
    until(lambda: (disk / DB).exists(), "the database was not created again")
    with subject(KVM_HOLDER) as s:
        def recorded():
            code, body = server.get(f"/processes/{s.pid}/history")
            assert code in (200, 404, 503), (code, body)  # never a 500
            return code == 200 and {"transition", "verdict"} <= {e["kind"] for e in body["entries"]}
        server.ok(f"/processes/{s.pid}/checkpointable")  # a verdict, recorded without probes
        until(recorded, "the new database did not record the transition and the verdict")
    assert server.ok("/healthz")["status"] == "ok"


def test_a_database_replaced_by_another_file_is_a_clear_503_until_it_goes(server, disk):
    with subject(KVM_HOLDER) as s:
        until(lambda: server.get(f"/processes/{s.pid}/history")[0] == 200, "nothing recorded")
        garbage = disk / "garbage"
        garbage.write_bytes(b"not a database" * 300)
        for name in (f"{DB}-wal", f"{DB}-shm"):
            (disk / name).unlink(missing_ok=True)
        garbage.replace(disk / DB)
        reason = until(lambda: history_reason(server), "the replaced file went unnoticed")
        assert "file is not a database" in reason
        code, body = server.get(f"/processes/{s.pid}/history")
        assert code == 503 and body["detail"].startswith(
            f"cannot read the history database {disk / DB}: file is not a database"), body
        (disk / DB).unlink()
        until(lambda: server.get(f"/processes/{s.pid}/history")[0] in (200, 404),
              "the history never answered again")
    until(lambda: server.ok("/healthz")["status"] == "ok", "the service stayed degraded")
