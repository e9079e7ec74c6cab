"""What a test needs of the machine, as markers, and the one place that decides to skip it.

A test that needs something a contributor's machine may lack says so with a marker
(registered in pyproject.toml): `root`, `bpf` (the probes load, as root), `criu` (a
usable CRIU >= 4.2, run as root), `browser` (Chromium for Playwright). This plugin
(loaded by tests/conftest.py) skips exactly those tests whose need is not met here, each
with the reason, and counts them in the terminal summary: a test without a marker runs
whoever runs the suite.

In CI (`CI` set) nothing may be left out: the run must be root (else it exits at once,
status 3), and a run in which any test skipped, for a marker or for a reason of its own
(a device this machine lacks), fails (status 1) with every skipped test listed.
"""
from __future__ import annotations

import os
import shutil
from importlib.util import find_spec
from pathlib import Path

import pytest

from probes.loader import ProbeError, Probes
from tracker.criu.runner import MIN_VERSION, find_criu

# Debian's Chromium, which scripts/setup.sh installs; Playwright drives it.
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")

NEEDS = ("root", "bpf", "criu", "browser")
CI_NOT_ROOT_STATUS = 3


def missing_root() -> str | None:
    """Why tests that need root cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return f"needs root, this run is uid {os.geteuid()}"
    return None


def missing_bpf() -> str | None:
    """Why the probes cannot load here: the check the tracker makes when it starts."""
    if reason := missing_root():
        return reason
    try:
        Probes().close()
    except (ProbeError, OSError) as error:
        return f"the probes cannot load: {error}"
    return None


def missing_criu() -> str | None:
    """Why no test can run the real CRIU here."""
    if reason := missing_root():
        return reason
    criu = find_criu()
    if criu is None:
        return "no CRIU: neither $CRWATCH_CRIU, .deps/bin/criu nor criu on PATH"
    if not criu.supported:
        wanted = ".".join(map(str, MIN_VERSION))
        return f"CRIU {criu.version_text} at {criu.path} is older than {wanted}"
    return None


def missing_browser() -> str | None:
    """Why no test can drive Chromium here."""
    if find_spec("playwright") is None:
        return "no Playwright: pip install playwright"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM}: scripts/setup.sh installs it"
    return None


CHECKS = {"root": missing_root, "bpf": missing_bpf, "criu": missing_criu,
          "browser": missing_browser}


class Skips:
    """The reason each need is unmet (asked once, only for needs a selected test has),
    and every test that skipped: summed up for a contributor, a failure in CI."""

    def __init__(self, ci: bool):
        self.ci = ci
        self._reasons: dict[str, str | None] = {}
        self.skipped: list[tuple[str, str]] = []      # (node id, reason)

    def reason(self, need: str) -> str | None:
        if need not in self._reasons:
            self._reasons[need] = CHECKS[need]()
        return self._reasons[need]

    @pytest.hookimpl(trylast=True)  # after -m and -k deselect: only selected tests' needs
    def pytest_collection_modifyitems(self, items):
        for item in items:
            for need in NEEDS:
                if item.get_closest_marker(need) and (reason := self.reason(need)):
                    item.add_marker(pytest.mark.skip(reason=f"{need}: {reason}"))
                    break

    def pytest_runtest_logreport(self, report):
        if report.skipped and not hasattr(report, "wasxfail"):
            # A skip's longrepr is (file, line, "Skipped: reason").
            reason = report.longrepr[2].removeprefix("Skipped: ")
            self.skipped.append((report.nodeid, reason))

    def pytest_sessionfinish(self, session):
        if self.ci and self.skipped and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if not self.skipped:
            return
        if self.ci:
            terminalreporter.section("skipped in CI, where every test must run", red=True)
            for nodeid, reason in self.skipped:
                terminalreporter.write_line(f"{nodeid}: {reason}")
            return
        counts: dict[str, int] = {}
        for _, reason in self.skipped:
            counts[reason] = counts.get(reason, 0) + 1
        terminalreporter.section("skipped here")
        for reason, count in sorted(counts.items(), key=lambda pair: -pair[1]):
            terminalreporter.write_line(f"{count:5d}  {reason}")


def pytest_configure(config):
    # Every group but the unit tests starts real processes in real states, and CI must
    # prove all of it: a CI run that is not root would prove nothing.
    ci = bool(os.environ.get("CI"))
    if ci and os.geteuid() != 0:
        pytest.exit("CI must run the tests as root", returncode=CI_NOT_ROOT_STATUS)
    config.pluginmanager.register(Skips(ci), "crwatch-test-requirements")
