"""States that name several CRIU options at once, judged by crwatch and by the real CRIU:
with every option (and value) CRIU dumps them, without any one of them it refuses; and a
blocked state whose other reasons name options is refused even with all of them."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.agreement import assert_agrees, connection_lock_codes, network_lock_options
from tests.support.subjects import subject

pytestmark = [pytest.mark.criu]

# A TCP connection with both ends held, a flock, and a deleted 3 MiB file (over CRIU's
# default ghost limit of 1 MiB).
SEVERAL_OPTIONS = """
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
client = socket.create_connection(listener.getsockname()); server, _ = listener.accept()
listener.close()
locked = open({lock!r}, "w"); fcntl.flock(locked, fcntl.LOCK_EX)
scratch = open({scratch!r}, "wb+"); scratch.write(b"x" * (3 << 20)); scratch.flush()
os.unlink({scratch!r})
"""


def test_a_state_needing_several_options_fails_without_any_one_of_them(tmp_path: Path):
    code = SEVERAL_OPTIONS.format(lock=str(tmp_path / "lock"), scratch=str(tmp_path / "scratch"))
    with subject(code + "ready(); hold()") as s:
        document = assert_agrees(
            s.pid, "TCP connection, flock and a deleted 3 MiB file", expect="needs_options",
            codes={"socket.tcp.established", "lock.flock", "file.deleted.over_ghost_limit"}
            | connection_lock_codes())
    assert document["required_options"] == sorted(
        ["--file-locks", "--ghost-limit", "--tcp-established", *network_lock_options()[:1]])


def test_a_blocked_state_is_refused_even_with_the_options_its_other_reasons_name(tmp_path: Path):
    code = SEVERAL_OPTIONS.format(lock=str(tmp_path / "lock"), scratch=str(tmp_path / "scratch"))
    with subject(code + "kvm = os.open('/dev/kvm', os.O_RDWR)\nready(); hold()") as s:
        assert_agrees(s.pid, "/dev/kvm next to a TCP connection, a flock and a deleted 3 MiB file",
                      expect="blocked",
                      codes={"device.chr.unsupported", "socket.tcp.established", "lock.flock",
                             "file.deleted.over_ghost_limit"} | connection_lock_codes())
