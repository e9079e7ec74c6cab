"""Judging findings under profiles and allow lists; the audit's edge cases on fixture /proc trees."""
from __future__ import annotations

from pathlib import Path

import pytest

from tracker import procfs, verdict
from tracker.audit import Audit, ProcessIdentity, ThreadId, audit, identify
from tracker.checks.catalogue import Catalogue, catalogue
from tracker.criu import options
from tracker.procfs import ProcessGone, parse_stat
from tracker.profiles import Profile, parse_version, profile
from tracker.rules import BLOCKER, OPTION, Finding, Rule, VersionNote

CRIU_42 = Profile("criu", (4, 2, 1))


def finding(code: str, pid: int = 10, **extra) -> Finding:
    return Finding(code, f"{code} seen", pid, **extra)


def judged(*findings: Finding, allow=(), chosen: Profile = CRIU_42) -> dict:
    result = Audit(root=ProcessIdentity(10, 1.5, "subject"), tree=False, findings=list(findings))
    return verdict.document(result, chosen, allow)


def test_no_findings_is_ok_and_checkpointable():
    document = judged()
    assert (document["verdict"], document["checkpointable"], document["reasons"]) == ("ok", True, [])


def test_an_option_finding_needs_that_option_until_it_is_allowed():
    tcp = finding("socket.tcp.established", fd=5)
    assert judged(tcp)["verdict"] == "needs_options"
    assert judged(tcp)["required_options"] == ["--tcp-established"]
    assert judged(tcp)["checkpointable"] is False
    assert judged(tcp, allow=["--tcp-established"])["checkpointable"] is True
    assert judged(tcp, allow=["tcp-established"])["checkpointable"] is True
    assert judged(tcp, allow=["--file-locks"])["checkpointable"] is False


def test_a_blocker_wins_over_options_and_allowing_cannot_fix_it():
    document = judged(finding("socket.tcp.established", fd=5), finding("fd.unclassified", fd=7),
                      allow=["--tcp-established"])
    assert document["verdict"] == "blocked" and document["checkpointable"] is False
    assert [r["severity"] for r in document["reasons"]] == ["blocker", "option"]


def test_an_unreadable_process_is_unknown_never_checkpointable():
    document = judged(finding("audit.unreadable"), finding("socket.tcp.established", fd=5),
                      allow=["--tcp-established"])
    assert document["verdict"] == "unknown" and document["checkpointable"] is False


def test_ghost_limit_allowance_must_cover_the_size_needed():
    ghost = finding("file.deleted.over_ghost_limit", fd=4, option_value="5M")
    assert judged(ghost)["required_options"] == ["--ghost-limit"]
    assert judged(ghost, allow=["--ghost-limit=4M"])["checkpointable"] is False
    assert judged(ghost, allow=["--ghost-limit=5M"])["checkpointable"] is True
    assert judged(ghost, allow=["--ghost-limit 1G"])["checkpointable"] is True
    assert judged(ghost, allow=["--ghost-limit"])["checkpointable"] is True


def test_strict_blocks_what_criu_lets_through():
    strict_rules = [rule for rule in catalogue() if rule.strict == BLOCKER and rule.criu != BLOCKER]
    assert strict_rules, "the strict profile must differ from criu somewhere"
    waiter = finding(strict_rules[0].code, tid=11)
    assert judged(waiter)["verdict"] != "blocked"
    assert judged(waiter, chosen=Profile("strict", (4, 2, 1)))["verdict"] == "blocked"


def test_older_criu_judges_by_its_version_note():
    rule = Rule("x.y", "t", OPTION, "r", option="--x",
                older_criu=(VersionNote((4, 2, 0), BLOCKER, "4.1 cannot"),))
    assert Profile("criu", (4, 1, 1)).severity(rule) == BLOCKER
    assert Profile("criu", (4, 1, 1)).version_note(rule) == "4.1 cannot"
    assert Profile("criu", (4, 2, 0)).severity(rule) == OPTION
    assert Profile("criu", (4, 2, 0)).version_note(rule) is None


def test_every_rule_is_well_formed_and_codes_are_unique():
    rules = list(catalogue())
    assert len({rule.code for rule in rules}) == len(rules) > 40
    for rule in rules:
        assert rule.code.count(".") >= 1 and rule.code == rule.code.lower(), rule.code
        assert rule.title and rule.remedy and rule.family, rule.code
    with pytest.raises(ValueError):
        Catalogue([rules[0], rules[0]])


def test_profiles_and_versions_are_checked():
    assert parse_version("4.2") == (4, 2, 0)
    with pytest.raises(ValueError):
        parse_version("four")
    with pytest.raises(ValueError):
        profile("lenient")


def test_stat_parsing_survives_parentheses_and_spaces_in_comm():
    fields = " ".join(["S", "1", "42", "42", "0", "-1", "4194304"] + ["0"] * 10 + ["3", "0", "12345"])
    stat = parse_stat(f"42 (we ird) (name)) {fields}")
    assert (stat.pid, stat.comm, stat.state, stat.num_threads, stat.start_ticks) == \
        (42, "we ird) (name)", "S", 3, 12345)


def fake_proc(root: Path, pid: int, flags: int = 4194304) -> None:
    """A fixture /proc entry: a process whose fd directory is gone (it exited mid-audit)."""
    entry = root / str(pid)
    entry.mkdir(parents=True)
    fields = " ".join(["S", "1", str(pid), str(pid), "0", "-1", str(flags)]
                      + ["0"] * 10 + ["1", "0", "500"])
    (entry / "stat").write_text(f"{pid} (fixture) {fields}\n")
    (entry / "task").mkdir()


def test_a_process_that_exits_mid_audit_is_unknown(tmp_path):
    fake_proc(tmp_path, 77)
    result = audit(77, proc_root=tmp_path)
    document = verdict.document(result, CRIU_42)
    assert document["verdict"] == "unknown"
    assert [r["code"] for r in document["reasons"]] == ["audit.exited"]
    assert "exited" in document["reasons"][0]["message"]


def test_an_audit_says_which_of_its_processes_exited_or_is_a_kernel_thread(tmp_path):
    fake_proc(tmp_path, 77)
    fake_proc(tmp_path, 2, flags=0x00200000)  # PF_KTHREAD
    gone, kernel = audit(77, proc_root=tmp_path), audit(2, proc_root=tmp_path)
    assert gone.exited() and gone.exited(77) and not gone.exited(2)
    assert not gone.kernel_thread()
    assert kernel.kernel_thread() and kernel.kernel_thread(2) and not kernel.kernel_thread(77)
    assert not kernel.exited()


def test_pids_are_the_numeric_names_of_proc_in_order(tmp_path):
    for name in ("300", "7", "self", "sys", "42"):
        (tmp_path / name).mkdir()
    assert procfs.pids(tmp_path) == [7, 42, 300]


def test_a_pid_that_does_not_exist_raises_process_gone(tmp_path):
    with pytest.raises(ProcessGone):
        audit(78, proc_root=tmp_path)


def test_a_task_the_kernel_let_go_of_is_gone_not_a_thread(tmp_path):
    """/proc/PID/status says Tgid 0 for a task already released (it exited while listed):
    the service's first pass over /proc must skip it, not fail to start."""
    fake_proc(tmp_path, 79)
    (tmp_path / "79" / "status").write_text("Name:\tfixture\nTgid:\t0\nPid:\t79\n")
    with pytest.raises(ProcessGone):
        identify(79, proc_root=tmp_path)
    (tmp_path / "79" / "status").write_text("Name:\tfixture\nTgid:\t70\nPid:\t79\n")
    with pytest.raises(ThreadId):
        identify(79, proc_root=tmp_path)


def test_an_option_allowed_again_adds_a_value():
    allowed = options.parse_allow(["--external=tty[136:3]", "--external=tty[136:4]",
                                   "--shell-job", "--ghost-limit=2M"])
    assert allowed == {"--external": ("tty[136:3]", "tty[136:4]"), "--shell-job": (None,),
                       "--ghost-limit": ("2M",)}
    assert options.allows("--external", "tty[136:4]", allowed)
    assert options.allows("--external", "tty[136:3]", allowed)
    assert not options.allows("--external", "tty[136:5]", allowed)
    assert options.allows("--ghost-limit", "1M", allowed)
    assert not options.allows("--ghost-limit", "3M", allowed)
    assert not options.allows("--tcp-established", None, allowed)
