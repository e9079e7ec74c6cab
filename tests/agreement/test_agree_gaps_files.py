"""Files whose path is too long for CRIU to read, judged by crwatch and by the real CRIU.

CRIU reads the path of every file it saves by name through readlink of its /proc
link into PATH_MAX - 1 bytes (files.c fill_fdlink, util.c read_fd_link): a path the
kernel cannot name in PATH_MAX fails readlink (`Can't read link of fd %d`), one of
exactly 4095 bytes fills the buffer (`Buffer for read link of fd %d is too small`).
Such paths are reached through relative ones: a process descends one directory at a
time.
"""
from __future__ import annotations

import os
import tempfile
from typing import Iterator

import pytest

from tests.support.agreement import assert_agrees
from tests.support.long_paths import DESCEND
from tests.support.subjects import subject
from tracker.procfs import NAME_TOO_LONG, Proc

pytestmark = [pytest.mark.criu]


@pytest.fixture
def scratch() -> Iterator[str]:
    # rmtree works by fd, so it removes paths longer than PATH_MAX too
    with tempfile.TemporaryDirectory(prefix="crwatch-long-") as directory:
        yield directory


def fd_at_length(base: str, length: int) -> str:
    return DESCEND + f"""
path = descend({base!r}, {length}, "f")
kept = os.open("f", os.O_CREAT | os.O_RDWR)
os.chdir("/")
ready(str(kept)); hold()
"""


def test_an_open_file_whose_path_is_longer_than_path_max_is_blocked(scratch: str):
    with subject(fd_at_length(scratch, 5000)) as s:
        assert Proc(s.pid).readlink(f"fd/{s.note}") == NAME_TOO_LONG
        document = assert_agrees(s.pid, "an open file whose path is over PATH_MAX",
                                 expect="blocked", codes={"file.path.too_long"},
                                 criu_error="Can't read link of fd")
    reason = next(r for r in document["reasons"] if r["code"] == "file.path.too_long")
    assert reason["fd"] == int(s.note)
    assert "longer than PATH_MAX" in reason["message"]


def test_an_open_file_whose_path_is_4095_bytes_is_blocked(scratch: str):
    with subject(fd_at_length(scratch, 4095)) as s:
        assert len(os.readlink(f"/proc/{s.pid}/fd/{s.note}")) == 4095
        document = assert_agrees(s.pid, "an open file whose path is 4095 bytes", expect="blocked",
                                 codes={"file.path.too_long"},
                                 criu_error="Buffer for read link of fd")
    reason = next(r for r in document["reasons"] if r["code"] == "file.path.too_long")
    assert "4095 bytes long" in reason["message"]


def test_an_open_file_whose_path_is_4094_bytes_is_ok(scratch: str):
    with subject(fd_at_length(scratch, 4094)) as s:
        assert len(os.readlink(f"/proc/{s.pid}/fd/{s.note}")) == 4094
        assert_agrees(s.pid, "an open file whose path is 4094 bytes", expect="ok")


def test_a_cwd_longer_than_path_max_is_blocked(scratch: str):
    code = DESCEND + f"""
descend({scratch!r}, 5000, "d")
os.mkdir("d"); os.chdir("d")
ready(); hold()
"""
    with subject(code) as s:
        document = assert_agrees(s.pid, "a cwd whose path is over PATH_MAX", expect="blocked",
                                 codes={"file.path.too_long"}, criu_error="Can't read link of fd")
    reason = next(r for r in document["reasons"] if r["code"] == "file.path.too_long")
    assert "its cwd" in reason["message"] and reason["fd"] is None
