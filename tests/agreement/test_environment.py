"""The dumper's environment decides verdicts: changed for real, judged by crwatch and the
real CRIU run in that same environment.

- the network lock: with no iptables tools on PATH (this machine), CRIU locks TCP
  connections only with `--network-lock nftables`; with iptables (Debian's package,
  unpacked by scripts/setup.sh into .deps/iptables-root, run through wrappers in
  .deps/iptables-bin) it needs no option;
- CAP_SYS_RESOURCE: without it CRIU cannot read the rlimits of a process under other
  ids (this machine's bounding set already lacks it; the tests drop it again with
  setpriv so that they hold on any host);
- CAP_CHECKPOINT_RESTORE and CAP_SYS_ADMIN: without both CRIU refuses to start.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.agreement import assert_agrees
from tests.support.servers import Server
from tests.support.subjects import skip_if_refused, subject
from tracker import environment
from tracker.checks.namespaces import marked_connections_lock, network_lock_findings, without_orphaned_lock
from tracker.criu.options import arguments_for
from tracker.criu.runner import Criu, find_criu
from tracker.environment import (
    IPTABLES_CONNECTION_TOOLS,
    IPTABLES_NAMESPACE_TOOLS,
    Capabilities,
    Credentials,
    Environment,
)
from tracker.rules import Finding

REPO = Path(__file__).resolve().parents[2]
CRWATCH = Path(sys.executable).with_name("crwatch")
IPTABLES_BIN = Path(os.environ.get("CRWATCH_IPTABLES_BIN", REPO / ".deps" / "iptables-bin"))
ALL_TOOLS = (*IPTABLES_CONNECTION_TOOLS, *IPTABLES_NAMESPACE_TOOLS)

TCP_PAIR = """
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
client = socket.create_connection(server.getsockname()); peer, _ = server.accept()
server.close()
"""
# States of a TCP socket after shutdown() and close() on either side. Each setup waits
# for the event that brings the state (the peer's FIN or RST read as end of stream or
# an error); `settle` then checks the state, polling only for the one transition no
# read reports (the ACK of our FIN that moves FIN_WAIT1 to FIN_WAIT2).
SETTLE = """
def settle(sock, state):
    for _ in range(2000):
        if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == state:
            return
        time.sleep(0.001)
    raise SystemExit(f"socket never reached TCP state {state}")
"""
TCP_FIN_WAIT2, TCP_CLOSE, TCP_CLOSE_WAIT = 5, 7, 8
SHUT_DOWN_STATES = {
    # our side shut its writing half down; the peer read the FIN and acknowledged it
    "shut down for writing (FIN_WAIT2)":
        ("client.shutdown(socket.SHUT_WR); assert peer.recv(1) == b''; "
         "settle(client, %d)" % TCP_FIN_WAIT2, "--tcp-established"),
    # the peer shut its writing half down and closed
    "peer shut down (CLOSE_WAIT)":
        ("peer.shutdown(socket.SHUT_WR); peer.close(); assert client.recv(1) == b''; "
         "settle(client, %d)" % TCP_CLOSE_WAIT, "--tcp-established"),
    # both halves closed: CLOSE, but the kernel keeps the peer's address and CRIU locks it
    "closed after both shut down (CLOSE with a peer)":
        ("client.shutdown(socket.SHUT_WR); peer.close(); assert client.recv(1) == b''; "
         "settle(client, %d)" % TCP_CLOSE, None),
    # reset by the peer: CLOSE with a peer as well
    "reset by the peer (CLOSE with a peer)":
        ("peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); "
         "peer.close()\ntry:\n    client.recv(1)\nexcept ConnectionResetError:\n    pass\n"
         "settle(client, %d)" % TCP_CLOSE, None),
}


# ---------------------------------------------------------------- parsers

def test_capability_masks_parse_as_proc_prints_them():
    bounding = Capabilities.parse("000001fffeffffff\n")
    assert bounding.missing() == ["sys_resource"]
    assert bounding.has(environment.CAP_CHECKPOINT_RESTORE) and bounding.hex == "000001fffeffffff"
    empty = Capabilities.parse("0")
    assert empty.names() == [] and "sys_admin" in empty.missing()
    for bad in ("", "xyz", "00000000000000000", "-1"):
        with pytest.raises(ValueError, match="not a capability mask"):
            Capabilities.parse(bad)


def test_credentials_come_from_the_status_lines():
    status = ("Name:\tpython\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n"
              "CapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n"
              "CapEff:\t0000010000000000\nCapBnd:\t000001fffeffffff\n")
    creds = Credentials.parse(status)
    assert (creds.uid, creds.euid, creds.gid) == (1000, 0, 100)
    assert creds.effective.names() == ["checkpoint_restore"]
    with pytest.raises(ValueError, match="unreadable status"):
        Credentials.parse("Name:\tpython\nUid:\t0\t0\t0\t0\n")


def test_detection_reads_the_given_status_and_path_and_needs_no_criu(tmp_path):
    status = tmp_path / "status"
    status.write_text("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapEff:\t000001fffeffffff\n"
                      "CapPrm:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n")
    (tmp_path / "iptables").write_text("#!/bin/sh\n")
    (tmp_path / "iptables").chmod(0o755)
    facts = environment.detect(None, status_path=status, path=str(tmp_path))
    assert facts.tools["iptables"] == str(tmp_path / "iptables")
    assert facts.tools["ip6tables"] is None
    assert facts.features == {} and facts.criu_path is None
    # No CRIU to ask: the lock that needs no iptables is named, never "skip".
    assert facts.network_lock(IPTABLES_CONNECTION_TOOLS) == "nftables"
    assert not facts.has_sys_resource and facts.to_json()["dumper"]["sys_resource"] is False
    status.write_text("Uid:\t0\n")
    with pytest.raises(ValueError, match="unreadable status"):
        environment.detect(None, status_path=status, path=str(tmp_path))


def fixture_environment(tools: dict[str, str | None], nftables: bool = True,
                        effective: str = "000001fffeffffff", euid: int = 0,
                        bounding: str = "000001ffffffffff") -> Environment:
    caps, bound = Capabilities.parse(effective), Capabilities.parse(bounding)
    return Environment(Credentials(euid, 0, euid, caps, caps, bound), "6.18", "/usr/bin", tools,
                       features={"network_lock_nftables": nftables})


def test_the_lock_method_follows_the_tools_and_features():
    nothing = dict.fromkeys(ALL_TOOLS)
    assert fixture_environment(nothing).network_lock(IPTABLES_CONNECTION_TOOLS) == "nftables"
    assert fixture_environment(nothing, nftables=False).network_lock(
        IPTABLES_CONNECTION_TOOLS) == "none"
    only_connections = {**nothing, "iptables": "/x/iptables", "ip6tables": "/x/ip6tables"}
    env = fixture_environment(only_connections)
    assert env.network_lock(IPTABLES_CONNECTION_TOOLS) == "iptables"
    assert env.network_lock(IPTABLES_NAMESPACE_TOOLS) == "nftables"
    assert env.tools_fact(IPTABLES_NAMESPACE_TOOLS) == \
        "no iptables-restore or ip6tables-restore on the dumper's PATH"
    assert env.to_json()["network_lock"]["connections"] == "iptables"
    no_ipv6 = fixture_environment({**nothing, "iptables-restore": "/x/r"})._replace(ipv6=False)
    assert no_ipv6.namespace_tools == ("iptables-restore",)
    assert no_ipv6.to_json()["network_lock"]["namespace"] == "iptables"


def test_the_lock_reason_names_the_value_and_the_deciding_fact():
    nothing = dict.fromkeys(ALL_TOOLS)
    [nft] = network_lock_findings(42, fixture_environment(nothing), "its own network namespace",
                                  IPTABLES_NAMESPACE_TOOLS)
    assert (nft.code, nft.option_value) == ("namespace.net_lock", "nftables")
    assert nft.environment_fact == "no iptables-restore or ip6tables-restore on the dumper's PATH"
    # A CRIU without the nftables lock and no iptables: only a lock of the caller's own.
    [skip] = network_lock_findings(42, fixture_environment(nothing, nftables=False), "x",
                                   IPTABLES_CONNECTION_TOOLS)
    assert skip.option_value == "skip" and "network_lock_nftables" in skip.environment_fact
    assert "--network-lock skip" in skip.remedy
    tools = {tool: f"/x/{tool}" for tool in ALL_TOOLS}
    assert list(network_lock_findings(42, fixture_environment(tools), "x", ALL_TOOLS)) == []


def test_the_live_view_asks_for_the_lock_from_its_marks_alone():
    connection = Finding("socket.tcp.established", "fd 4: TCP connection ...", 7, fd=4)
    listener = Finding("socket.tcp.listen", "fd 3: TCP listener ...", 7, fd=3)
    nothing = dict.fromkeys(ALL_TOOLS)
    [lock] = marked_connections_lock(7, [listener, connection], fixture_environment(nothing))
    assert lock.option_value == "nftables" and "pid 7 fd 4" in lock.message
    assert "pid 7 fd 3" not in lock.message
    assert marked_connections_lock(7, [listener], fixture_environment(nothing)) == []
    tools = {tool: f"/x/{tool}" for tool in ALL_TOOLS}
    assert marked_connections_lock(7, [connection], fixture_environment(tools)) == []
    # Once the connections are set aside (the watcher's own), their lock goes with them.
    reasons = [{"code": "namespace.net_lock"}, {"code": "device.chr.unsupported"}]
    assert without_orphaned_lock(reasons) == [{"code": "device.chr.unsupported"}]
    kept = reasons + [{"code": "socket.tcp.established"}]
    assert without_orphaned_lock(kept) == kept


def test_dumper_capabilities_decide_the_dumper_facts():
    assert not fixture_environment({}, effective="0").can_checkpoint
    unprivileged = fixture_environment({}, effective="0000010000000000", euid=1000)
    assert unprivileged.can_checkpoint and unprivileged.unprivileged
    assert unprivileged.sys_resource_fact() == "the dumper's effective set lacks CAP_SYS_RESOURCE"
    assert fixture_environment({}, bounding="000001fffeffffff").sys_resource_fact() == \
        "the dumper's bounding set lacks CAP_SYS_RESOURCE"


# ---------------------------------------------------------------- helpers

def path_without_iptables() -> str:
    """This PATH minus every directory holding an iptables tool (none, on this machine)."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs
                           if d and not any(shutil.which(tool, path=d) for tool in ALL_TOOLS))


def iptables_bin() -> Path:
    wrapper = IPTABLES_BIN / "iptables-restore"
    assert os.access(wrapper, os.X_OK), f"no {wrapper}: scripts/setup.sh provides it"
    return IPTABLES_BIN


@contextmanager
def search_path(path: str) -> Iterator[Environment]:
    """crwatch (detecting again) and the CRIU it starts both search this PATH."""
    saved = os.environ["PATH"]
    os.environ["PATH"] = path
    try:
        yield environment.redetect()
    finally:
        os.environ["PATH"] = saved
        environment.redetect()


def crwatch(*args: str, prefix: tuple[str, ...] = (), path: str | None = None
            ) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=path if path is not None else os.environ["PATH"])
    return subprocess.run([*prefix, str(CRWATCH), *args], capture_output=True, text=True,
                          timeout=120, env=env)


def criu_under(prefix: tuple[str, ...], tmp_path: Path) -> Criu:
    """The real CRIU, started through `prefix` (e.g. setpriv dropping capabilities)."""
    criu = find_criu()
    assert criu is not None, "no CRIU: scripts/setup.sh provides one"
    wrapper = tmp_path / "criu"
    wrapper.write_text("#!/bin/sh\nexec " + " ".join(prefix) + f" {criu.path} \"$@\"\n")
    wrapper.chmod(0o755)
    return Criu(str(wrapper), criu.version)


def reason(document: dict, code: str) -> dict:
    found = [r for r in document["reasons"] if r["code"] == code]
    assert found, (code, document["reasons"])
    return found[0]


# ---------------------------------------------------------------- the network lock

@pytest.mark.criu
def test_without_iptables_a_tcp_connection_needs_the_nftables_lock_named_in_the_verdict():
    with search_path(path_without_iptables()) as env, subject(TCP_PAIR + "ready(); hold()") as s:
        assert env.network_lock(IPTABLES_CONNECTION_TOOLS) == "nftables"
        document = json.loads(crwatch("check", "--json", str(s.pid), path=os.environ["PATH"])
                              .stdout)
        assert document["required_options"] == ["--network-lock", "--tcp-established"]
        lock = reason(document, "namespace.net_lock")
        assert lock["option_value"] == "nftables"
        assert lock["environment_fact"] == "no iptables on the dumper's PATH"  # IPv4 only
        assert lock["environment_fact"] in lock["message"]
        assert document["environment"]["network_lock"]["connections"] == "nftables"

        criu = find_criu()
        only_tcp = criu.dump(s.pid, ["--tcp-established"])
        assert not only_tcp.ok and "Failed to lock TCP connection" in only_tcp.log, only_tcp.errors
        assert arguments_for(document["reasons"]) == ["--tcp-established", "--network-lock",
                                                      "nftables"]
        both = criu.dump(s.pid, arguments_for(document["reasons"]))
        assert both.ok, both.errors


@pytest.mark.criu
def test_with_iptables_on_path_a_tcp_connection_needs_only_tcp_established():
    path = os.pathsep.join([str(iptables_bin()), path_without_iptables()])
    with search_path(path) as env, subject(TCP_PAIR + "ready(); hold()") as s:
        assert env.network_lock(IPTABLES_CONNECTION_TOOLS) == "iptables"
        assert env.tools["iptables"] == str(IPTABLES_BIN / "iptables")
        document = json.loads(crwatch("check", "--json", str(s.pid), path=path).stdout)
        assert document["required_options"] == ["--tcp-established"], document["reasons"]
        assert document["environment"]["network_lock"]["tools"]["iptables-restore"]
        dumped = find_criu().dump(s.pid, arguments_for(document["reasons"]))
        assert dumped.ok, dumped.errors
        assert "Running iptables [iptables -w -t filter -I INPUT" in dumped.log


TCP6_PAIR = """
server = socket.socket(socket.AF_INET6); server.bind((HOST, 0)); server.listen()
client = socket.create_connection(server.getsockname()[:2]); peer, _ = server.accept()
server.close()
ready(); hold()
"""
# CRIU locks an IPv6 peer with ip6tables, an IPv4 or IPv4-mapped one with iptables.
FAMILIES = {"IPv4": (TCP_PAIR + "ready(); hold()", None),
            "IPv6": (TCP6_PAIR.replace("HOST", "'::1'"), "ip6tables"),
            "IPv4-mapped IPv6": (TCP6_PAIR.replace("HOST", "'::ffff:127.0.0.1'"), None)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.criu
def test_only_iptables_on_path_locks_ipv4_peers_and_not_ipv6_ones(family, tmp_path):
    code, missing = FAMILIES[family]
    only_iptables = tmp_path / "bin"
    only_iptables.mkdir()
    (only_iptables / "iptables").symlink_to(iptables_bin() / "iptables")
    with search_path(os.pathsep.join([str(only_iptables), path_without_iptables()])), \
            subject(code) as s:
        document = assert_agrees(s.pid, f"{family} TCP connection, only iptables on PATH",
                                 expect="needs_options",
                                 codes={"socket.tcp.established"}
                                 | ({"namespace.net_lock"} if missing else set()))
    if missing:
        lock = reason(document, "namespace.net_lock")
        assert lock["environment_fact"] == f"no {missing} on the dumper's PATH"
        assert document["required_options"] == ["--network-lock", "--tcp-established"]
    else:
        assert document["required_options"] == ["--tcp-established"], document["reasons"]


@pytest.mark.criu
def test_with_iptables_on_path_an_own_network_namespace_needs_no_lock_option():
    path = os.pathsep.join([str(iptables_bin()), path_without_iptables()])
    code = ("libc = ctypes.CDLL(None, use_errno=True)\n"
            "assert libc.unshare(0x40000000) == 0\nready(); hold()")
    with search_path(path), subject(code) as s:
        assert_agrees(s.pid, "own network namespace, iptables on PATH", expect="ok",
                      codes={"namespace.own"})


@pytest.mark.parametrize("state", sorted(SHUT_DOWN_STATES))
@pytest.mark.criu
def test_shut_down_tcp_sockets_are_locked_too(state):
    setup, option = SHUT_DOWN_STATES[state]
    code = "import struct\n" + SETTLE + TCP_PAIR + setup + "\nready(); hold()"
    with search_path(path_without_iptables()), subject(code) as s:
        document = assert_agrees(s.pid, f"TCP {state}, no iptables", expect="needs_options",
                                 codes={"namespace.net_lock"}
                                 | ({"socket.tcp.established"} if option else set()),
                                 criu_error="Failed to lock TCP connection" if not option
                                 else None)
    expected = sorted(["--network-lock", *([option] if option else [])])
    assert document["required_options"] == expected, document["reasons"]


# ---------------------------------------------------------------- capabilities

WITHOUT_SYS_RESOURCE = ("setpriv", "--bounding-set", "-sys_resource", "--")
FOREIGN_CHILD = """
if os.fork() == 0:
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    hold()
ready(); hold()
"""


@pytest.mark.criu
def test_a_process_under_another_uid_is_blocked_without_cap_sys_resource(tmp_path):
    with subject(FOREIGN_CHILD) as s:
        result = crwatch("check", "--tree", "--json", str(s.pid), prefix=WITHOUT_SYS_RESOURCE)
        document = json.loads(result.stdout)
        assert document["verdict"] == "blocked", document["reasons"]
        blocker = reason(document, "task.foreign_uid_needs_sys_resource")
        assert blocker["environment_fact"] == "the dumper's bounding set lacks CAP_SYS_RESOURCE"
        assert "65534" in blocker["message"] and blocker["pid"] != s.pid
        assert "sys_resource" in document["environment"]["dumper"]["capabilities"]["bounding"][
            "missing"]
        failed = criu_under(WITHOUT_SYS_RESOURCE, tmp_path).dump(s.pid)
        assert not failed.ok and "Can't get rlimit 0: Operation not permitted" in failed.log, \
            failed.errors


@pytest.mark.criu
def test_a_root_tree_dumps_without_cap_sys_resource(tmp_path):
    with subject("ready(); hold()") as s:
        document = json.loads(crwatch("check", "--tree", "--json", str(s.pid),
                                      prefix=WITHOUT_SYS_RESOURCE).stdout)
        assert document["verdict"] == "ok", document["reasons"]
        dumped = criu_under(WITHOUT_SYS_RESOURCE, tmp_path).dump(s.pid)
        assert dumped.ok, dumped.errors


@pytest.mark.criu
def test_the_agreement_harness_sees_the_same_blocker_in_this_environment():
    if environment.current().has_sys_resource:
        pytest.skip("this dumper holds CAP_SYS_RESOURCE: the setpriv tests above cover it")
    with subject(FOREIGN_CHILD) as s:
        assert_agrees(s.pid, "child under uid 65534, dumper without CAP_SYS_RESOURCE",
                      expect="blocked", tree=True, codes={"task.foreign_uid_needs_sys_resource"},
                      criu_error="Can't get rlimit 0: Operation not permitted")


WITHOUT_CHECKPOINT_CAPS = ("setpriv", "--bounding-set", "-checkpoint_restore,-sys_admin", "--")


@pytest.mark.criu
def test_a_dumper_without_checkpoint_capabilities_blocks_everything(tmp_path):
    with subject("ready(); hold()") as s:
        plain = json.loads(crwatch("check", "--json", str(s.pid)).stdout)
        assert plain["verdict"] == "ok" and plain["environment"]["dumper"]["can_checkpoint"]
        dropped = json.loads(crwatch("check", "--json", str(s.pid),
                                     prefix=WITHOUT_CHECKPOINT_CAPS).stdout)
        assert dropped["verdict"] == "blocked", dropped["reasons"]
        blocker = reason(dropped, "dumper.no_checkpoint_capability")
        assert "CAP_CHECKPOINT_RESTORE" in blocker["environment_fact"]
        facts = dropped["environment"]["dumper"]
        assert not facts["can_checkpoint"]
        assert {"sys_admin", "checkpoint_restore"} <= set(
            facts["capabilities"]["effective"]["missing"])
        failed = criu_under(WITHOUT_CHECKPOINT_CAPS, tmp_path).dump(s.pid)
        assert not failed.ok
        assert "CRIU needs to have the CAP_SYS_ADMIN or the CAP_CHECKPOINT_RESTORE" in failed.log


# ---------------------------------------------------------------- showing the facts

@pytest.mark.criu
def test_crwatch_env_shows_the_facts_in_text_and_json():
    as_json = crwatch("env", "--json", prefix=WITHOUT_CHECKPOINT_CAPS)
    assert as_json.returncode == 0, as_json.stderr
    facts = json.loads(as_json.stdout)
    assert facts["schema"] == "crwatch.environment/1" and facts["kernel"] == os.uname().release
    assert "checkpoint_restore" in facts["dumper"]["capabilities"]["bounding"]["missing"]
    assert facts["criu"]["version"] == find_criu().version_text
    assert set(facts["criu"]["features"]) >= {"network_lock_nftables", "pidfd_store"}
    assert set(facts["criu"]["libraries"]) == {"libbpf", "libnftables"}
    assert set(facts["network_lock"]["tools"]) == set(ALL_TOOLS)
    text = crwatch("env", prefix=WITHOUT_CHECKPOINT_CAPS).stdout
    assert "CANNOT checkpoint" in text and "network lock" in text


@pytest.mark.root
def test_get_environment_serves_the_same_facts_as_the_cli():
    server = Server("--no-probes")
    try:
        served = server.ok("/environment")
        with subject("ready(); hold()") as s:
            verdict = server.ok(f"/processes/{s.pid}/checkpointable")
    finally:
        server.stop()
    local = json.loads(crwatch("env", "--json").stdout)
    for facts in (served, verdict["environment"]):
        assert {k: v for k, v in facts.items() if k != "detected_in_seconds"} == \
            {k: v for k, v in local.items() if k != "detected_in_seconds"}


# ---------------------------------------------------------------- unprivileged mode

UNPRIVILEGED = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                "--inh-caps=+checkpoint_restore", "--ambient-caps=+checkpoint_restore", "--")
OWN_UID_SUBJECT = """
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: the uid change cleared it
os.chdir("/")
ready(); hold()
"""


def scratch_for_nobody() -> Path:
    """An images directory the unprivileged CRIU (uid 65534) can write."""
    images = Path(tempfile.mkdtemp(prefix="crwatch-env-"))
    images.chmod(0o777)
    return images


@pytest.mark.criu
def test_a_non_root_dumper_with_checkpoint_restore_needs_unprivileged(tmp_path):
    with subject(OWN_UID_SUBJECT) as s:
        result = crwatch("check", "--json", str(s.pid), prefix=UNPRIVILEGED)
        document = json.loads(result.stdout)
        assert document["verdict"] == "needs_options", document["reasons"]
        assert document["required_options"] == ["--unprivileged"]
        assert reason(document, "dumper.unprivileged")["environment_fact"] == \
            "the dumper's euid is 65534"
        dumper = document["environment"]["dumper"]
        assert dumper["unprivileged"] and dumper["euid"] == 65534 and dumper["can_checkpoint"]
        assert "checkpoint_restore" not in dumper["capabilities"]["effective"]["missing"]

        criu = criu_under(UNPRIVILEGED, tmp_path)
        plain_images, images = scratch_for_nobody(), scratch_for_nobody()
        try:
            plain = criu.dump(s.pid, images_dir=plain_images)
            assert not plain.ok and "Running as non-root requires '--unprivileged'" in plain.log
            dumped = criu.dump(s.pid, arguments_for(document["reasons"]), images_dir=images)
            assert dumped.ok, dumped.errors
        finally:
            shutil.rmtree(plain_images)
            shutil.rmtree(images)


# ---------------------------------------------------------------- CRIU's build

BPF_HASH_MAP = """
import struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
attr = ctypes.create_string_buffer(struct.pack("IIII", 1, 4, 4, 4) + bytes(112))
fd = libc.syscall(321, 0, attr, len(attr))  # bpf(BPF_MAP_CREATE): a HASH map
if fd < 0:
    ready(f"skip: bpf: {os.strerror(ctypes.get_errno())}"); hold()
ready(); hold()
"""


@pytest.mark.criu
def test_a_bpf_map_names_the_criu_build_that_refuses_it():
    if environment.current().libraries.get("libbpf"):
        pytest.skip("this CRIU is linked with libbpf: no CRIU without it to compare with")
    with subject(BPF_HASH_MAP) as s:
        skip_if_refused(s, "a BPF hash map")
        document = assert_agrees(s.pid, "BPF hash map, CRIU without libbpf", expect="blocked",
                                 codes={"anon.bpf_map"},
                                 criu_error="(anon anon_inode:bpf-map)")
    blocker = reason(document, "anon.bpf_map")
    assert blocker["environment_fact"] == "the dumper's CRIU is built without libbpf"
    assert document["environment"]["criu"]["libraries"]["libbpf"] is False
