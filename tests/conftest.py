"""Session-wide set-up: tests skip only for a need their markers name and this machine
lacks (tests/support/requirements.py), the CRIU agreement table starts empty, and at
the end the table is written: docs/criu-agreement.md when the run compared every
agreement state (every test of every tests/agreement/test_agree_*.py ran, none failed), else
build/criu-agreement.md, so that a partial run never truncates the document."""
from __future__ import annotations

import ast
import os
import time
from pathlib import Path

import pytest

from tests.support.agreement import RETRIES, TABLE, read_table, render
from tracker.criu.runner import find_criu

# pytester: the crwatch pytest plugin and the requirements plugin are tested in pytest
# runs of their own.
pytest_plugins = ["pytester", "tests.support.requirements"]

TESTS = Path(__file__).resolve().parent
DOC = TESTS.parent / "docs" / "criu-agreement.md"
PARTIAL_DOC = TABLE.parent / "criu-agreement.md"


class AgreementRun:
    """Which agreement tests ran and how, to tell a whole run from a partial one."""

    def __init__(self):
        self.ran: set[tuple[str, str]] = set()     # (file name, test function)
        self.failed: list[str] = []
        self.deselected = False

    def whole(self) -> bool:
        return not self.failed and not self.deselected and defined_agreement_tests() <= self.ran


RUN = AgreementRun()


def defined_agreement_tests() -> set[tuple[str, str]]:
    """Every test function of every tests/agreement/test_agree_*.py, read from the source."""
    return {(path.name, node.name)
            for path in sorted((TESTS / "agreement").glob("test_agree_*.py"))
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def _agreement_test(nodeid: str) -> tuple[str, str] | None:
    path, _, name = nodeid.partition("::")
    file_name = Path(path).name
    if not (file_name.startswith("test_agree_") and file_name.endswith(".py")):
        return None
    return file_name, name.split("[", 1)[0]


def pytest_configure(config):
    TABLE.unlink(missing_ok=True)
    PARTIAL_DOC.unlink(missing_ok=True)  # a table of an earlier partial run is not this run's


def pytest_deselected(items):
    if any(_agreement_test(item.nodeid) for item in items):
        RUN.deselected = True


def pytest_runtest_logreport(report):
    test = _agreement_test(report.nodeid)
    if test is None:
        return
    if report.failed:
        RUN.failed.append(report.nodeid)
    elif report.when == "call" or report.skipped:
        RUN.ran.add(test)


def pytest_sessionfinish(session):
    rows = read_table()
    if not rows:
        return
    criu = find_criu()
    text = render(rows, criu_version=criu.version_text if criu else "none",
                  kernel=os.uname().release, date=time.strftime("%Y-%m-%d", time.gmtime()),
                  retries=RETRIES.made)
    target = DOC if RUN.whole() else PARTIAL_DOC
    target.parent.mkdir(exist_ok=True)
    target.write_text(text)
    session.config.stash[_WRITTEN] = target


_WRITTEN = pytest.StashKey[Path]()


def pytest_terminal_summary(terminalreporter, config):
    rows = read_table()
    if rows:
        written = config.stash.get(_WRITTEN, None)
        terminalreporter.write_line(
            f"CRIU agreement: {len(rows)} states compared, table in {TABLE}"
            + (f" and {written}" if written else ""))
    if RETRIES.made:
        terminalreporter.write_line(
            f"CRIU's own trouble under load: {len(RETRIES.made)} failed dump(s) retried")
        for retry in RETRIES.made:
            terminalreporter.write_line(f"  {retry.where}: {'; '.join(retry.errors)}")
