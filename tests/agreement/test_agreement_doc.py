"""docs/criu-agreement.md is the table a whole agreement run wrote (tests/conftest.py): its
header says which CRIU, kernel and date, its counts match its rows, its rows are sorted by
state, and each names an agreement test that exists."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support.agreement import COLUMNS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "criu-agreement.md"
VERDICTS = ("ok", "needs_options", "blocked")


def cells(line: str) -> list[str]:
    """A markdown table row's cells; `\\|` is a | inside a cell."""
    assert line.startswith("| ") and line.endswith(" |"), line
    return [cell.replace("\\|", "|") for cell in re.split(r" (?<!\\)\| ", line[2:-2])]


def header_value(text: str, name: str) -> str:
    found = re.search(rf"^- {name}: (.+)$", text, re.MULTILINE)
    assert found, f"the header has no {name}"
    return found[1]


def rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert cells(lines[0]) == list(COLUMNS), lines[0]
    assert lines[1] == "|" + "---|" * len(COLUMNS)
    table = [cells(line) for line in lines[2:]]
    assert all(len(row) == len(COLUMNS) for row in table), [r for r in table if len(r) != len(COLUMNS)]
    return [dict(zip(COLUMNS, row)) for row in table]


def defined_tests(path: Path) -> set[str]:
    return {node.name for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_the_doc_has_its_header_and_counts_that_match_its_rows():
    text = DOC.read_text()
    table = rows(text)
    assert re.fullmatch(r"\d+\.\d+\.\d+", header_value(text, "CRIU"))
    assert header_value(text, "kernel")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", header_value(text, "date"))
    verdicts = [row["crwatch verdict"] for row in table]
    assert set(verdicts) <= set(VERDICTS)
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in VERDICTS)
    assert header_value(text, "states") == f"{len(table)} ({counts})"
    retries = int(header_value(text, "retries"))
    assert retries >= sum(int(row["retries"]) for row in table)  # gate tests retry too


def test_the_rows_are_sorted_by_state_and_say_what_criu_did():
    table = rows(DOC.read_text())
    assert table, "an empty table"
    assert [(r["state"], r["test"]) for r in table] == sorted((r["state"], r["test"]) for r in table)
    for row in table:
        if row["crwatch verdict"] == "ok":
            assert row["CRIU plain"] == "dumped" and not row["options"], row
        else:
            assert row["CRIU plain"] == "fails", row
        if row["crwatch verdict"] == "needs_options":
            assert row["CRIU with options"].startswith("dumped with --"), row
            dropped = row["drop-one results"].split("; ")
            assert [d.split(":")[0] for d in dropped] == [
                f"without {option}" for option in row["options"].split()], row
            # Fails, or harms the tree (a lease broken), as the test it names shows.
            assert all(d.endswith(": fails") or ": harms the tree (test_" in d
                       for d in dropped), row
        if row["crwatch verdict"] == "blocked" and row["CRIU with options"]:
            assert row["CRIU with options"].startswith("fails with --"), row


def test_each_row_names_an_agreement_test_that_exists():
    for row in rows(DOC.read_text()):
        path, _, name = row["test"].partition("::")
        assert re.fullmatch(r"tests/agreement/test_\w+\.py", path), row["test"]
        assert (ROOT / path).exists(), row["test"]
        assert name.split("[", 1)[0] in defined_tests(ROOT / path), row["test"]
