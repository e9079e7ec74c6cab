"""The gate's own rules in real states: a task the gate cannot freeze (gate.freeze_incomplete,
tracker/checks/gate.py) is one CRIU cannot seize either (compel's seize: PTRACE_SEIZE fails
with EPERM on a task another process traces)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.gates import gate
from tests.support.subjects import subject
from tests.support.tasks import SEIZE
from tracker.criu.options import arguments_for
from tracker.criu.runner import find_criu
from tracker.rules import INFO

pytestmark = [pytest.mark.criu]


def test_a_task_traced_from_outside_cannot_be_frozen_and_criu_refuses_it_too(tmp_path: Path):
    with subject("ready(); hold()") as target:
        with subject(SEIZE + f"seize({target.pid})\nready()\nhold()") as tracer:
            status, document = gate(str(target.pid), "--dump", str(tmp_path / "images"))
            assert status == 1 and document["outcome"] == "refused", document
            assert not document["dump"]["ran"]
            reasons = document["verdict"]["reasons"]
            assert {r["code"] for r in reasons if r["severity"] != INFO} == {
                "gate.freeze_incomplete", "task.traced"}, reasons
            unfrozen = [r for r in reasons if r["code"] == "gate.freeze_incomplete"]
            assert [r["message"] for r in unfrozen] == [
                f"task {target.pid} could not be frozen: already traced by pid {tracer.pid}"]
            assert document["freeze"]["unfrozen"] == [
                {"tid": target.pid, "why": f"already traced by pid {tracer.pid}"}]
            trial = find_criu().dump(target.pid, arguments_for(reasons))
            assert not trial.ok and "Unable to interrupt task" in trial.log, trial.errors
