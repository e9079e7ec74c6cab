"""Every rule in the catalogue has a test that creates its state, or is listed as one only
a fixture test can cover (tests/support/fixture_only_rules.py, with the reason, and in the README).

A test "names" a code when the code is a string literal in a test module that is not a
unit test (`*_unit.py` tests run on fixtures): in a test function, its decorators, or the
module-level state tables the tests are parametrized with. The few tests that name codes
without creating their states are listed in NAMES_WITHOUT_STATE.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support.fixture_only_rules import FIXTURE_ONLY
from tracker.checks.catalogue import catalogue

TESTS = Path(__file__).resolve().parents[1]
README = TESTS.parent / "README.md"
README_SECTION = "### Rules only fixture tests cover"
# (test module, function): names codes without putting a process in their states
NAMES_WITHOUT_STATE = {
    ("test_cli.py", "test_rules_lists_the_catalogue_the_reasons_come_from"),
    ("test_differential.py", "audited_reasons"),   # tolerates audit.exited, never causes it
}


def strings_in(node: ast.AST) -> set[str]:
    return {child.value for child in ast.walk(node)
            if isinstance(child, ast.Constant) and isinstance(child.value, str)}


def named_codes(paths: list[Path]) -> dict[str, set[str]]:
    """code -> the test modules that name it, outside NAMES_WITHOUT_STATE."""
    codes = {rule.code for rule in catalogue()}
    named: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.parse(path.read_text()).body:
            if (path.name, getattr(node, "name", None)) in NAMES_WITHOUT_STATE:
                continue
            for code in strings_in(node) & codes:
                named.setdefault(code, set()).add(path.name)
    return named


def state_tests() -> list[Path]:
    return [path for path in sorted(TESTS.rglob("test_*.py"))
            if not path.name.endswith("_unit.py") and path.name != Path(__file__).name]


def unit_tests() -> list[Path]:
    return sorted(TESTS.rglob("test_*_unit.py"))


def readme_fixture_rules() -> dict[str, str]:
    """code -> reason, from the README section's `- `code`: reason` lines."""
    text = README.read_text()
    assert README_SECTION in text, f"the README has no section {README_SECTION!r}"
    section = text.split(README_SECTION, 1)[1].split("\n#", 1)[0]
    return dict(re.findall(r"^- `([a-z0-9_.]+)`: (.+)$", section, re.MULTILINE))


def test_every_rule_has_a_test_that_creates_its_state_or_is_fixture_only():
    codes = {rule.code for rule in catalogue()}
    uncovered = codes - set(named_codes(state_tests())) - set(FIXTURE_ONLY)
    assert not uncovered, (f"rules no test puts a process into (write one, or list the rule "
                           f"in tests/support/fixture_only_rules.py with the reason): {sorted(uncovered)}")


def test_fixture_only_rules_exist_have_fixture_tests_and_no_real_test():
    codes = {rule.code for rule in catalogue()}
    assert not set(FIXTURE_ONLY) - codes, f"not in the catalogue: {set(FIXTURE_ONLY) - codes}"
    real = named_codes(state_tests())
    stale = {code: sorted(real[code]) for code in FIXTURE_ONLY if code in real}
    assert not stale, f"these have real tests now: drop them from FIXTURE_ONLY: {stale}"
    fixtures = named_codes(unit_tests())
    untested = sorted(set(FIXTURE_ONLY) - set(fixtures))
    assert not untested, f"fixture-only rules without a fixture test: {untested}"
    assert all(reason.strip() for reason in FIXTURE_ONLY.values())


def test_the_readme_lists_the_fixture_only_rules_with_their_reasons():
    listed = readme_fixture_rules()
    assert listed == FIXTURE_ONLY, (set(listed) ^ set(FIXTURE_ONLY),
                                    {c for c in listed if listed[c] != FIXTURE_ONLY.get(c)})


def test_the_scan_sees_codes_in_parametrized_state_tables_and_ignores_listings(tmp_path: Path):
    module = tmp_path / "test_cli.py"
    module.write_text('STATES = [("a lock", "lock.posix")]\n'
                      'def test_rules_lists_the_catalogue_the_reasons_come_from():\n'
                      '    assert "task.zombie" in listing()\n'
                      'def test_other():\n'
                      '    assert "no.such.code" and "memory.device"\n')
    assert named_codes([module]) == {"lock.posix": {"test_cli.py"},
                                     "memory.device": {"test_cli.py"}}
