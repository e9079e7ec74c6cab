"""The agreement harness's own logic on fixtures: which failed dumps it retries, how the
table is written, and when a run counts as whole (a partial run must not rewrite the doc)."""
from __future__ import annotations

from tests import conftest
from tests.support.agreement import COLUMNS, Retries, Retry, render
from tracker.criu.runner import DumpResult

TRANSIENT = "(00.5) Error (compel/src/lib/infect.c:1): Unable to detach from PID 42"
REFUSAL = "(00.1) Error (criu/files-ext.c:96): Can't dump file 3 of that type [0x2000] (chr 10:232)"


class ScriptedCriu:
    """Answers dumps with the results given, in order, and keeps the options asked for."""

    def __init__(self, *results: DumpResult):
        self.results = list(results)
        self.asked: list[list[str]] = []

    def dump(self, pid: int, options: list[str]) -> DumpResult:
        self.asked.append(list(options))
        return self.results.pop(0)


def failed(*errors: str) -> DumpResult:
    return DumpResult(False, 1, list(errors), "\n".join(errors))


DUMPED = DumpResult(True, 0, [], "")


def test_only_criu_s_own_trouble_is_retried_once_and_counted():
    retries = Retries()
    assert retries.dump(ScriptedCriu(failed(TRANSIENT), DUMPED), 42, ["--shell-job"], "a").ok
    assert retries.made == [Retry("a", [TRANSIENT])]

    refused = ScriptedCriu(failed(REFUSAL), DUMPED)
    assert not retries.dump(refused, 42, [], "b").ok      # a refusal stands: no second try
    assert len(refused.asked) == 1 and len(retries.made) == 1

    twice = ScriptedCriu(failed(TRANSIENT), failed(TRANSIENT), DUMPED)
    assert not retries.dump(twice, 42, [], "c").ok        # once only
    assert len(twice.asked) == 2 and [r.where for r in retries.made] == ["a", "c"]

    mixed = ScriptedCriu(failed(TRANSIENT, REFUSAL), DUMPED)
    assert not retries.dump(mixed, 42, [], "d").ok        # a real cause among them: no retry
    assert len(retries.made) == 2


def row(state: str, verdict: str = "ok", **cells: str) -> dict[str, str]:
    values = dict.fromkeys(COLUMNS, "")
    values.update({"state": state, "test": "tests/test_agree_x.py::test_y",
                   "crwatch verdict": verdict, "retries": "0"}, **cells)
    return values


def test_the_table_is_sorted_by_state_counts_its_verdicts_and_escapes_bars():
    text = render([row("b", "blocked"), row("a | c"), row("a", "needs_options")],
                  criu_version="4.2.1", kernel="6.18", date="2026-12-07",
                  retries=[Retry("a: plain dump", [TRANSIENT])])
    lines = text.splitlines()
    assert "- states: 3 (1 ok, 1 needs_options, 1 blocked)" in lines
    assert "- retries: 1" in lines
    table = [line for line in lines if line.startswith("| ")][1:]
    assert [line.split(" | ")[0] for line in table] == ["| a", "| a \\| c", "| b"]


def test_a_run_is_whole_only_when_every_agreement_test_ran_and_none_failed():
    every = conftest.defined_agreement_tests()
    assert ("test_agree_options.py", "test_a_state_needing_several_options_fails_without_any_one_"
            "of_them") in every
    assert conftest._agreement_test("tests/agreement/test_agree_files.py::test_x[5 MiB]") == (
        "test_agree_files.py", "test_x")
    assert conftest._agreement_test("tests/gate/test_gate.py::test_x") is None

    run = conftest.AgreementRun()
    run.ran = set(every)
    assert run.whole()
    run.ran.discard(sorted(every)[0])
    assert not run.whole()                      # one test left out
    run.ran = set(every)
    run.deselected = True
    assert not run.whole()                      # -k or --deselect dropped some
    run.deselected, run.failed = False, ["tests/agreement/test_agree_files.py::test_x"]
    assert not run.whole()
