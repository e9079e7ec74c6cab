"""Namespaces against the real CRIU: the tree's own, nested ones, pid-namespace inits, user maps."""
from __future__ import annotations

import os
import signal

import pytest

from tests.support.agreement import assert_agrees, namespace_lock_codes
from tests.support.namespaces import CLONE, UNSHARE, child_in_namespace
from tests.support.subjects import subject
from tracker.criu.runner import find_criu
from tracker.environment import current

pytestmark = [pytest.mark.criu]


def init_of_new_pid_namespace(*, setsid: bool) -> str:
    """Subject code: a child that is pid 1 of a new pid namespace; the note is its host pid."""
    return UNSHARE + f"""
unshare({CLONE["pid"]})
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    if {setsid}:
        os.setsid()
    os.write(w, b"x")
    hold()
os.read(r, 1)
ready(str(pid))
hold()
"""


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("kind", ["uts", "ipc", "user"])
def test_nested_namespace_is_blocked(kind):
    with subject(child_in_namespace(CLONE[kind])) as s:
        assert_agrees(s.pid, f"child in a nested {kind} namespace", expect="blocked",
                      codes={"namespace.nested"}, tree=True,
                      criu_error=f"Can't dump nested {kind} namespace for {s.note}")


def test_nested_pid_namespace_is_blocked():
    # The child unshares the pid namespace; its own child is pid 1 of the new one.
    code = child_in_namespace(CLONE["pid"], child_setup="""
    inner = os.fork()
    if inner == 0:
        hold()""")
    with subject(code) as s:
        assert_agrees(s.pid, "grandchild in a nested pid namespace", expect="blocked",
                      codes={"namespace.nested", "namespace.session_outside"}, tree=True,
                      criu_error="Can't dump nested pid namespace for")


@pytest.mark.parametrize("kind", ["net", "mnt"])
def test_nested_network_and_mount_namespaces_dump(kind):
    with subject(child_in_namespace(CLONE[kind])) as s:
        assert_agrees(s.pid, f"child in a nested {kind} namespace", expect="ok",
                      codes={"namespace.nested_subns"}, tree=True)


def test_time_namespace_for_children_is_blocked():
    with subject(UNSHARE + f"unshare({CLONE['time']})\nready()\nhold()") as s:
        assert_agrees(s.pid, "unshared time namespace for children", expect="blocked",
                      codes={"namespace.nested"},
                      criu_error=f"Can't dump nested time namespace for {s.pid}")


def test_root_in_its_own_uts_and_ipc_namespaces_dumps():
    with subject(UNSHARE + f"unshare({CLONE['uts'] | CLONE['ipc']})\nready()\nhold()") as s:
        document = assert_agrees(s.pid, "root in its own uts and ipc namespaces", expect="ok",
                                 codes={"namespace.own"})
    assert any("own ipc, uts namespaces" in r["message"] for r in document["reasons"])


def test_init_of_its_own_pid_namespace_dumps():
    with subject(init_of_new_pid_namespace(setsid=True)) as s:
        init = int(s.note)
        try:
            assert_agrees(init, "init of its own pid namespace", expect="ok",
                          codes={"namespace.own"})
        finally:
            kill_quietly(init)  # it leads a session of its own: not in the subject's group


def test_pid_namespace_init_without_its_own_session_is_blocked():
    with subject(init_of_new_pid_namespace(setsid=False)) as s:
        init = int(s.note)
        document = assert_agrees(
            init, "pid namespace init whose session leader is outside", expect="blocked",
            codes={"namespace.session_outside"},
            criu_error=f"A session leader of {init}(1) is outside of its pid namespace")
        # --shell-job is not offered, because it does not help: proven here
        assert document["required_options"] == []
        assert not find_criu().dump(init, ["--shell-job"]).ok


def test_root_that_is_not_its_pid_namespace_init_is_blocked():
    code = UNSHARE + f"""
unshare({CLONE["pid"]})
r, w = os.pipe()
init = os.fork()
if init == 0:
    os.setsid()
    second = os.fork()
    if second == 0:
        os.setsid()
        os.write(w, b"x")
        hold()
    hold()
os.read(r, 1)
ready(open(f"/proc/{{init}}/task/{{init}}/children").read().split()[0])
hold()
"""
    with subject(code) as s:
        second = int(s.note)
        init = int(open(f"/proc/{second}/stat").read().rpartition(")")[2].split()[1])
        try:
            assert_agrees(second, "pid 2 of its own pid namespace", expect="blocked",
                          codes={"namespace.pid_without_init"},
                          criu_error="Can't dump a pid namespace without the process init")
        finally:
            kill_quietly(init)  # the namespace goes with its init


def test_root_in_an_unmapped_user_namespace_is_blocked():
    with subject(UNSHARE + f"unshare({CLONE['user']})\nready()\nhold()") as s:
        assert_agrees(s.pid, "root in its own user namespace, no uid map", expect="blocked",
                      codes={"namespace.user_unmapped"},
                      criu_error="Unable to convert uid or gid")


def test_root_in_a_mapped_user_namespace_dumps():
    with subject(UNSHARE + f"unshare({CLONE['user']})\nready()\nhold()") as s:
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{s.pid}/{name}", "w") as id_map:
                id_map.write("0 0 4294967295")
        assert_agrees(s.pid, "root in its own user namespace, 0 mapped", expect="ok",
                      codes={"namespace.own"})


def test_root_in_its_own_network_namespace_needs_a_network_lock_without_iptables():
    # CRIU locks the namespace with iptables-restore, or with nftables when told.
    needed = current().network_lock(current().namespace_tools) != "iptables"
    with subject(UNSHARE + f"unshare({CLONE['net']})\nready()\nhold()") as s:
        verdict = assert_agrees(s.pid, "root in its own network namespace",
                                expect="needs_options" if needed else "ok",
                                codes={"namespace.net_lock"} if needed else set(),
                                criu_error="Locking network failed" if needed else None)
    if needed:
        lock = next(r for r in verdict["reasons"] if r["code"] == "namespace.net_lock")
        assert lock["option_value"] == "nftables"
        assert "iptables-restore" in lock["environment_fact"]


@pytest.mark.parametrize("child_netns", [False, True],
                         ids=["child left in the host's network namespace",
                              "child in a network namespace of its own"])
def test_root_in_own_user_and_network_namespaces_with_a_child_forked_before(child_netns):
    # The child is forked first (and maybe unshares a network namespace); then the root
    # unshares a user and a network namespace together, and a helper it forked before maps
    # uid and gid 0.
    code = UNSHARE + f"""
r, w = os.pipe()
kid = os.fork()
if kid == 0:
    if {child_netns}:
        unshare({CLONE["net"]})
    os.write(w, b"x")
    hold()
os.read(r, 1); os.close(r); os.close(w)
parent = os.getpid()
r, w = os.pipe()
helper = os.fork()
if helper == 0:
    os.read(r, 1)
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{{parent}}/{{name}}", "w") as id_map:
            id_map.write("0 0 4294967295")
    os._exit(0)
unshare({CLONE["user"] | CLONE["net"]})
os.write(w, b"x"); os.waitpid(helper, 0); os.close(r); os.close(w)
ready(str(kid))
hold()
"""
    with subject(code) as s:
        if child_netns:
            assert_agrees(s.pid, "own user and network namespaces, child in its own netns",
                          expect="needs_options" if namespace_lock_codes() else "ok",
                          codes=namespace_lock_codes(), tree=True)
            return
        document = assert_agrees(
            s.pid, "own user and network namespaces, child in the host's", expect="blocked",
            codes={"namespace.host_netns_member"} | namespace_lock_codes(), tree=True)
        reason = next(r for r in document["reasons"] if r["code"] == "namespace.host_netns_member")
        assert reason["pid"] == int(s.note)
        # the plain dump stops at the network lock; past it, the child cannot be infected
        locked = find_criu().dump(s.pid, ["--network-lock", "nftables"])
        assert "Unable to get name for a socket: Socket operation on non-socket" in locked.log


def test_root_in_its_own_network_namespace_with_a_child_gone_back_to_the_hosts_is_blocked():
    # The root unshares its network namespace; its child joins the dumper's again (setns).
    code = UNSHARE + f"""
host = os.open("/proc/self/ns/net", os.O_RDONLY)
unshare({CLONE["net"]})
r, w = os.pipe()
kid = os.fork()
if kid == 0:
    assert ctypes.CDLL(None, use_errno=True).setns(host, {CLONE["net"]}) == 0
    os.close(host); os.close(r); os.write(w, b"x"); os.close(w)
    hold()
os.close(host); os.close(w); os.read(r, 1); os.close(r)
ready(str(kid)); hold()
"""
    with subject(code) as s:
        document = assert_agrees(
            s.pid, "own network namespace, child back in the host's", expect="blocked",
            codes={"namespace.host_netns_member"} | namespace_lock_codes(), tree=True)
        assert next(r for r in document["reasons"]
                    if r["code"] == "namespace.host_netns_member")["pid"] == int(s.note)
        # past the network lock, the child cannot be infected
        locked = find_criu().dump(s.pid, ["--network-lock", "nftables"])
        assert "Unable to get name for a socket: Socket operation on non-socket" in locked.log
