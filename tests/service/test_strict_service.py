"""The strict profile in the service and its gate, with the real probes.

A PI futex held and a remap_file_pages() mapping leave nothing a /proc audit
can see; only the probes saw them begin. CRIU dumps both (the `criu` profile
says ok, and the real CRIU proves it through the gate); the `strict` profile
refuses both. The service is started for `strict` (`serve --profile strict`),
so that is what it judges unless asked for `criu`.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from api.service.models import Gate, Verdict
from tests.support.memory import REMAPPED_PAGES
from tests.support.servers import EventStream, Server
from tests.support.stepped import stepped
from tests.support.subjects import skip_if_refused

pytestmark = [pytest.mark.bpf, pytest.mark.criu]

NATIVE = Path(__file__).resolve().parents[1] / "support" / "native"
TOKEN = "s3cret"
# A shared file mapping whose first page is remapped nonlinearly, held until killed.
REMAPPED = REMAPPED_PAGES + "hold()\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    running = Server("--profile", "strict", "--token", TOKEN,
                     "--db", str(tmp_path_factory.mktemp("strict") / "history.sqlite3"),
                     "--dump-root", str(tmp_path_factory.getbasetemp()))  # tests' images
    try:
        yield running
    finally:
        assert "Traceback" not in running.stop()


@pytest.fixture(scope="module")
def pi_futex(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("native") / "pi_futex"
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(binary), str(NATIVE / "pi_futex.c")],
                   check=True)
    return binary


@pytest.fixture
def pi_holder(server, pi_futex) -> Iterator[int]:
    """A process whose thread holds a PI futex, once the service has seen it take it."""
    stream = EventStream(server)
    try:
        assert stream.next()["kind"] == "ready"
        with stepped(f"os.execv({str(pi_futex)!r}, [{str(pi_futex)!r}, 'hold'])") as s:
            entered = stream.await_transition(s.pid, "nocr", "task.pi_futex")
            assert entered["profiles"] == {"criu": "cr", "strict": "nocr"}
            yield s.pid
    finally:
        stream.close()


@pytest.fixture
def remapped(server, tmp_path) -> Iterator[int]:
    """A process with a nonlinear mapping, once the service has seen remap_file_pages()."""
    stream = EventStream(server)
    try:
        assert stream.next()["kind"] == "ready"
        with stepped(REMAPPED.format(path=str(tmp_path / "pages"))) as s:
            skip_if_refused(s.running, "remap_file_pages")
            entered = stream.await_transition(s.pid, "nocr", "memory.nonlinear")
            assert entered["profiles"] == {"criu": "cr", "strict": "nocr"}
            yield s.pid
    finally:
        stream.close()


def _probe_reason(document: dict, code: str) -> dict:
    (found,) = [reason for reason in document["reasons"] if reason["code"] == code]
    return found


@pytest.mark.parametrize("state, code", [("pi_holder", "task.pi_futex"),
                                         ("remapped", "memory.nonlinear")])
def test_probe_found_reasons_count_in_the_verdict_of_the_profile_asked_for(server, request,
                                                                            state, code):
    pid = request.getfixturevalue(state)
    strict = server.ok(f"/processes/{pid}/checkpointable")  # the service's profile: strict
    Verdict.model_validate(strict)
    assert (strict["profile"], strict["verdict"], strict["checkpointable"]) == (
        "strict", "blocked", False)
    reason = _probe_reason(strict, code)
    assert (reason["source"], reason["severity"], reason["pid"]) == ("probe", "blocker", pid)
    assert reason["since"].endswith("Z")
    assert strict["tracked"]["state"] == "nocr"

    criu = server.ok(f"/processes/{pid}/checkpointable?profile=criu")
    assert (criu["profile"], criu["verdict"], criu["checkpointable"]) == ("criu", "ok", True)
    assert _probe_reason(criu, code)["severity"] == "info"
    assert criu["tracked"]["state"] == "cr"

    own = server.ok(f"/processes/{pid}?tree=false")
    assert own["verdict"] == "blocked" and _probe_reason(own, code)["source"] == "probe"


@pytest.mark.parametrize("state, code", [("pi_holder", "task.pi_futex"),
                                         ("remapped", "memory.nonlinear")])
def test_the_strict_gate_refuses_what_criu_dumps(server, request, tmp_path, state, code):
    pid = request.getfixturevalue(state)
    status, refused = server.post(f"/processes/{pid}/gate",
                                  {"dump": {"directory": str(tmp_path / "refused")}}, token=TOKEN)
    assert status == 200, refused
    Gate.model_validate(refused)
    assert refused["outcome"] == "refused" and refused["verdict"]["profile"] == "strict"
    assert _probe_reason(refused["verdict"], code)["source"] == "probe"
    assert refused["dump"]["ran"] is False

    # Under `criu` the same state passes, and the real CRIU dumps it.
    status, dumped = server.post(f"/processes/{pid}/gate",
                                 {"profile": "criu", "dump": {"directory": str(tmp_path / "ok")}},
                                 token=TOKEN)
    assert status == 200 and dumped["outcome"] == "dumped", dumped
    assert dumped["verdict"]["verdict"] == "ok"
    assert _probe_reason(dumped["verdict"], code)["severity"] == "info"


def test_rows_judge_probe_found_reasons_per_profile(server, pi_holder):
    deadline = time.monotonic() + 10
    while True:  # the list is refreshed every second
        strict = {row["pid"]: row for row in server.ok("/processes?limit=1000")["processes"]}
        row = strict.get(pi_holder)
        if row is not None and row["verdict"] == "blocked":
            break
        assert time.monotonic() < deadline, f"the row never counted the PI futex: {row}"
        time.sleep(0.05)
    assert "task.pi_futex" in row["codes"] and row["tracked"] == "nocr"
    criu = {row["pid"]: row for row in server.ok("/processes?limit=1000&profile=criu")["processes"]}
    assert (criu[pi_holder]["verdict"], criu[pi_holder]["tracked"]) == ("ok", "cr")
