"""locks: /proc/locks and fdinfo `lock:` lines, and the judgement on fixture /proc trees."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracker.checks import locks
from tracker.context import AuditContext
from tracker.procfs import Proc

SUBJECT, STRANGER = 100, 200


def test_a_posix_range_lock_parses():
    lock = locks.parse_lock("1: POSIX  ADVISORY  WRITE 11867 fe:00:15343617 5 14")
    assert (lock.kind, lock.access, lock.pid, lock.major, lock.minor, lock.inode) == (
        "POSIX", "WRITE", 11867, 254, 0, 15343617)
    assert lock.known and not lock.waiting
    assert lock.describe() == "POSIX WRITE lock on bytes 5-14"


def test_waiting_ofd_and_lease_lines_parse():
    waiting = locks.parse_lock("2: -> FLOCK  ADVISORY  WRITE 300 00:14:567 0 EOF")
    assert waiting.waiting and waiting.kind == "FLOCK" and waiting.inode == 567
    ofd = locks.parse_lock("3: OFDLCK ADVISORY  READ  -1 fe:00:12 100 EOF")
    assert ofd.pid == -1 and ofd.describe() == "OFD READ lock on bytes 100 to end of file"
    assert locks.parse_lock("4: LEASE  ACTIVE    READ 12032 fe:00:15 0 EOF").known


def test_unknown_kinds_and_unparsable_lines_are_not_known():
    assert not locks.parse_lock("5: DELEG  ACTIVE    READ 1 fe:00:15 0 EOF").known
    assert not locks.parse_lock("6: POSIX  ADVISORY  WRITE 7 <none>:0 0 EOF").known
    assert not locks.parse_lock("7: garbage").known


class Tree:
    """A fixture /proc with one subject whose fd 3 points at a real file (so stat works)."""

    def __init__(self, root: Path):
        self.root = root
        self.file = root / "data"
        self.file.write_text("x" * 100)
        info = os.stat(self.file)
        self.where = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        (root / str(SUBJECT) / "fd").mkdir(parents=True)
        (root / str(SUBJECT) / "fdinfo").mkdir()
        (root / str(SUBJECT) / "fd" / "3").symlink_to(self.file)
        (root / "locks").write_text("")

    def host_locks(self, *lines: str) -> None:
        numbered = (f"{number}: {line}\n" for number, line in enumerate(lines, 1))
        (self.root / "locks").write_text("".join(numbered))

    def fd_locks(self, *lines: str, flags: str = "02") -> None:
        text = f"pos:\t0\nflags:\t{flags}\nmnt_id:\t27\n" + "".join(f"lock:\t{n}: {line}\n"
                                                              for n, line in enumerate(lines, 1))
        (self.root / str(SUBJECT) / "fdinfo" / "3").write_text(text)

    def findings(self, name_holders: bool = True) -> list:
        proc = Proc(SUBJECT, self.root)
        ctx = AuditContext(root_pid=SUBJECT, tree_pids={SUBJECT}, proc_root=self.root,
                           tree_fds={SUBJECT: proc.fds()}, name_holders=name_holders)
        return list(locks.check_process(ctx, proc))


def test_a_fd_whose_fdinfo_is_gone_is_passed_over(tmp_path: Path):
    tree = Tree(tmp_path)  # fd 3 has no fdinfo file at all: closed meanwhile
    assert tree.findings() == []


def test_the_trees_locks_come_from_its_fdinfo_without_proc_locks(tmp_path: Path):
    tree = Tree(tmp_path)
    posix = f"POSIX  ADVISORY  WRITE {SUBJECT} {tree.where} 0 EOF"
    tree.fd_locks(posix)
    (tmp_path / "locks").unlink()
    (tmp_path / "locks").mkdir()  # reading /proc/locks now fails: it must not be read
    assert [f.code for f in tree.findings(name_holders=False)] == ["lock.posix"]
    with pytest.raises(IsADirectoryError):
        tree.findings(name_holders=True)  # naming outside holders is what reads it


def test_many_unread_fdinfo_records_are_spared_by_reading_proc_locks(tmp_path: Path,
                                                                    monkeypatch):
    monkeypatch.setattr(locks, "FDINFO_READS_MAX", 0)  # fd 3's record is one too many
    tree = Tree(tmp_path)
    posix = f"POSIX  ADVISORY  WRITE {SUBJECT} {tree.where} 0 EOF"
    tree.fd_locks(posix)
    assert tree.findings(name_holders=False) == []  # /proc/locks lists no lock on it
    tree.host_locks(posix, f"POSIX  ADVISORY  READ  {STRANGER} {tree.where} 0 EOF")
    # its lock found through /proc/locks; the outsider's named only with the holders
    assert [f.code for f in tree.findings(name_holders=False)] == ["lock.posix"]
    assert [f.code for f in tree.findings(name_holders=True)] == ["lock.posix",
                                                                  "lock.outside_holder"]


def test_outside_lock_holders_are_named_only_when_holders_are(tmp_path: Path):
    tree = Tree(tmp_path)
    tree.host_locks(f"POSIX  ADVISORY  READ  {STRANGER} {tree.where} 0 EOF")
    tree.fd_locks()
    assert [f.code for f in tree.findings(name_holders=True)] == ["lock.outside_holder"]
    assert tree.findings(name_holders=False) == []


def test_each_held_lock_needs_file_locks_and_names_the_file(tmp_path: Path):
    tree = Tree(tmp_path)
    posix = f"POSIX  ADVISORY  WRITE {SUBJECT} {tree.where} 0 EOF"
    lease = f"LEASE  ACTIVE    READ {SUBJECT} {tree.where} 0 EOF"
    tree.host_locks(posix, lease)
    tree.fd_locks(posix, lease)
    found = tree.findings()
    assert [(f.code, f.fd) for f in found] == [("lock.posix", 3), ("lock.lease", 3)]
    assert found[0].message == (f"fd 3 ({tree.file}): POSIX WRITE lock on the whole file "
                                f"(owner pid {SUBJECT})")


def test_unknown_lock_kind_is_a_blocker(tmp_path: Path):
    tree = Tree(tmp_path)
    deleg = f"DELEG  ACTIVE    READ {SUBJECT} {tree.where} 0 EOF"
    tree.host_locks(deleg)
    tree.fd_locks(deleg)
    [finding] = tree.findings()
    assert finding.code == "lock.unknown" and "DELEG" in finding.message


def test_a_lock_of_a_process_outside_the_tree_is_only_noted(tmp_path: Path):
    tree = Tree(tmp_path)
    same_inode_elsewhere = f"00:05:{os.stat(tree.file).st_ino}"
    tree.host_locks(f"POSIX  ADVISORY  READ  {STRANGER} {tree.where} 0 EOF",
                    f"POSIX  ADVISORY  WRITE {STRANGER + 1} {same_inode_elsewhere} 0 EOF")
    tree.fd_locks()
    [finding] = tree.findings()  # the second lock is on another device
    assert finding.code == "lock.outside_holder"
    assert f"also locked by pid {STRANGER} outside the tree (POSIX READ lock" in finding.message


def test_a_flock_shared_with_an_outside_parent_is_the_trees(tmp_path: Path):
    tree = Tree(tmp_path)
    shared = f"FLOCK  ADVISORY  WRITE {STRANGER} {tree.where} 0 EOF"
    tree.host_locks(shared)
    tree.fd_locks(shared)
    assert [f.code for f in tree.findings()] == ["lock.flock"]


def test_a_write_lease_on_a_file_criu_reopens_needs_file_validation_filesize(tmp_path: Path):
    tree = Tree(tmp_path)   # 100 bytes: CRIU reopens it to look for an ELF build-id
    lease = f"LEASE  ACTIVE    WRITE {SUBJECT} {tree.where} 0 EOF"
    tree.host_locks(lease)
    tree.fd_locks(lease)
    found = tree.findings()
    assert [(f.code, f.fd, f.option_value) for f in found] == [
        ("lock.lease", 3, None), ("lock.lease.reopened", 3, "filesize")]
    assert found[1].message.startswith(f"fd 3 ({tree.file}): write lease on a file of 100 bytes")


@pytest.mark.parametrize("size, flags, access", [
    (4, "02", "WRITE"),          # under SELFMAG + 1 bytes: no build-id to look for
    (100, "02001", "WRITE"),     # O_WRONLY|O_APPEND (a log): CRIU skips its size check
    (100, "00", "READ"),         # a read lease survives a read-only open
])
def test_leases_criu_does_not_break(tmp_path: Path, size: int, flags: str, access: str):
    tree = Tree(tmp_path)
    tree.file.write_text("x" * size)
    lease = f"LEASE  ACTIVE    {access} {SUBJECT} {tree.where} 0 EOF"
    tree.host_locks(lease)
    tree.fd_locks(lease, flags=flags)
    assert [f.code for f in tree.findings()] == ["lock.lease"]
