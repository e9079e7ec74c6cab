"""What the real CRIU says of itself is asked once and then kept: `crwatch env` and
`crwatch check` believe it, with no CRIU run, until something that decided it changes
(the CRIU at its path, or another path), a refresh is asked for, or the kept file is
damaged, which costs a new asking and never a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.subjects import subject
from tracker.criu.facts_cache import CHANGE_MARGIN_NS, REFRESH_VARIABLE, FactsCache
from tracker.criu.runner import find_criu

CRWATCH = Path(sys.executable).with_name("crwatch")


@pytest.fixture
def counted_criu(tmp_path):
    """The real CRIU behind a wrapper of its own path that counts its runs."""
    real = find_criu()
    assert real is not None, "no CRIU: scripts/setup.sh provides one"
    runs = tmp_path / "runs"
    runs.touch()
    wrapper = tmp_path / "criu"
    wrapper.write_text(f'#!/bin/sh\necho run >> {runs}\nexec {real.path} "$@"\n')
    wrapper.chmod(0o755)
    time.sleep(CHANGE_MARGIN_NS / 1e9)     # answers asked right after a change are not kept
    yield wrapper, runs
    for path in (wrapper, tmp_path / "copy"):
        if (entry := FactsCache.default().entry(str(path))) is not None:
            entry.unlink(missing_ok=True)


def crwatch(criu: Path, *args: str, **variables: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name != REFRESH_VARIABLE}
    env.update(CRWATCH_CRIU=str(criu), **variables)
    return subprocess.run([str(CRWATCH), *args], capture_output=True, text=True, timeout=120,
                          env=env)


def criu_facts(criu: Path, *args: str, **variables: str) -> dict:
    """Where `crwatch env` says CRIU's facts came from, then the CRIU part of
    `crwatch env --json` (by then kept, unless a refresh is asked for)."""
    as_text = crwatch(criu, "env", *args, **variables)
    as_json = crwatch(criu, "env", "--json", *args, **variables)
    for result in (as_json, as_text):
        assert result.returncode == 0 and result.stderr == "", result.stderr
    facts = json.loads(as_json.stdout)["criu"]
    said = [line for line in as_text.stdout.splitlines() if line.startswith("criu ")]
    facts["facts_from"] = ("cache" if "kept from an earlier run" in said[0]
                           else "criu" if "asked of CRIU now" in said[0] else said[0])
    return facts


def run_count(runs: Path) -> int:
    return len(runs.read_text().splitlines())


@pytest.mark.root
@pytest.mark.criu
def test_criu_is_asked_once_then_believed_until_it_changes(counted_criu, tmp_path):
    wrapper, runs = counted_criu
    asked = criu_facts(wrapper)
    assert asked["facts_from"] == "criu" and run_count(runs) >= 4
    before = run_count(runs)
    believed = criu_facts(wrapper)
    assert believed["facts_from"] == "cache" and run_count(runs) == before
    assert (believed["version"], believed["features"], believed["libraries"]) == \
        (asked["version"], asked["features"], asked["libraries"])

    info = wrapper.stat()       # the CRIU at this path changes: asked again
    os.utime(wrapper, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
    time.sleep(CHANGE_MARGIN_NS / 1e9)
    assert criu_facts(wrapper)["facts_from"] == "criu" and run_count(runs) > before

    copy = tmp_path / "copy"    # the same CRIU at another path has answers of its own
    copy.write_bytes(wrapper.read_bytes())
    copy.chmod(0o755)
    time.sleep(CHANGE_MARGIN_NS / 1e9)
    assert criu_facts(copy)["facts_from"] == "criu"
    assert criu_facts(copy)["facts_from"] == "cache"


@pytest.mark.root
@pytest.mark.criu
def test_a_refresh_asks_criu_again(counted_criu):
    wrapper, runs = counted_criu
    criu_facts(wrapper)
    assert criu_facts(wrapper)["facts_from"] == "cache"
    before = run_count(runs)
    assert criu_facts(wrapper, "--refresh")["facts_from"] == "criu"
    assert criu_facts(wrapper, **{REFRESH_VARIABLE: "1"})["facts_from"] == "criu"
    assert run_count(runs) > before


@pytest.mark.root
@pytest.mark.criu
def test_a_damaged_file_is_asked_again_without_a_traceback(counted_criu):
    wrapper, _ = counted_criu
    criu_facts(wrapper)
    entry = FactsCache.default().entry(str(wrapper))
    entry.write_text('{"schema": "crwatch.criu-facts/1", "facts": [')
    assert criu_facts(wrapper)["facts_from"] == "criu"     # no stderr, no traceback
    assert criu_facts(wrapper)["facts_from"] == "cache"


@pytest.mark.root
@pytest.mark.criu
def test_check_judges_alike_with_kept_and_asked_facts(counted_criu):
    wrapper, runs = counted_criu
    tcp_pair = """
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
client = socket.create_connection(server.getsockname()); peer, _ = server.accept()
ready(); hold()
"""
    with subject(tcp_pair) as tcp:
        asked = crwatch(wrapper, "check", "--json", str(tcp.pid), **{REFRESH_VARIABLE: "1"})
        before = run_count(runs)
        believed = crwatch(wrapper, "check", "--json", str(tcp.pid))
    assert run_count(runs) == before        # the kept facts: no CRIU run at all
    assert asked.returncode == believed.returncode == 1
    documents = [json.loads(result.stdout) for result in (asked, believed)]
    for document in documents:
        del document["checked_at"], document["environment"]["detected_in_seconds"]
    assert documents[0] == documents[1]
