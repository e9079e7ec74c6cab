"""docs/criu-refusals.md holds together, and scripts/criu_refusal_sites.py finds what it should.

The doc maps every refusal site of CRIU 4.2's dump path to a rule, a pending
state, or a reason no process reaches it. Here: every rule code it cites is in
the catalogue, every rule that quotes a CRIU message is cited by a row (or is
listed with the reason no row can), its counts match its rows, every row has one
mapping, and the pending rows are exactly the "Sites without a rule yet". The
extractor is run on small fixture C trees shaped like CRIU's code.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tracker.checks.catalogue import catalogue

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "criu-refusals.md"
SCRIPT = REPO / "scripts" / "criu_refusal_sites.py"
KINDS = ("rule", "pending", "unreachable", "host", "follows")
SITE_HEADER = "| line | function | message | 4.2.1 | predicted by |"
CELL_SPLIT = re.compile(r"(?<!\\)\|")
CODE_LIKE = re.compile(r"`([a-z_]+(?:\.[a-z_0-9]+)+)`")


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in CELL_SPLIT.split(row.strip())[1:-1]]


def kind_of(mapping: str) -> str:
    for kind in KINDS[1:]:
        if mapping.startswith(f"**{kind}**:"):
            return kind
    return "rule"


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


@pytest.fixture(scope="module")
def sites(doc) -> list[tuple[str, int, str, str]]:
    """(file, line, message, mapping) of every row of the per-file tables."""
    found, current, in_table = [], None, False
    for line in doc.splitlines():
        if line.startswith("### "):
            current, in_table = line[4:].strip(), False
        elif line == SITE_HEADER:
            in_table = True
        elif in_table and line.startswith("|") and not line.startswith("|---"):
            row = cells(line)
            assert len(row) == 5, line
            found.append((current, int(row[0]), row[2], row[4]))
        elif not line.startswith("|"):
            in_table = False
    return found


def counts_in(line: str) -> dict[str, int]:
    """`N sites; N mapped to rules; N pending; N unreachable; N host; N follows` as a dict."""
    counted = re.findall(r"(\d+) (sites|mapped|pending|unreachable|host|follows)", line)
    found = dict((name, int(n)) for n, name in counted)
    return {"total": found["sites"], **{kind: found["mapped" if kind == "rule" else kind] for kind in KINDS}}


# ---------------------------------------------------------------- the doc

def test_the_doc_has_site_tables_for_the_issue_files(sites):
    files = {file for file, *_ in sites}
    for wanted in ("criu/cr-dump.c", "criu/files-reg.c", "criu/files-ext.c", "criu/sk-unix.c",
                   "criu/sk-inet.c",
                   "criu/sockets.c", "criu/mount.c", "criu/mem.c", "criu/proc_parse.c", "criu/namespaces.c",
                   "criu/netfilter.c"):
        assert wanted in files, wanted
    assert len(sites) == len({(file, line) for file, line, *_ in sites}), "a site is listed twice"


def test_every_row_has_one_mapping_with_its_reason(sites):
    for file, line, message, mapping in sites:
        assert message.startswith("`") and message.endswith("`"), (file, line)
        kind = kind_of(mapping)
        if kind == "rule":
            assert re.fullmatch(r"`[a-z_.]+`(, `[a-z_.]+`)*", mapping), (file, line, mapping)
        else:
            assert len(mapping.split(":", 1)[1].strip()) > 10, (file, line, mapping)


def test_every_rule_code_cited_is_in_the_catalogue(doc, sites):
    codes = {rule.code for rule in catalogue()}
    cited = [code for *_, mapping in sites for code in CODE_LIKE.findall(mapping)]
    cited += CODE_LIKE.findall(section(doc, "Sites without a rule yet"))
    assert cited, "the doc cites no rule"
    unknown = sorted({code for code in cited if code not in codes and not code.endswith(".c")})
    assert not unknown, f"codes not in the catalogue: {unknown}"
    mapped = {code for *_, mapping in sites if kind_of(mapping) == "rule"
              for code in CODE_LIKE.findall(mapping)}
    assert {"socket.tcp.established", "lock.posix", "task.shared_mm", "memory.uprobes"} <= mapped


# Rules that quote a CRIU message no row can cite, and why (the doc says so in
# "Refusals outside the extractor's reach"). A text block rather than code
# literals: tests/unit/test_rule_coverage.py counts a code literal in a test module
# as a test that creates the rule's state, and these tests create none.
NOT_A_SITE = dict(line.split(": ", 1) for line in """
dumper.no_checkpoint_capability: check_caps() in CRIU's main(), before cr_dump_tasks()
dumper.unprivileged: check_caps() in CRIU's main(), before cr_dump_tasks()
anon.timerfd.clock: verify_timerfd() in criu/include/timerfd.h, a header the extractor does not read
anon.notify.events_dropped: a pr_warn: CRIU drops the events and goes on
socket.udp.open: a pr_warn: CRIU drops the read queue and goes on
lock.lease.reopened: a pr_info: the dump goes on (and breaks the lease)
audit.exited: pycriu's message for a pid that is gone, not CRIU's
""".strip().splitlines())


def test_every_rule_quoting_criu_is_cited_by_a_row_or_says_why_not(sites):
    quoting = {rule.code for rule in catalogue() if rule.criu_message}
    cited = {code for *_, mapping in sites if kind_of(mapping) == "rule"
             for code in CODE_LIKE.findall(mapping)}
    uncited = sorted(quoting - cited - set(NOT_A_SITE))
    assert not uncited, f"rules whose CRIU message no row maps to them: {uncited}"
    stale = sorted(set(NOT_A_SITE) - (quoting - cited))
    assert not stale, f"listed as not a site, but cited by a row or quoting nothing: {stale}"


def test_the_rules_not_cited_quote_no_message_of_a_row(sites):
    messages = {message.strip("`").replace("\\|", "|") for *_, message, _ in sites}
    for rule in catalogue():
        if rule.code in NOT_A_SITE:
            assert rule.criu_message not in messages, rule.code


def test_the_header_and_closing_counts_match_the_rows(doc, sites):
    tally = Counter(kind_of(mapping) for *_, mapping in sites)
    expected = {"total": len(sites), **{kind: tally[kind] for kind in KINDS}}
    header = next(line for line in doc.splitlines() if line.startswith("- **Counts**"))
    closing = section(doc, "Closing note").strip().splitlines()[-1]
    assert counts_in(header) == expected
    assert counts_in(closing) == expected


def test_the_per_file_summary_matches_the_tables(doc, sites):
    summary = section(doc, "Per file")
    rows = [cells(line) for line in summary.splitlines()
            if line.startswith("| criu/") or line.startswith("| compel/")]
    by_file = {}
    for file, _, _, mapping in sites:
        by_file.setdefault(file, Counter())[kind_of(mapping)] += 1
    assert {row[0] for row in rows} == set(by_file)
    for row in rows:
        counts = by_file[row[0]]
        assert [int(n) for n in row[1:]] == [sum(counts.values())] + [counts[kind] for kind in KINDS], row[0]


def test_the_pending_rows_are_the_sites_without_a_rule(doc, sites):
    pending = {(file, line) for file, line, _, mapping in sites if kind_of(mapping) == "pending"}
    listed = set()
    for line in section(doc, "Sites without a rule yet").splitlines():
        match = re.match(r"\| ([\w/.-]+\.c):(\d+) ", line)
        if match:
            listed.add((match.group(1), int(match.group(2))))
    assert pending and listed == pending


# ---------------------------------------------------------------- the extractor

def load_script():
    spec = importlib.util.spec_from_file_location("criu_refusal_sites", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


FIXTURE_DUMP = r'''
#define LOG_PREFIX "sk demo: "
static const struct fdtype_ops demo_ops = {
	.dump = dump_demo_fd,
	.open = open_demo_fd,
};

static int can_dump(int state)
{
	if (state == 1) {
		pr_err("Unknown state %d "
		       "for demo\n", state);
		return 0;
	}
	return 1;
}

static int dump_demo_fd(int lfd)
{
	char *s = "pr_err(\"in a string\"); return -1;";
	int ret = 0;

	/* pr_err("in a comment"); return -1; */
	if (!can_dump(lfd))
		return -1;
	if (lfd > 100) {
		pr_err("Too big %" PRIx64 "\n", lfd);
		pr_err("Consider using --%s option.\n", "demo");
		goto err;
	}
	if (lfd > 50) {
		pr_err("Only a warning for %d\n", lfd);
		return 0;
	}
	if (lfd < 0) {
		pr_perror("Can't stat");
		ret = -1;
	}
	return ret;
err:
	return -1;
}

static int open_demo_fd(int fd)
{
	pr_err("Restore-side failure\n");
	return -1;
}

int cr_dump_tasks(int pid)
{
	return dump_demo(pid, &demo_ops);
}
'''


@pytest.fixture(scope="module")
def fixture_sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("criu")
    (root / "criu").mkdir()
    (root / "criu" / "sk-demo.c").write_text(FIXTURE_DUMP)
    script = load_script()
    return {site.message: site for site in script.extract(script.DirTree(str(root)), [], everything=True)}


def test_a_print_followed_by_an_error_exit_is_a_site(fixture_sites):
    site = fixture_sites["Can't stat"]
    assert (site.file, site.function, site.call, site.exit, site.prefix) == (
        "criu/sk-demo.c", "dump_demo_fd", "pr_perror", "ret = -1", "sk demo: ")
    assert site.reachable


def test_joined_strings_macros_and_consecutive_prints_make_one_message(fixture_sites):
    joined = fixture_sites["Too big %<PRIx64> / Consider using --%s option."]
    assert joined.call == "pr_err+pr_err" and joined.exit == "goto err"
    assert fixture_sites["Unknown state %d for demo"].line == 11   # the line of the call


def test_return_0_is_a_refusal_only_where_0_means_no(fixture_sites):
    assert fixture_sites["Unknown state %d for demo"].exit == "return 0"   # can_dump() returns 0 or 1
    assert "Only a warning for %d" not in fixture_sites                   # an int function: 0 is success


def test_strings_and_comments_are_not_sites(fixture_sites):
    assert not [message for message in fixture_sites if "in a string" in message or "in a comment" in message]


def test_restore_fields_of_ops_tables_are_not_on_the_dump_path(fixture_sites):
    assert fixture_sites["Restore-side failure"].reachable is False
    assert fixture_sites["Can't stat"].reachable is True


def test_the_binary_check_finds_compiled_messages(tmp_path, fixture_sites):
    script = load_script()
    sites = [fixture_sites["Can't stat"], fixture_sites["Unknown state %d for demo"]]
    binary = tmp_path / "criu"
    binary.write_bytes(b"\x7fELF\x00\x01Error (%s:%d): sk demo: Can't stat: %s\n\x00\x02")
    script.mark_in_binary(sites, script.binary_strings(str(binary)))
    assert [site.in_binary for site in sites] == [True, False]


def test_check_doc_reports_new_and_gone_sites(fixture_sites):
    script = load_script()
    sites = [fixture_sites["Can't stat"], fixture_sites["Unknown state %d for demo"]]
    doc = ("### criu/sk-demo.c\n\n"
           "| line | function | message | 4.2.1 | predicted by |\n|---:|---|---|---|---|\n"
           "| 11 | `can_dump` | `Unknown state %d for demo` | yes | `socket.unix.unsupported` |\n"
           "| 99 | `gone_fn` | `Removed \\| since` | yes | **unreachable**: no longer in the source |\n")
    new, gone = script.doc_drift(sites, doc)
    assert [site[1:] for site in new] == [(sites[0].line, "Can't stat")]
    assert gone == [("criu/sk-demo.c", 99, "Removed | since")]


def test_the_doc_lists_what_the_extractor_finds_in_its_own_format(doc, sites):
    script = load_script()
    assert script.doc_sites(doc) == {(file, line, message[1:-1].replace("\\|", "|"))
                                     for file, line, message, _ in sites}


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--source", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "is not a CRIU source tree" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, str(SCRIPT), "--git-dir", str(tmp_path), "--commit", "v4.2"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("criu_refusal_sites: git")
    assert "Traceback" not in done.stderr
