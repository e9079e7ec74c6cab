"""`crwatch check` and `crwatch rules` as a user runs them: the installed console script."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.agreement import network_lock_allowed, network_lock_options
from tests.support.namespaces import NESTED_PID_NS
from tests.support.subjects import DEVICE, PLAIN, TCP_PAIR, subject
from tests.support.tasks import THREADED
from tracker.criu.runner import find_criu

CRWATCH = Path(sys.executable).with_name("crwatch")


def crwatch(*args: str, user: int | None = None) -> subprocess.CompletedProcess:
    command = [str(CRWATCH), *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.root
def test_plain_process_is_checkpointable_and_exits_0():
    with subject(PLAIN) as plain:
        result = crwatch("check", str(plain.pid))
    assert result.returncode == 0, result.stderr
    assert f"pid {plain.pid} (python" in result.stdout
    assert "checkpointable: yes" in result.stdout
    assert result.stderr == ""


@pytest.mark.root
def test_json_is_the_verdict_document():
    with subject(TCP_PAIR) as tcp:
        result = crwatch("check", "--json", str(tcp.pid))
    document = json.loads(result.stdout)
    assert result.returncode == 1
    assert document["schema"] == "crwatch.verdict/1"
    assert (document["pid"], document["verdict"]) == (tcp.pid, "needs_options")
    # Without iptables on PATH, CRIU can lock the connections only with nftables.
    assert document["required_options"] == sorted(
        ["--tcp-established", *network_lock_options()[:1]])
    assert document["checkpointable"] is False
    assert {r["code"] for r in document["reasons"]} >= {"socket.tcp.established"}
    reason = next(r for r in document["reasons"] if r["code"] == "socket.tcp.established")
    assert reason["option"] == "--tcp-established" and reason["source"] == "audit"
    assert reason["fd"] is not None and f"fd {reason['fd']}" in reason["message"]
    assert isinstance(document["start_time"], float) and document["checked_at"].endswith("Z")


@pytest.mark.root
def test_allowing_the_required_option_makes_it_checkpointable():
    with subject(TCP_PAIR) as tcp:
        allowed = crwatch("check", "--allow=--tcp-established", *network_lock_allowed(),
                          str(tcp.pid))
        short = crwatch("check", "--allow", "tcp-established", *network_lock_allowed(), "--json",
                        str(tcp.pid))
    assert allowed.returncode == 0, allowed.stdout
    options = " ".join(sorted(["--tcp-established", *network_lock_options()[:1]]))
    assert f"checkpointable: yes (with {options})" in allowed.stdout
    assert json.loads(short.stdout)["checkpointable"] is True


@pytest.mark.root
def test_human_output_lists_every_reason_with_its_remedy_grouped_per_process():
    tree = """
    import subprocess
    kid = subprocess.Popen([sys.executable, "-c",
        "import socket, signal, time; k = open('/dev/kvm', 'rb', buffering=0); "
        "import os; os.write(1, b'x'); signal.pause()"], stdout=subprocess.PIPE)
    kid.stdout.read(1)
    kvm = open('/dev/kvm', 'rb', buffering=0)
    ready(str(kid.pid)); hold()
    """
    with subject(tree) as parent:
        result = crwatch("check", str(parent.pid))  # the tree is the default scope
    kid = int(parent.note)
    assert result.returncode == 1
    out = result.stdout
    assert "tree of 2 processes: blocked" in out
    assert out.index(f"  pid {parent.pid} (") < out.index(f"  pid {kid} (")
    assert out.count(f"  pid {parent.pid} (") == out.count(f"  pid {kid} (") == 1
    assert out.count("/dev/kvm") == 2 and out.count("fix:") >= 2
    assert out.rstrip().endswith("checkpointable: no")


@pytest.mark.criu
def test_check_judges_what_a_checkpoint_takes_the_tree_and_only_takes_the_pid_alone():
    criu = find_criu()
    assert criu is not None, "no CRIU: scripts/setup.sh provides one"
    with subject(NESTED_PID_NS) as root:
        tree = crwatch("check", "--json", str(root.pid))
        alone = crwatch("check", "--json", "--only", str(root.pid))
        aliased = crwatch("check", "--json", "--tree", str(root.pid))
        text = crwatch("check", "--only", str(root.pid))
        dumped = criu.dump(root.pid)  # criu dump -t ROOT: the tree, always
    document = json.loads(tree.stdout)
    assert tree.returncode == 1 and document["tree"] is True
    assert document["verdict"] == "blocked" and len(document["processes"]) == 3
    nested = [r for r in document["reasons"] if r["code"] == "namespace.nested"]
    assert nested and "nested pid namespace" in nested[0]["message"]
    assert not dumped.ok and "Can't dump nested pid namespace for" in dumped.log
    own = json.loads(alone.stdout)
    assert alone.returncode == 0 and own["tree"] is False and own["verdict"] == "ok"
    assert [p["pid"] for p in own["processes"]] == [root.pid]
    assert json.loads(aliased.stdout)["verdict"] == "blocked"
    assert f"pid {root.pid} (python), its own findings only" in text.stdout, text.stdout


def test_only_and_tree_together_are_a_usage_error():
    result = crwatch("check", "--only", "--tree", "1")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr


def test_a_thread_id_is_refused_naming_its_process():
    with subject(THREADED) as threaded:
        tid = next(int(t) for t in os.listdir(f"/proc/{threaded.pid}/task")
                   if int(t) != threaded.pid)
        result = crwatch("check", str(tid))
        gated = crwatch("gate", "--local", str(tid))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"crwatch: {tid} is a thread of process {threaded.pid}; a "
                             f"checkpoint takes whole processes: check {threaded.pid}\n")
    assert gated.returncode == 2 and gated.stdout == ""
    assert gated.stderr.startswith(f"crwatch: {tid} is a thread of process {threaded.pid};")


@pytest.mark.root
def test_the_conclusion_names_only_the_options_still_missing():
    both = TCP_PAIR.replace(
        "ready()", "held = open('/etc/hostname'); fcntl.flock(held, fcntl.LOCK_SH); ready()")
    with subject(both) as tcp:
        result = crwatch("check", "--allow=--tcp-established", *network_lock_allowed(),
                         str(tcp.pid))
    assert result.returncode == 1
    options = " ".join(sorted(["--file-locks", "--tcp-established", *network_lock_options()[:1]]))
    assert f"needs options: {options}" in result.stdout
    assert result.stdout.rstrip().endswith("checkpointable: no (allow --file-locks to dump it)")


@pytest.mark.root
def test_several_pids_at_once_exit_1_when_any_is_not_checkpointable():
    with subject(PLAIN) as plain, subject(DEVICE) as device:
        result = crwatch("check", "--json", str(plain.pid), str(device.pid))
    documents = json.loads(result.stdout)
    assert [d["pid"] for d in documents] == [plain.pid, device.pid]
    assert [d["verdict"] for d in documents] == ["ok", "blocked"]
    assert result.returncode == 1


def test_a_pid_that_does_not_exist_is_one_clear_line_and_exit_2():
    with subject(PLAIN) as gone:
        pass  # stopped and reaped: its pid is free now
    result = crwatch("check", str(gone.pid))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"crwatch: no process with pid {gone.pid}\n"


@pytest.mark.parametrize("argument", ["abc", "0", "-5", "1.5"])
def test_malformed_pids_are_usage_errors(argument):
    result = crwatch("check", "--", argument)
    assert result.returncode == 2
    assert "not a pid" in result.stderr and "Traceback" not in result.stderr


def test_unknown_profile_is_a_usage_error():
    result = crwatch("check", "--profile", "nope", "1")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_pid_1_is_judged_without_a_traceback():
    result = crwatch("check", "--json", "1")
    assert result.returncode in (0, 1), result.stderr
    document = json.loads(result.stdout)
    assert document["pid"] == 1 and document["verdict"] in ("ok", "needs_options", "blocked", "unknown")
    if document["verdict"] == "unknown":
        # e.g. a sandbox's pid 1 whose fds even root may not read: said, not hidden
        assert any(r["code"] == "audit.unreadable" for r in document["reasons"])


def test_kernel_threads_are_blocked():
    kthread = next(pid for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
                   if _is_kernel_thread(pid))
    result = crwatch("check", "--json", str(kthread))
    document = json.loads(result.stdout)
    assert result.returncode == 1
    assert document["verdict"] == "blocked"
    # kthreadd's tree is every kernel thread: each is one, and nothing else is said
    assert {r["code"] for r in document["reasons"]} == {"task.kernel_thread"}
    assert kthread in [r["pid"] for r in document["reasons"]]
    alone = json.loads(crwatch("check", "--json", "--only", str(kthread)).stdout)
    assert [(r["code"], r["pid"]) for r in alone["reasons"]] == [("task.kernel_thread", kthread)]


def test_a_tree_holding_crwatch_itself_is_blocked():
    # The tree of this test process contains the crwatch it starts.
    result = crwatch("check", "--json", "--tree", str(os.getpid()))
    document = json.loads(result.stdout)
    codes = {r["code"] for r in document["reasons"]}
    assert "task.crwatch_itself" in codes
    assert document["verdict"] == "blocked"


@pytest.mark.root
def test_without_root_it_says_what_could_not_be_read_and_why():
    with subject(PLAIN) as plain:
        result = crwatch("check", "--json", str(plain.pid), user=65534)
    assert result.returncode == 1
    assert "not running as root" in result.stderr
    document = json.loads(result.stdout)
    assert document["verdict"] == "unknown"
    unreadable = [r for r in document["reasons"] if r["code"] == "audit.unreadable"]
    assert unreadable and "Permission denied" in unreadable[0]["message"]
    assert "/fd" in unreadable[0]["message"]


def test_rules_lists_the_catalogue_the_reasons_come_from():
    listing = crwatch("rules", "--json")
    document = json.loads(listing.stdout)
    codes = {rule["code"] for rule in document["rules"]}
    assert document["schema"] == "crwatch.rules/1"
    assert {"socket.tcp.established", "fd.unclassified", "audit.exited"} <= codes
    established = next(r for r in document["rules"] if r["code"] == "socket.tcp.established")
    assert established["option"] == "--tcp-established" and established["severity"] == "option"
    text = crwatch("rules").stdout
    assert all(code in text for code in codes)


def test_rules_say_where_older_criu_differs():
    old = json.loads(crwatch("rules", "--json", "--criu-version", "4.1.1").stdout)
    new = json.loads(crwatch("rules", "--json", "--criu-version", "4.2").stdout)
    listener_old = next(r for r in old["rules"] if r["code"] == "socket.tcp.listen")
    listener_new = next(r for r in new["rules"] if r["code"] == "socket.tcp.listen")
    assert listener_old["severity"] == "blocker" and "4.2" in listener_old["version_note"]
    assert listener_new["severity"] != "blocker" and listener_new["version_note"] is None


def _is_kernel_thread(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return bool(int(fields[6]) & 0x00200000)
    except OSError:
        return False
