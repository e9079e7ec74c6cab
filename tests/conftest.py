"""Session-wide set-up: root is required, and the CRIU agreement table starts empty."""
from __future__ import annotations

import os

import pytest

from tests.agreement import TABLE

pytest_plugins = ["pytester"]  # the crwatch pytest plugin is tested in pytest runs of its own


def pytest_configure(config):
    # Every test starts real processes in real states and most run the real CRIU:
    # without root neither /proc nor CRIU tell the whole truth.
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.exit("CI must run the tests as root", returncode=3)
        config.issue_config_time_warning(pytest.PytestWarning("not root: tests will be skipped"), 2)
    TABLE.unlink(missing_ok=True)


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root: tests audit other processes and run CRIU")
        for item in items:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if TABLE.exists():
        rows = TABLE.read_text().count("\n")
        terminalreporter.write_line(f"CRIU agreement: {rows} states compared, table in {TABLE}")
