"""The dumper's environment: the facts about the CRIU that would run, detected once.

A verdict holds for one dumper in one environment. CRIU inherits crwatch's
credentials and PATH, so crwatch reads them from itself (a wrapper script that
changes CRIU's capabilities on the way is not seen; its features are, since
they are asked through it):

- capabilities (`/proc/self/status`): CRIU refuses to start without
  CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN (cr-check.c check_caps), asks for
  `--unprivileged` when not root, and reads a target's rlimits with
  prlimit64(), which the kernel allows only to a caller whose real uid and gid
  match the target's, or one with CAP_SYS_RESOURCE (cr-dump.c
  dump_task_rlimits, kernel/sys.c check_prlimit_permission);
- the network-lock backend: CRIU's default is iptables (cr_options.h
  NETWORK_LOCK_DEFAULT). It locks each TCP connection with
  `sh -c "iptables ..."` (`ip6tables` for IPv6; netfilter.c) and a network
  namespace with `iptables-restore` / `ip6tables-restore` (net.c), all found
  through PATH (execvp). `--network-lock nftables` uses libnftables
  in-process (needs the `network_lock_nftables` feature);
- CRIU's build features: `criu check --feature NAME`, and the libraries its
  binary loads (BPF maps need a CRIU linked with libbpf; files-ext.c
  is_bpfmap_link is compiled only with CONFIG_HAS_LIBBPF);
- the kernel release.

`current()` detects once per process and caches (`of(criu)` for another
CRIU); `redetect()` is for tests that change the environment. What CRIU itself
says (its features and libraries) is kept across runs by tracker.criu.facts_cache
while nothing it depends on changes; asking it afresh runs CRIU four times (tens
of milliseconds): `detect_ahead()` begins the detection in the background for a
command that will judge, so that it overlaps the audit, and `current()` then
awaits that detection instead of starting another.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from tracker.criu.facts_cache import CriuFacts, FactsCache
from tracker.criu.runner import Criu, find_criu

CAPABILITY_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
    "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
    "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
    "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)
CAP_SYS_ADMIN, CAP_SYS_RESOURCE, CAP_CHECKPOINT_RESTORE = 21, 24, 40

# The `criu check --feature` names detected: the nftables lock decides verdicts
# (namespace.net_lock); pidfd_store (the pid-reuse guard of iterative dumps) and
# tcp_half_closed (kernel repair of shut-down connections) are shown, no rule
# depends on them yet.
FEATURES = ("network_lock_nftables", "pidfd_store", "tcp_half_closed")
# Libraries whose presence in CRIU's binary decides what it can dump.
LIBRARIES = {"libbpf": "libbpf.so", "libnftables": "libnftables.so"}
# What CRIU runs for the iptables lock: per connection, and per network namespace.
IPTABLES_CONNECTION_TOOLS = ("iptables", "ip6tables")
IPTABLES_NAMESPACE_TOOLS = ("iptables-restore", "ip6tables-restore")
DEFAULT_EXEC_PATH = "/bin:/usr/bin"  # glibc's execvp without PATH
FEATURE_TIMEOUT = 10.0
LOADED = "loaded files"     # the CRIU run that names the files it loads, beside the features

_LOADED_FILE = re.compile(r"(?:calling init|initialize program): (\S+)")


class Capabilities(NamedTuple):
    """A capability set as /proc/PID/status prints it (CapEff, CapPrm, CapBnd: hex)."""

    mask: int

    @classmethod
    def parse(cls, text: str) -> Capabilities:
        """`000001fffeffffff` -> the set; a clear ValueError for anything else."""
        text = text.strip()
        if not re.fullmatch(r"[0-9a-fA-F]{1,16}", text):
            raise ValueError(f"not a capability mask: {text!r}")
        return cls(int(text, 16))

    def has(self, number: int) -> bool:
        return bool(self.mask >> number & 1)

    def names(self) -> list[str]:
        return [name for number, name in enumerate(CAPABILITY_NAMES) if self.has(number)]

    def missing(self) -> list[str]:
        return [name for number, name in enumerate(CAPABILITY_NAMES) if not self.has(number)]

    @property
    def hex(self) -> str:
        return f"{self.mask:016x}"


class Credentials(NamedTuple):
    """The dumper's ids and capabilities, from its /proc/PID/status."""

    uid: int        # real uid: the one prlimit64() compares with the target's
    gid: int
    euid: int
    effective: Capabilities
    permitted: Capabilities
    bounding: Capabilities

    @classmethod
    def parse(cls, status: str) -> Credentials:
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        try:
            uids = fields["Uid"].split()
            gids = fields["Gid"].split()
            return cls(uid=int(uids[0]), gid=int(gids[0]), euid=int(uids[1]),
                       effective=Capabilities.parse(fields["CapEff"]),
                       permitted=Capabilities.parse(fields["CapPrm"]),
                       bounding=Capabilities.parse(fields["CapBnd"]))
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"unreadable status (Uid/Gid/CapEff/CapPrm/CapBnd): {error}") from None


class Environment(NamedTuple):
    """The facts one CRIU run would meet, and what they mean for it."""

    credentials: Credentials
    kernel: str
    path: str                                   # the PATH CRIU searches
    tools: dict[str, str | None]                # iptables tool -> where PATH finds it
    criu_path: str | None = None
    criu_version: str | None = None
    features: Mapping[str, bool] = MappingProxyType({})     # none known: no CRIU asked
    libraries: Mapping[str, bool] = MappingProxyType({})
    ipv6: bool = True          # kerndat.c get_ipv6: /proc/sys/net/ipv6 exists
    seconds: float = 0.0
    # "cache" (kept from an earlier run) or "criu" (asked now): shown by `crwatch env`, not
    # part of the document, which holds the facts alone wherever they came from
    criu_facts_from: str = ""

    # ------------------------------------------------------------ capabilities

    @property
    def can_checkpoint(self) -> bool:
        """CRIU's check_caps(): CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN, effective."""
        effective = self.credentials.effective
        return effective.has(CAP_CHECKPOINT_RESTORE) or effective.has(CAP_SYS_ADMIN)

    @property
    def unprivileged(self) -> bool:
        """Not root: CRIU runs only with --unprivileged."""
        return self.credentials.euid != 0

    @property
    def has_sys_resource(self) -> bool:
        return self.credentials.effective.has(CAP_SYS_RESOURCE)

    def sys_resource_fact(self) -> str:
        """Why the dumper lacks CAP_SYS_RESOURCE, in the words a reason quotes."""
        if not self.credentials.bounding.has(CAP_SYS_RESOURCE):
            return "the dumper's bounding set lacks CAP_SYS_RESOURCE"
        return "the dumper's effective set lacks CAP_SYS_RESOURCE"

    # ------------------------------------------------------------ network lock

    def missing_tools(self, tools: tuple[str, ...]) -> list[str]:
        return [tool for tool in tools if not self.tools.get(tool)]

    @property
    def namespace_tools(self) -> tuple[str, ...]:
        """What CRIU's iptables lock of a network namespace runs: ip6tables-restore only
        where the kernel has IPv6 (net.c iptables_network_lock_internal)."""
        return IPTABLES_NAMESPACE_TOOLS if self.ipv6 else IPTABLES_NAMESPACE_TOOLS[:1]

    @property
    def nftables_lock(self) -> bool:
        # With no CRIU to ask, name the lock that needs no iptables rather than none at all.
        return self.features.get("network_lock_nftables", self.criu_path is None)

    def network_lock(self, tools: tuple[str, ...]) -> str:
        """The --network-lock value a lock that runs these tools needs: "iptables" (CRIU's
        default, no option), "nftables", or "none" when neither works."""
        if not self.missing_tools(tools):
            return "iptables"
        return "nftables" if self.nftables_lock else "none"

    def tools_fact(self, tools: tuple[str, ...]) -> str:
        missing = self.missing_tools(tools)
        return f"no {' or '.join(missing)} on the dumper's PATH" if missing else ""

    # ------------------------------------------------------------ document

    def to_json(self) -> dict:
        creds = self.credentials
        return {
            "schema": "crwatch.environment/1",
            "kernel": self.kernel,
            "dumper": {
                "uid": creds.uid, "gid": creds.gid, "euid": creds.euid,
                "capabilities": {
                    name: {"hex": caps.hex, "missing": caps.missing()}
                    for name, caps in (("effective", creds.effective),
                                       ("permitted", creds.permitted),
                                       ("bounding", creds.bounding))
                },
                "can_checkpoint": self.can_checkpoint,
                "unprivileged": self.unprivileged,
                "sys_resource": self.has_sys_resource,
            },
            "criu": {"path": self.criu_path, "version": self.criu_version,
                     "features": dict(self.features), "libraries": dict(self.libraries)},
            "network_lock": {
                "path": self.path,
                "tools": dict(self.tools),
                "ipv6": self.ipv6,
                "connections": self.network_lock(IPTABLES_CONNECTION_TOOLS),
                "namespace": self.network_lock(self.namespace_tools),
            },
            "detected_in_seconds": round(self.seconds, 3),
        }


# ---------------------------------------------------------------- detection

def detect(criu: Criu | None, *, status_path: Path = Path("/proc/self/status"),
           path: str | None = None, cache: FactsCache | None = None) -> Environment:
    """The facts about this process as CRIU's parent, and about `criu` (what CRIU says
    of itself is taken from `cache`, by default the caller's, while it holds)."""
    started = time.monotonic()
    search = exec_path() if path is None else path
    credentials = Credentials.parse(status_path.read_text())
    tools = network_lock_tools(search)
    facts, facts_from = None, ""
    if criu is not None:
        # CRIU refuses every command, `check` included, to non-root without --unprivileged.
        facts, facts_from = criu_facts(criu, credentials.euid != 0,
                                       FactsCache.default() if cache is None else cache)
    return Environment(credentials=credentials, kernel=os.uname().release, path=search,
                       tools=tools, criu_path=criu.path if criu else None,
                       criu_version=criu.version_text if criu else None,
                       features=dict(facts.features) if facts else {},
                       libraries=dict(facts.libraries) if facts else {},
                       ipv6=os.path.exists("/proc/sys/net/ipv6"),
                       seconds=time.monotonic() - started, criu_facts_from=facts_from)


def criu_facts(criu: Criu, unprivileged: bool, cache: FactsCache) -> tuple[CriuFacts, str]:
    """What CRIU says of its features and libraries, and where that came from: "cache"
    when kept from an earlier run and nothing it depends on has changed, else "criu"
    (asked now, and kept when every run answered)."""
    kept = cache.load(criu.path)
    if kept is not None and kept.version == criu.version:
        return kept, "cache"
    asked_at = time.time_ns()
    runs: dict[str, Callable[[], object]] = {    # each is a CRIU run: all at once
        name: functools.partial(criu_has_feature, criu, name, unprivileged) for name in FEATURES}
    runs[LOADED] = functools.partial(criu_loaded_files, criu)
    answers = _in_parallel(runs)     # a run that failed in its thread has no answer: None
    loaded = answers.get(LOADED)
    features = {name: answers.get(name) for name in FEATURES}
    facts = CriuFacts(version=criu.version,
                      features={name: bool(answer) for name, answer in features.items()},
                      libraries=libraries_in(loaded or ()), loaded=loaded or ())
    if loaded is not None and None not in features.values():
        cache.store(criu.path, facts, asked_at)
    return facts, "criu"


def _in_parallel(calls: dict[str, Callable[[], object]]) -> dict[str, object]:
    """Each call's answer, the calls made in threads of their own at once."""
    answers: dict[str, object] = {}
    threads = [threading.Thread(target=lambda name=name, call=call: answers.update({name: call()}),
                                name=f"crwatch-criu-{name}") for name, call in calls.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def network_lock_tools(search: str) -> dict[str, str | None]:
    """Where each iptables tool CRIU's network lock runs is found on this PATH (None: not)."""
    return {tool: shutil.which(tool, path=search)
            for tool in (*IPTABLES_CONNECTION_TOOLS, *IPTABLES_NAMESPACE_TOOLS)}


def exec_path() -> str:
    """The PATH CRIU's execvp() and its `sh -c` search: the one it inherits."""
    return os.environ.get("PATH", DEFAULT_EXEC_PATH)


def criu_has_feature(criu: Criu, name: str, unprivileged: bool = False) -> bool | None:
    """`criu check --feature NAME` exits 0 when the feature works here (None: CRIU did not
    run or did not answer in time)."""
    command = [criu.path, "check", *(["--unprivileged"] if unprivileged else []), "--feature", name]
    try:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=FEATURE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.returncode == 0


def criu_loaded_files(criu: Criu) -> tuple[str, ...] | None:
    """The files a run of CRIU loads, through any wrapper script that execs it: the
    dynamic loader names each program it starts and each library it initialises
    (LD_DEBUG=libs). None: CRIU did not run."""
    env = dict(os.environ, LD_DEBUG="libs")
    try:
        result = subprocess.run([criu.path, "--version"], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, errors="replace", env=env,
                                timeout=FEATURE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    named = dict.fromkeys(match for match in _LOADED_FILE.findall(result.stderr)
                          if os.path.isabs(match))
    return tuple(named)


def libraries_in(loaded: tuple[str, ...]) -> dict[str, bool]:
    """Which of LIBRARIES are among the files CRIU's run loaded."""
    names = {Path(path).name for path in loaded}
    return {name: any(lib.startswith(soname) for lib in names)
            for name, soname in LIBRARIES.items()}


class Detection:
    """One detection's answer, awaited by every thread that asks meanwhile (what
    concurrent.futures' Future does, without the import that costs each command
    milliseconds)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._environment: Environment | None = None
        self._error: BaseException | None = None

    def set_result(self, environment: Environment) -> None:
        self._environment = environment
        self._done.set()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def result(self) -> Environment:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._environment is not None
        return self._environment


# Each CRIU's detection, begun once per process: callers in other threads await it.
_detections: dict[Criu | None, Detection] = {}
_detections_lock = threading.Lock()


def of(criu: Criu | None) -> Environment:
    """The environment of this CRIU (e.g. a gate's --criu), detected once per process."""
    with _detections_lock:
        begun = _detections.get(criu)
        if begun is None:
            begun = _detections[criu] = Detection()
            detecting = True
        else:
            detecting = False
    if detecting:
        _detect_into(begun, criu)
    return begun.result()


# current()'s answer being found and detected in the background (detect_ahead), which
# current() awaits rather than find CRIU a second time meanwhile.
_ahead: Detection | None = None


def current() -> Environment:
    """The environment of the CRIU find_criu() finds, detected once per process."""
    ahead = _ahead
    if ahead is not None:
        try:
            return ahead.result()
        except Exception:   # met again below, by the caller's own detection
            pass
    return of(find_criu())


def detect_ahead() -> None:
    """Begin finding CRIU and detecting current()'s environment in a background thread:
    current() then awaits that detection."""
    global _ahead
    with _detections_lock:
        if _ahead is not None:
            return
        _ahead = ahead = Detection()
    threading.Thread(target=_find_and_detect, args=(ahead,), daemon=True,
                     name="crwatch-environment").start()


def redetect() -> Environment:
    """Forget the cached facts (and the CRIU found) and detect again."""
    global _ahead
    with _detections_lock:
        _detections.clear()
        _ahead = None
    find_criu.cache_clear()
    return current()


def _detect_into(future: Detection, criu: Criu | None) -> None:
    try:
        future.set_result(detect(criu))
    except BaseException as error:
        with _detections_lock:      # a failed detection is not kept: the next call retries
            if _detections.get(criu) is future:
                del _detections[criu]
        future.set_exception(error)


def _find_and_detect(ahead: Detection) -> None:
    try:
        ahead.set_result(of(find_criu()))
    except BaseException as error:
        ahead.set_exception(error)
