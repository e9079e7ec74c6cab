"""The markers and the requirements plugin (tests/support/requirements.py), in pytest runs of
their own: a test skips only for an unmet need its markers name, with that need's reason;
in CI a skipped test fails the run, and a CI run that is not root stops at once."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from tests.support.requirements import CI_NOT_ROOT_STATUS, NEEDS

REPO = Path(__file__).resolve().parents[2]
PLUGIN = ("-p", "tests.support.requirements", "-p", "no:cacheprovider")
NO_CRIU = "/nonexistent/criu"   # $CRWATCH_CRIU names the only CRIU to use: here none

SESSION = '''
import pytest

def test_plain():
    pass

@pytest.mark.criu
def test_needs_criu():
    pass

def test_skips_for_a_reason_of_its_own():
    pytest.skip("no /dev/loop0 on this machine")
'''


@pytest.fixture(autouse=True)
def plugin_importable(monkeypatch):
    """The pytest runs of these tests start in a scratch directory: the plugin they load
    (tests.support.requirements) is found through the repository on PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def pytest_ini_options() -> str:
    """The repository's [tool.pytest.ini_options], as a pyproject.toml of its own."""
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    lines = ["[tool.pytest.ini_options]"]
    for key, value in options.items():
        items = ", ".join(repr(item) for item in value) if isinstance(value, list) else None
        lines.append(f"{key} = [{items}]" if items is not None else f"{key} = {value!r}")
    return "\n".join(lines) + "\n"


def test_the_four_markers_are_registered_and_a_misspelt_one_is_an_error(pytester):
    pytester.makepyprojecttoml(pytest_ini_options())
    marked = "\n".join(f"@pytest.mark.{need}\ndef test_{need}():\n    pass\n" for need in NEEDS)
    misspelt = "import pytest\n\n@pytest.mark.rooot\ndef test_x():\n    pass\n"
    pytester.makepyfile(test_marked="import pytest\n\n" + marked, test_misspelt=misspelt)
    registered = pytester.runpytest("--collect-only", "-q", "test_marked.py")
    assert registered.ret == pytest.ExitCode.OK
    registered.stdout.fnmatch_lines([f"*test_marked.py::test_{need}" for need in NEEDS])
    refused = pytester.runpytest("--collect-only", "-q", "test_misspelt.py")
    assert refused.ret == pytest.ExitCode.INTERRUPTED
    refused.stdout.fnmatch_lines(["*'rooot' not found in `markers` configuration option*"])


def test_only_a_test_marked_with_an_unmet_need_skips_and_the_reason_is_printed(pytester,
                                                                              monkeypatch):
    monkeypatch.setenv("CRWATCH_CRIU", NO_CRIU)
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_session=SESSION)
    result = pytester.runpytest_subprocess(*PLUGIN)
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.OK
    why = "needs root" if os.geteuid() != 0 else "no CRIU"
    result.stdout.fnmatch_lines(["*= skipped here =*", f"*1  criu: {why}*",
                                 "*1  no /dev/loop0 on this machine"])


@pytest.mark.root
def test_in_ci_a_skipped_test_fails_the_run_and_is_listed(pytester, monkeypatch):
    monkeypatch.setenv("CRWATCH_CRIU", NO_CRIU)
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(test_session=SESSION)
    result = pytester.runpytest_subprocess(*PLUGIN)
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*= skipped in CI, where every test must run =*",
        "test_session.py::test_needs_criu: criu: no CRIU*",
        "test_session.py::test_skips_for_a_reason_of_its_own: no /dev/loop0 on this machine"])


@pytest.mark.root
def test_in_ci_a_run_passing_whole_passes(pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(test_session="import pytest\n\n@pytest.mark.root\ndef test_x():\n"
                                     "    pass\n")
    result = pytester.runpytest_subprocess(*PLUGIN)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK


@pytest.mark.root
def test_as_another_user_root_tests_skip_and_in_ci_the_run_stops_at_once():
    # A session directory uid 65534 may read; the repository it imports from is one
    # already (crwatch run and the gate's tests start its console script as that uid).
    session = Path(tempfile.mkdtemp(prefix="crwatch-markers-"))
    try:
        session.chmod(0o755)
        (session / "test_session.py").write_text(
            "import pytest\n\n@pytest.mark.root\ndef test_as_root():\n    pass\n\n"
            "def test_as_anyone():\n    pass\n")

        def pytest_as_nobody(ci: bool) -> subprocess.CompletedProcess:
            env = {key: value for key, value in os.environ.items() if key != "CI"}
            env.update(HOME=str(session), PYTHONPATH=str(REPO), **({"CI": "true"} if ci else {}))
            return subprocess.run([sys.executable, "-m", "pytest", *PLUGIN, str(session)],
                                  cwd=session, user=65534, group=65534, extra_groups=[],
                                  env=env, capture_output=True, text=True, timeout=120)

        outside_ci = pytest_as_nobody(ci=False)
        assert outside_ci.returncode == pytest.ExitCode.OK, outside_ci.stdout + outside_ci.stderr
        assert "1 passed, 1 skipped" in outside_ci.stdout
        assert "1  root: needs root, this run is uid 65534" in outside_ci.stdout
        in_ci = pytest_as_nobody(ci=True)
        assert in_ci.returncode == CI_NOT_ROOT_STATUS, in_ci.stdout + in_ci.stderr
        assert "CI must run the tests as root" in in_ci.stdout + in_ci.stderr
    finally:
        shutil.rmtree(session)
