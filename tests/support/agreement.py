"""Proving the `criu` profile against the real CRIU.

`assert_agrees(pid, ...)` audits a live process and dumps it with the real
CRIU (`--leave-running`, into a scratch directory), then checks that both
say the same:
- ok: CRIU dumps it plainly;
- needs_options: CRIU refuses it plainly, dumps it with exactly the options
  (and values) crwatch names, and refuses it again when any one of them is
  left out (a left-out --ghost-limit means CRIU's default);
- blocked: CRIU refuses it even with every option the reasons name, with
  their values.
The blocker and option codes crwatch finds must be exactly the expected ones:
an unexpected code is a failure, not a bonus.

A failed dump is tried once more only when CRIU's log says it was CRIU's own
trouble under load (tracker.criu.log.transient); each such retry is counted
for the session and reported. Any other failure stands: after a clean audit it
is a rule the catalogue lacks.

Each comparison is appended to build/agreement.tsv; at the end of the session
tests/conftest.py writes the table docs/criu-agreement.md from it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tracker import verdict
from tracker.audit import audit
from tracker.criu.log import transient
from tracker.criu.options import arguments_for
from tracker.criu.runner import Criu, DumpResult, find_criu
from tracker.environment import IPTABLES_CONNECTION_TOOLS, current
from tracker.profiles import profile
from tracker.rules import INFO

TABLE = Path(__file__).resolve().parents[2] / "build" / "agreement.tsv"
COLUMNS = ("state", "test", "crwatch verdict", "options", "codes", "CRIU plain",
           "CRIU with options", "drop-one results", "retries")


def network_lock_options() -> list[str]:
    """What a dump that locks TCP connections needs besides --tcp-established in this
    environment: nothing where iptables is on PATH, else `--network-lock nftables`."""
    method = current().network_lock(IPTABLES_CONNECTION_TOOLS)
    return [] if method == "iptables" else ["--network-lock", method]


def connection_lock_codes() -> set[str]:
    """The codes a tree with TCP connections gets besides its sockets' own in this environment:
    the lock reason where iptables is not on PATH."""
    return {"namespace.net_lock"} if network_lock_options() else set()


def namespace_lock_codes() -> set[str]:
    """The same for a tree in a network namespace of its own, which CRIU locks as a whole
    (with iptables-restore by default)."""
    locked_plainly = current().network_lock(current().namespace_tools) == "iptables"
    return set() if locked_plainly else {"namespace.net_lock"}


def network_lock_allowed() -> list[str]:
    """The same as `crwatch check` arguments: [] or ["--allow=--network-lock=nftables"]."""
    options = network_lock_options()
    return [f"--allow={options[0]}={options[1]}"] if options else []


@dataclass
class Retry:
    """One failed dump tried again because CRIU's log blamed CRIU's own trouble."""

    where: str
    errors: list[str]


@dataclass
class Retries:
    """The session's retries (the summary and the table report them)."""

    made: list[Retry] = field(default_factory=list)

    def dump(self, criu: Criu, pid: int, options: list[str], where: str) -> DumpResult:
        """Dump, and dump once more only when the failure is CRIU's own trouble."""
        result = criu.dump(pid, options)
        if result.ok or not transient(result.errors):
            return result
        self.count(where, result.errors)
        return criu.dump(pid, options)

    def count(self, where: str, errors: list[str]) -> None:
        self.made.append(Retry(where, errors))


RETRIES = Retries()


def assert_agrees(pid: int, state: str, *, expect: str, codes: set[str] = frozenset(),
                  may_also: set[str] = frozenset(), tree: bool = False,
                  criu_error: str | None = None,
                  needed_for_effect: dict[str, str] | None = None) -> dict:
    """Audit pid, dump it with the real CRIU, and assert both agree.

    `expect` is the verdict this state must get and `codes` the rule codes
    its reasons must carry; the blocker and option codes found must be
    exactly these, plus at most `may_also` (codes the state may legitimately
    add, e.g. a second resource of the same kind). `criu_error` is a fragment
    CRIU's log must contain when it refuses the state. `needed_for_effect`
    names options without which CRIU dumps, but harms the tree (e.g. breaks a
    lease whose break signal kills its holder), each with the test that shows
    that harm: the drop-one check cannot see it in CRIU's exit status.
    """
    assert expect in ("ok", "needs_options", "blocked"), f"{state}: no dump can prove {expect!r}"
    criu = find_criu()
    assert criu is not None, "no CRIU: scripts/setup.sh provides one"
    document = verdict.document(audit(pid, tree=tree), profile("criu", criu.version))
    found = {r["code"] for r in document["reasons"]}
    judged = {r["code"] for r in document["reasons"] if r["severity"] != INFO}
    assert document["verdict"] == expect, (state, document["reasons"])
    assert codes <= found, (state, "missing", codes - found, document["reasons"])
    unexpected = judged - codes - may_also
    assert not unexpected, (state, "unexpected", unexpected, document["reasons"])

    row = _Row(state, document)
    retries_before = len(RETRIES.made)
    try:
        _compare(criu, pid, state, expect, criu_error, document, row, needed_for_effect or {})
    finally:
        row.retries = len(RETRIES.made) - retries_before
        row.write()
    return document


def _compare(criu: Criu, pid: int, state: str, expect: str, criu_error: str | None,
             document: dict, row: "_Row", needed_for_effect: dict[str, str]) -> None:
    plain = RETRIES.dump(criu, pid, [], f"{state}: plain dump")
    row.plain = _outcome(plain)
    if expect == "ok":
        assert plain.ok, (state, plain.errors)
        return
    assert not plain.ok, f"{state}: CRIU dumped it plainly, crwatch said {expect}"
    _assert_refused(plain, state, "plainly")
    if criu_error:
        assert criu_error in plain.log, (state, criu_error, plain.errors)
    reasons = document["reasons"]
    arguments = arguments_for(reasons)
    if expect == "blocked":
        if arguments:
            named = RETRIES.dump(criu, pid, arguments, f"{state}: {' '.join(arguments)}")
            row.with_options = f"{_outcome(named)} with {' '.join(arguments)}"
            assert not named.ok, f"{state}: CRIU dumped it with {arguments}, crwatch said blocked"
            _assert_refused(named, state, f"with {' '.join(arguments)}")
        return
    every = RETRIES.dump(criu, pid, arguments, f"{state}: {' '.join(arguments)}")
    row.with_options = f"{_outcome(every)} with {' '.join(arguments)}"
    assert every.ok, (state, arguments, every.errors)
    for option in sorted({r["option"] for r in reasons if r["option"]}):
        if option in needed_for_effect:
            row.dropped.append(f"without {option}: harms the tree ({needed_for_effect[option]})")
            continue
        without = arguments_for([r for r in reasons if r["option"] != option])
        dropped = RETRIES.dump(criu, pid, without, f"{state}: without {option}")
        row.dropped.append(f"without {option}: {_outcome(dropped)}")
        assert not dropped.ok, f"{state}: CRIU dumped it without {option}, crwatch needs it"
        _assert_refused(dropped, state, f"without {option}")


def _assert_refused(result: DumpResult, state: str, how: str) -> None:
    # A refusal that is CRIU's own trouble (twice) proves nothing about the state.
    assert not transient(result.errors), (f"{state}: CRIU failed {how} only for its own "
                                          f"trouble under load, twice", result.errors)


def _outcome(result: DumpResult) -> str:
    return "dumped" if result.ok else "fails"


@dataclass
class _Row:
    state: str
    document: dict
    plain: str = "not run"
    with_options: str = ""
    dropped: list[str] = field(default_factory=list)
    retries: int = 0

    def write(self) -> None:
        reasons = self.document["reasons"]
        codes = ",".join(sorted({r["code"] for r in reasons if r["severity"] != INFO}))
        cells = (self.state, _current_test(), self.document["verdict"],
                 " ".join(self.document["required_options"]), codes, self.plain,
                 self.with_options, "; ".join(self.dropped), str(self.retries))
        TABLE.parent.mkdir(exist_ok=True)
        with TABLE.open("a") as table:
            table.write("\t".join(_cell(cell) for cell in cells) + "\n")


def _current_test() -> str:
    # pytest names the running test "tests/test_x.py::test_y[param] (call)".
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]


def _cell(text: str) -> str:
    return " ".join(text.split())  # a tab or newline would break the row


def read_table(path: Path = TABLE) -> list[dict[str, str]]:
    """The rows written so far, as dicts keyed by COLUMNS."""
    if not path.exists():
        return []
    return [dict(zip(COLUMNS, line.split("\t")))
            for line in path.read_text().splitlines() if line]


def render(rows: list[dict[str, str]], *, criu_version: str, kernel: str, date: str,
           retries: list[Retry]) -> str:
    """docs/criu-agreement.md for one run's rows, sorted by state."""
    rows = sorted(rows, key=lambda row: (row["state"], row["test"]))
    verdicts = [row["crwatch verdict"] for row in rows]
    lines = [
        "# crwatch's `criu` profile against the real CRIU",
        "",
        "Written by the test suite (`tests/conftest.py`) from a run of every "
        "`tests/agreement/test_agree_*.py`; do not edit it by hand. Each row is a real process put "
        "into a state, audited by crwatch and dumped by the real CRIU (`criu dump "
        "--leave-running` into a scratch directory): ok must dump plainly; needs_options "
        "must fail plainly, dump with exactly the options crwatch names, and fail when any "
        "one of them is dropped; blocked must fail even with every option its reasons "
        "name. A failed dump is retried once only when CRIU's log blames CRIU's own "
        "trouble under load.",
        "",
        f"- CRIU: {criu_version}",
        f"- kernel: {kernel}",
        f"- date: {date}",
        f"- states: {len(rows)} ({verdicts.count('ok')} ok, "
        f"{verdicts.count('needs_options')} needs_options, {verdicts.count('blocked')} blocked)",
        f"- retries: {len(retries)}",
        *[f"  - {_markdown(retry.where)}: {_markdown('; '.join(retry.errors))}"
          for retry in retries],
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *["| " + " | ".join(_markdown(row.get(column, "")) for column in COLUMNS) + " |"
          for row in rows],
    ]
    return "\n".join(lines) + "\n"


def _markdown(text: str) -> str:
    return text.replace("|", "\\|")
