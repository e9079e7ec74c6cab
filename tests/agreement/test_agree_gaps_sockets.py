"""Unix sockets bound to a relative name, judged by crwatch and by the real CRIU.

CRIU saves a relative name as the directory of the socket's file (sk-unix.c
unix_resolve_name): the file's path must still end with the name, or it refuses
(`Unable too cut %s from %s`). Renaming the file, or a directory of the name, breaks
that; a name reached again through "./", or a file deleted in place, does not.
"""
from __future__ import annotations

import tempfile
from typing import Iterator

import pytest

from tests.support.agreement import assert_agrees
from tests.support.subjects import subject

pytestmark = [pytest.mark.criu]


@pytest.fixture
def scratch() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="crwatch-unix-") as directory:
        yield directory


def bound(scratch: str, name: str, then: str = "") -> str:
    return f"""
os.chdir({scratch!r})
os.makedirs("sub", exist_ok=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind({name!r})
s.listen()
{then}
os.chdir("/")
ready(str(s.fileno())); hold()
"""


@pytest.mark.parametrize(("name", "then", "moved"), [
    ("rel.sock", "os.rename('rel.sock', 'moved.sock')", "moved.sock"),
    ("sub/rel.sock", "os.rename('sub', 'other')", "other/rel.sock"),
], ids=["file-renamed", "directory-renamed"])
def test_a_relative_name_whose_file_moved_is_blocked(scratch, name, then, moved):
    with subject(bound(scratch, name, then)) as s:
        document = assert_agrees(s.pid, f"unix socket bound to {name}, then {then}",
                                 expect="blocked", codes={"socket.unix.name_moved"},
                                 criu_error=f"Unable too cut {name} from {scratch}/{moved}")
    reason = next(r for r in document["reasons"] if r["code"] == "socket.unix.name_moved")
    assert reason["fd"] == int(s.note)
    assert f"relative name {name!r}, whose file is now {scratch}/{moved}" in reason["message"]


@pytest.mark.parametrize("name", ["rel.sock", "./rel.sock", "sub/rel.sock"])
def test_a_relative_name_in_place_is_ok(scratch, name):
    with subject(bound(scratch, name)) as s:
        document = assert_agrees(s.pid, f"unix socket bound to {name}", expect="ok")
    assert "socket.unix.name_moved" not in {r["code"] for r in document["reasons"]}
