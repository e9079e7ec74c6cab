"""Proving the `criu` profile against the real CRIU.

`assert_agrees(pid, ...)` audits a live process and dumps it with the real
CRIU (`--leave-running`, into a scratch directory), then checks that both
say the same: ok dumps plainly; needs_options fails plainly and dumps with
exactly the options crwatch asked for; blocked fails even with every option
the reasons name. Each row is appended to build/agreement.tsv, the table the
closing note and README quote.
"""
from __future__ import annotations

from pathlib import Path

from tracker.audit import audit
from tracker.criu import arguments_for, find_criu
from tracker.environment import IPTABLES_CONNECTION_TOOLS, current
from tracker.profiles import profile
from tracker.rules import catalogue
from tracker import verdict

TABLE = Path(__file__).resolve().parents[1] / "build" / "agreement.tsv"


def network_lock_options() -> list[str]:
    """What a dump that locks TCP connections needs besides --tcp-established in this
    environment: nothing where iptables is on PATH, else `--network-lock nftables`."""
    method = current().network_lock(IPTABLES_CONNECTION_TOOLS)
    return [] if method == "iptables" else ["--network-lock", method]


def network_lock_allowed() -> list[str]:
    """The same as `crwatch check` arguments: [] or ["--allow=--network-lock=nftables"]."""
    options = network_lock_options()
    return [f"--allow={options[0]}={options[1]}"] if options else []


def _record(state: str, criu_result: str, document: dict) -> None:
    TABLE.parent.mkdir(exist_ok=True)
    codes = ",".join(sorted({r["code"] for r in document["reasons"] if r["severity"] != "info"}))
    options = " ".join(document["required_options"])
    with TABLE.open("a") as table:
        table.write(f"{state}\t{criu_result}\t{document['verdict']}\t{options}\t{codes}\n")


def assert_agrees(pid: int, state: str, *, expect: str, codes: set[str] = frozenset(),
                  tree: bool = False, criu_error: str | None = None) -> dict:
    """Audit pid, dump it with the real CRIU, and assert both agree.

    `expect` is the verdict this state must get, `codes` rule codes that must
    be among the reasons, `criu_error` a fragment CRIU's log must contain when
    it refuses.
    """
    criu = find_criu()
    assert criu is not None, "no CRIU: scripts/setup.sh provides one"
    document = verdict.document(audit(pid, tree=tree), profile("criu", criu.version))
    found = {r["code"] for r in document["reasons"]}
    assert document["verdict"] == expect, (state, document["reasons"])
    assert codes <= found, (state, codes - found, document["reasons"])

    plain = criu.dump(pid)
    if expect == "ok":
        _record(state, "dumped" if plain.ok else "failed", document)
        assert plain.ok, (state, plain.errors)
        return document
    assert not plain.ok, f"{state}: CRIU dumped it plainly, crwatch said {expect}"
    if criu_error:
        assert criu_error in plain.log, (state, criu_error, plain.errors)
    options = document["required_options"]
    if expect == "needs_options":
        with_options = criu.dump(pid, arguments_for(document["reasons"]))
        _record(state, f"fails; dumped with {' '.join(options)}" if with_options.ok
                else "fails even with options", document)
        assert with_options.ok, (state, options, with_options.errors)
    else:
        # Every option any reason names, with the value the reason gives (--network-lock).
        rules = catalogue()
        named_reasons = [{"option": rules[r["code"]].option, "option_value": r["option_value"]}
                         for r in document["reasons"] if rules[r["code"]].option]
        named = sorted({r["option"] for r in named_reasons})
        with_options = criu.dump(pid, arguments_for(named_reasons))
        _record(state, "fails" + (f" (also with {' '.join(named)})" if named else ""), document)
        assert not with_options.ok, f"{state}: CRIU dumped it with {named}, crwatch said blocked"
    return document

