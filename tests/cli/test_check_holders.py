"""`crwatch check` names the holders of a pipe's or socket's other end only when asked
(`--holders`): without it, it walks no fd of the host, and its verdicts are the same."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.subjects import subject

CRWATCH = Path(sys.executable).with_name("crwatch")
HOLD = "ready(); hold()"
NOT_LOOKED_UP = "its holders were not looked up"


def reasons(pid: int, *options: str) -> tuple[dict, dict[str, dict]]:
    """The verdict document of `crwatch check --json`, and its reasons by code."""
    result = subprocess.run([str(CRWATCH), "check", "--json", *options, str(pid)],
                            capture_output=True, text=True, timeout=120)
    document = json.loads(result.stdout)
    return document, {reason["code"]: reason for reason in document["reasons"]}


@pytest.mark.root
def test_a_pipe_shared_outside_is_noted_without_naming_its_holders_unless_asked():
    read_end, write_end = os.pipe()
    try:
        with subject(HOLD, pass_fds=(write_end,)) as held:
            plain, plain_reasons = reasons(held.pid)
            named, named_reasons = reasons(held.pid, "--holders")
    finally:
        os.close(read_end)
        os.close(write_end)
    pipe = plain_reasons["file.pipe.external"]
    assert NOT_LOOKED_UP in pipe["message"] and str(os.getpid()) not in pipe["message"]
    assert f"pid {os.getpid()}" in named_reasons["file.pipe.external"]["message"]
    assert (plain["verdict"], sorted(plain_reasons)) == (named["verdict"], sorted(named_reasons))


@pytest.mark.root
def test_a_pipe_whose_other_end_is_closed_everywhere_is_not_shared():
    read_end, write_end = os.pipe()
    with subject(HOLD, pass_fds=(write_end,)) as held:
        os.close(read_end)
        os.close(write_end)
        _, found = reasons(held.pid)
    assert "file.pipe.external" not in found


@pytest.mark.root
def test_a_unix_peer_outside_keeps_its_verdict_without_naming_its_holders():
    inside, outside = socket.socketpair()
    try:
        with subject(HOLD, pass_fds=(inside.fileno(),)) as held:
            plain, plain_reasons = reasons(held.pid)
            named, named_reasons = reasons(held.pid, "--holders")
    finally:
        inside.close()
        outside.close()
    stream = plain_reasons["socket.unix.external_stream"]
    assert stream["message"].endswith(f"outside the tree ({NOT_LOOKED_UP})")
    assert named_reasons["socket.unix.external_stream"]["message"].endswith(
        f"held by pid {os.getpid()} outside the tree")
    assert (plain["verdict"], plain["required_options"]) == \
        (named["verdict"], named["required_options"])
