"""tracker.criu without running CRIU: where the private CRIU is looked for, and CRIU's
option syntax (tracker/criu/options.py)."""
from __future__ import annotations

import pytest

from tracker.criu import options, runner


def test_the_private_criu_is_looked_for_at_the_repository_root():
    # scripts/setup.sh installs it as .deps/bin/criu beside pyproject.toml.
    assert (runner._REPO_ROOT / "pyproject.toml").is_file()


@pytest.mark.parametrize("text, size", [
    ("4096", 4096), ("1k", 1 << 10), ("12M", 12 << 20), (" 2G ", 2 << 30),
])
def test_sizes_are_read_as_criu_reads_them(text: str, size: int):
    assert options.parse_size(text) == size


@pytest.mark.parametrize("size", [1, 4096, (1 << 20) + 1, 5 << 20, 3 << 29, (7 << 30) + 1])
def test_the_ghost_limit_given_lets_the_ghost_pass_and_reads_back(size: int):
    assert options.parse_size(options.ghost_limit_value(size)) >= size


def test_only_the_options_named_are_read_from_criu_s_command_line():
    argv = ["criu", "dump", "--ghost-limit", "8M", "--leave-running", "-j", "--external",
            "unix[7]"]
    assert options.given_options(argv, {"--leave-running", "--shell-job"}) == [
        "--leave-running", "--shell-job"]
    assert options.given_options(argv, {"--external", "--ghost-limit"}) == [
        "--ghost-limit=8M", "--external=unix[7]"]
