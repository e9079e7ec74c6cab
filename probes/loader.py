"""Compile, attach and steer the kernel side (probes/crwatch.bpf.c). The only module that imports bcc.

`Probes()` finds kernel headers (this kernel's own first, then
$BCC_KERNEL_SOURCE or the repo's merged tree), mounts tracefs when needed,
checks which tracepoints exist, compiles the program with cflags (never by
editing its text) and attaches it. Every `#ifdef HAVE_<name>` block of
the C file is one probe: compiled only when all its tracepoints exist, and
reported as attached, missing or failed (a probe the kernel refuses is left
out and the rest loaded again). The process-lifecycle probes outside such
blocks (task_newtask, sched_process_exec/exit) are required.

Device opens are told apart in the kernel by the opened inode's major:minor,
read through this kernel's struct layout (probes/kernel_layout.py): the
devices the caller names quiet (`quiet_majors`, `quiet_devices`) never leave
the kernel unless opened with O_PATH. Without BTF every device open is reported.

The tracker steers the in-kernel filter maps through `track_fd`,
`untrack_fd`, `mark_lock_holder`, `mark_memory`, `watch`, `unwatch` and
`forget`. The
loader mirrors the tracked fds per process, so that a process's exit or a
close_range can be applied to the map (the kernel side cannot walk it), and
keeps its own bit per process that may hold tracked fds (`user_fd_holders`):
a close by a process with neither its bit nor the kernel side's costs no map
lookup.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from probes.events import KERNEL_MINOR_BITS, Event, Kind
from probes.kernel_layout import VMLINUX_BTF, LayoutError, layout_cflags, read_layout

PROBES_DIR = Path(__file__).resolve().parent
SOURCE = PROBES_DIR / "crwatch.bpf.c"
RECORD_HEADER = PROBES_DIR / "record.h"
REPO_HEADERS = PROBES_DIR.parent / ".deps" / "kernel-headers"
TRACEFS = Path("/sys/kernel/tracing")
DEBUGFS_TRACING = Path("/sys/kernel/debug/tracing")

DEFAULT_RING_PAGES = 1024          # 4 MiB: about 20,000 records
DEFAULT_MAX_TRACKED_FDS = 65536
DEFAULT_MAX_TASKS = 16384
CLOSE_RANGE_SPAN = 1024            # fds of a close_range that the kernel side untracks itself
PID_LIMIT = 4 * 1024 * 1024        # PID_MAX_LIMIT: pids are below it (a bit each in the holder maps)

ATTACHED, MISSING, FAILED, DISABLED = "attached", "missing", "failed", "disabled"
DEVICE_OPEN_PROBES = ("open", "openat", "openat2")   # the probes that use the struct layout
# Records of an fd the kernel side tracks from then on (note() mirrors it)
_TRACKING_KINDS = frozenset({Kind.FD_OPENED, Kind.FD_DUPED, Kind.TCP_CONNECTED})


class ProbeError(RuntimeError):
    """The kernel side cannot be loaded here; the message says why."""


@dataclass(frozen=True)
class Tracepoint:
    category: str
    event: str

    def __str__(self) -> str:
        return f"{self.category}:{self.event}"


@dataclass
class ProbeStatus:
    tracepoints: tuple[Tracepoint, ...]
    state: str = ATTACHED
    reason: str | None = None

    def as_dict(self) -> dict:
        return {"state": self.state, "reason": self.reason,
                "tracepoints": [str(tracepoint) for tracepoint in self.tracepoints]}


REQUIRED = "required"  # the probe name of the tracepoints outside any HAVE_ block

_IFDEF = re.compile(r"^#ifdef HAVE_(\w+)\s*$")
_TRACEPOINT = re.compile(r"^TRACEPOINT_PROBE\((\w+),\s*(\w+)\)")
_PROGRAM = re.compile(r"tracepoint__(\w+?)__(\w+)")


def probe_blocks(source: str) -> dict[str, tuple[Tracepoint, ...]]:
    """Probe name -> its tracepoints, read from the HAVE_ blocks of the C source."""
    blocks: dict[str, list[Tracepoint]] = {REQUIRED: []}
    current = REQUIRED
    for line in source.splitlines():
        if match := _IFDEF.match(line):
            current = match[1]
            blocks.setdefault(current, [])
        elif line.startswith("#endif"):
            current = REQUIRED
        elif match := _TRACEPOINT.match(line):
            blocks[current].append(Tracepoint(match[1], match[2]))
    return {name: tuple(tracepoints) for name, tracepoints in blocks.items() if tracepoints}


def probe_of_program(message: str, statuses: dict[str, ProbeStatus]) -> str | None:
    """The probe whose program bcc's error message names ("Failed to load BPF program
    b'tracepoint__syscalls__sys_enter_futex': ..."), if any."""
    match = _PROGRAM.search(message)
    if match is None:
        return None
    tracepoint = Tracepoint(match[1], match[2])
    return next((name for name, status in statuses.items()
                 if tracepoint in status.tracepoints), None)


def find_kernel_headers(release: str | None = None, modules: Path = Path("/lib/modules"),
                        environ: dict[str, str] | None = None,
                        repo_headers: Path = REPO_HEADERS) -> Path | None:
    """The header tree bcc should compile against: None means this kernel's own
    (bcc finds /lib/modules/<release>/build itself), else a fallback tree."""
    release = release or os.uname().release
    environ = os.environ if environ is None else environ
    if (modules / release / "build").is_dir():
        return None
    candidates = [Path(environ["BCC_KERNEL_SOURCE"])] if environ.get("BCC_KERNEL_SOURCE") else []
    for tree in candidates + [repo_headers]:
        if (tree / "include").is_dir():
            return tree
    raise ProbeError(
        f"no kernel headers: /lib/modules/{release}/build does not exist, "
        f"$BCC_KERNEL_SOURCE is {environ.get('BCC_KERNEL_SOURCE') or 'unset'} and "
        f"{repo_headers} is missing (run scripts/setup.sh to build the merged Debian tree)")


def ensure_tracefs() -> Path:
    """Where tracepoint formats are read; mounts tracefs when nothing provides them."""
    for tracing in (DEBUGFS_TRACING, TRACEFS):
        if (tracing / "events").is_dir():
            return tracing
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", str(TRACEFS).encode(), b"tracefs", 0, None) != 0:
        error = ctypes.get_errno()
        raise ProbeError(f"cannot mount tracefs at {TRACEFS}: {os.strerror(error)}")
    return TRACEFS


def _has_field(tracing: Path, tracepoint: Tracepoint, field: str) -> bool:
    path = tracing / "events" / tracepoint.category / tracepoint.event / "format"
    try:
        return re.search(rf"\b{field};", path.read_text()) is not None
    except OSError:
        return False


class Probes:
    """The loaded kernel side. Use as a context manager, or call close()."""

    def __init__(self, *, ring_pages: int = DEFAULT_RING_PAGES,
                 max_tracked_fds: int = DEFAULT_MAX_TRACKED_FDS,
                 max_tasks: int = DEFAULT_MAX_TASKS, disabled: Iterable[str] = (),
                 quiet_majors: Iterable[int] = (),
                 quiet_devices: Iterable[tuple[int, int]] = (), btf: Path = VMLINUX_BTF):
        """`disabled` names probes to leave out, e.g. "futex": every futex call of the
        host pays for that probe, and PI futexes only matter to the strict profile.
        `quiet_majors` (every minor) and `quiet_devices` (major, minor) are the character
        devices whose opens are not reported unless opened with O_PATH; `btf` is where
        the kernel's struct layout is read (without it, every device open is reported)."""
        if ring_pages <= 0 or ring_pages & (ring_pages - 1):
            raise ValueError(f"ring_pages must be a power of two, not {ring_pages}")
        self._headers = find_kernel_headers()
        if self._headers is None:
            os.environ.pop("BCC_KERNEL_SOURCE", None)
        else:
            os.environ["BCC_KERNEL_SOURCE"] = str(self._headers)
        self._tracefs = ensure_tracefs()
        from bcc import BPF  # after the mount: bcc picks its tracefs path at import

        self._bpf_class = BPF
        self._own_tgid = os.getpid()
        self._source = SOURCE.read_text()
        self._record_header = RECORD_HEADER.read_text()
        self._statuses = {name: ProbeStatus(tracepoints)
                          for name, tracepoints in probe_blocks(self._source).items()}
        for name in disabled:
            if name not in self._statuses or name == REQUIRED:
                raise ValueError(f"no optional probe named {name!r}")
            self._statuses[name].state, self._statuses[name].reason = DISABLED, "disabled"
        self._base_cflags = [
            f"-I{PROBES_DIR}",
            f"-DCRWATCH_TGID={self._own_tgid}",
            f"-DRINGBUF_PAGES={ring_pages}",
            f"-DMAX_TRACKED_FDS={max_tracked_fds}",
            f"-DMAX_TASKS={max_tasks}",
            f"-DPAGE_BYTES={os.sysconf('SC_PAGE_SIZE')}",
            f"-DCLOSE_RANGE_SPAN={CLOSE_RANGE_SPAN}",
            f"-DPID_LIMIT={PID_LIMIT}",
        ]
        self._layout_cflags: list[str] = []
        try:
            self._layout_cflags = layout_cflags(read_layout(btf))
            self.device_filter = {"state": "in kernel", "reason": "by major:minor, with the "
                                  "struct layout of this kernel's BTF"}
        except LayoutError as error:
            self.device_filter = {"state": "off", "reason": f"every device open is reported: "
                                  f"{error}"}
        exit_tracepoint = Tracepoint("sched", "sched_process_exit")
        if _has_field(self._tracefs, exit_tracepoint, "group_dead"):
            self._base_cflags.append("-DHAVE_GROUP_DEAD")
        self._ring_bytes = ring_pages * os.sysconf("SC_PAGE_SIZE")
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._tracked: dict[int, set[int]] = {}
        self._holder_words: dict[int, int] = {}    # user_fd_holders, which only we write
        self._failed_inserts = 0
        self._kernel_lost = 0
        self._check_tracepoints()
        started = time.monotonic()
        self._bpf = self._load()
        self.load_seconds = time.monotonic() - started
        self._tables = {name: self._bpf[name.encode()] for name in
                        ("tracked_fds", "watched", "lock_holders", "locks_reported",
                         "memory_marked", "lost", "quiet_majors", "quiet_devices",
                         "kernel_fd_holders", "user_fd_holders")}
        self._quiet(quiet_majors, quiet_devices)

    # ------------------------------------------------------------ loading

    def _check_tracepoints(self) -> None:
        for name, status in self._statuses.items():
            absent = [str(tracepoint) for tracepoint in status.tracepoints
                      if not self._bpf_class.tracepoint_exists(tracepoint.category,
                                                              tracepoint.event)]
            if absent and name == REQUIRED:
                raise ProbeError(f"required tracepoints missing: {', '.join(absent)}")
            if absent and status.state == ATTACHED:
                status.state, status.reason = MISSING, f"no tracepoint {', '.join(absent)}"

    def cflags(self) -> list[str]:
        enabled = [f"-DHAVE_{name}" for name, status in self._statuses.items()
                   if name != REQUIRED and status.state == ATTACHED]
        return self._base_cflags + self._layout_cflags + enabled

    def _load(self):
        """Compile and attach; a probe the kernel refuses is marked failed and left out,
        a device filter it refuses is left out (every device open is reported)."""
        while True:
            bpf = self._bpf_class.__new__(self._bpf_class)  # kept, to detach a partial attach
            try:
                bpf.__init__(src_file=str(SOURCE).encode(), cflags=self.cflags())
                return bpf
            except Exception as error:  # bcc raises bare Exceptions
                bpf.cleanup()
                atexit.unregister(bpf.cleanup)
                name = probe_of_program(str(error), self._statuses)
                if name in DEVICE_OPEN_PROBES and self._layout_cflags:
                    # the filter's plain loads through the BTF task pointer need 5.11 and
                    # offsets the verifier accepts: without them, judged by path
                    self._layout_cflags = []
                    self.device_filter = {"state": "off", "reason": "every device open is "
                                          f"reported: the kernel refused the filter: {error}"}
                    continue
                if name is None or name == REQUIRED:
                    raise ProbeError(f"cannot load {SOURCE.name}: {error}") from error
                self._statuses[name].state = FAILED
                self._statuses[name].reason = str(error)

    def _quiet(self, majors: Iterable[int], devices: Iterable[tuple[int, int]]) -> None:
        majors = frozenset(majors)
        table = self._tables["quiet_majors"]
        for major in majors:
            table[table.Key(major)] = table.Leaf(1)
        table = self._tables["quiet_devices"]
        for major, minor in devices:
            if major not in majors:
                table[table.Key(major << KERNEL_MINOR_BITS | minor)] = table.Leaf(1)

    # ------------------------------------------------------------ reading

    def open_events(self, callback: Callable[[int, int, int], int]) -> None:
        """Call `callback(ctx, data, size)` for each record; `data` is valid only during the call."""
        self._bpf[b"events"].open_ring_buffer(callback)

    def events_fd(self) -> int:
        """The fd of the ring buffer's map (its positions can be mapped from it)."""
        return self._bpf[b"events"].map_fd

    def poll(self, timeout_ms: int) -> bool:
        """Hand the waiting records to the callback, waiting up to `timeout_ms` for the
        first; False once the probes are closed (the reader thread then ends)."""
        with self._poll_lock:
            if self._bpf is None:
                return False
            self._bpf.ring_buffer_poll(timeout_ms)
            return True

    def lost_in_kernel(self) -> int:
        """Records the kernel side could not send, plus map inserts that failed (the
        state they would have tracked goes unseen). The last count once closed."""
        with self._poll_lock:
            if self._bpf is not None:
                self._kernel_lost = sum(count.value for count in self._tables["lost"].values())
        return self._kernel_lost + self._failed_inserts

    # ------------------------------------------------------------ steering

    def track_fd(self, tgid: int, fd: int) -> None:
        if tgid == self._own_tgid:
            return
        table = self._tables["tracked_fds"]
        with self._lock:
            self._set_holder(tgid, True)  # before the fd is in the map: no close may miss it
            self._put(table, table.Key(tgid, fd), time.monotonic_ns())
            self._tracked.setdefault(tgid, set()).add(fd)
        self.watch(tgid)

    def untrack_fd(self, tgid: int, fd: int, judged_ns: int | None = None) -> None:
        """Stop reporting the fd's close and dups. `judged_ns`: when /proc was read to
        judge it; an fd the kernel side tracked again since (closed and made anew
        meanwhile) stays tracked."""
        table = self._tables["tracked_fds"]
        key = table.Key(tgid, fd)
        with self._lock:
            if judged_ns is not None:
                since = table.get(key)
                if since is not None and since.value > judged_ns:
                    return
            self._delete(table, key)
            fds = self._tracked.get(tgid)
            if fds is not None:
                fds.discard(fd)

    def mark_lock_holder(self, tgid: int) -> None:
        self._mark("lock_holders", tgid)
        self.watch(tgid)

    def locks_read(self, tgid: int) -> None:
        """The tracker reads the process's locks now: report its next lock change."""
        table = self._tables["locks_reported"]
        self._delete(table, table.Key(tgid))

    def mark_memory(self, tgid: int) -> None:
        """The process has nonlinear or SysV shm mappings: report its munmap and shmdt."""
        self._mark("memory_marked", tgid)
        self.watch(tgid)

    def watch(self, pid: int) -> None:
        """Report the fork, exec and exit of this process (or thread: a tracee, a tracer)."""
        self._mark("watched", pid)

    def unwatch(self, pid: int) -> None:
        """Stop reporting the fork, exec and exit of a process with no marks left (the
        kernel side watches a process from its first state on, and never lets go itself)."""
        table = self._tables["watched"]
        with self._lock:
            self._delete(table, table.Key(pid))

    def forget(self, tgid: int) -> None:
        """Drop everything the kernel side holds about a process (it exited)."""
        table = self._tables["tracked_fds"]
        with self._lock:
            for fd in self._tracked.pop(tgid, ()):
                self._delete(table, table.Key(tgid, fd))
            self._set_holder(tgid, False)
        for name in ("watched", "lock_holders", "locks_reported", "memory_marked"):
            table = self._tables[name]
            self._delete(table, table.Key(tgid))

    def note(self, event: Event) -> None:
        """Keep the maps right for what the kernel side cannot do itself (called by the reader)."""
        kind = event.kind
        if kind in _TRACKING_KINDS:
            with self._lock:
                fds = self._tracked.get(event.tgid)
                if fds is None:
                    fds = self._tracked[event.tgid] = set()
                fds.add(event.fd)
        elif kind is Kind.FD_CLOSED:
            with self._lock:
                fds = self._tracked.get(event.tgid)
                if fds is not None:
                    fds.discard(event.fd)
        elif kind is Kind.FD_RANGE_CLOSED:
            self._untrack_range(event.tgid, event.arg, event.arg2)
        elif kind is Kind.EXITED and event.arg == 1:
            self.forget(event.tgid)

    def prune_exited(self) -> None:
        """Forget processes that are gone: after a loss their exit may never have been seen."""
        with self._lock:
            tgids = list(self._tracked)
        for tgid in tgids:
            if not os.path.exists(f"/proc/{tgid}"):
                self.forget(tgid)

    def tracked_in_kernel(self, tgid: int) -> list[int]:
        """The fds of `tgid` in the kernel's tracked-fd map (walks the whole map: diagnostics)."""
        return sorted(key.fd for key in self._tables["tracked_fds"].keys() if key.tgid == tgid)

    def may_hold_tracked_fds(self, tgid: int) -> bool:
        """Whether the kernel side looks a close by `tgid` up in the tracked-fd map (its
        own bit or ours is set); a close by any other process is passed over."""
        word, bit = divmod(tgid, 64)
        return any(self._tables[name][ctypes.c_uint32(word)].value >> bit & 1
                   for name in ("kernel_fd_holders", "user_fd_holders"))

    def _untrack_range(self, tgid: int, first: int, last: int) -> None:
        """The kernel side untracked the first CLOSE_RANGE_SPAN fds of the range itself."""
        table = self._tables["tracked_fds"]
        with self._lock:
            fds = self._tracked.get(tgid, set())
            for fd in [fd for fd in fds if first <= fd <= last]:
                fds.discard(fd)
                if fd >= first + CLOSE_RANGE_SPAN:
                    self._delete(table, table.Key(tgid, fd))

    def _mark(self, name: str, pid: int) -> None:
        if pid == self._own_tgid:
            return
        table = self._tables[name]
        with self._lock:
            self._put(table, table.Key(pid))

    def _set_holder(self, tgid: int, holds: bool) -> None:
        """Our bit of `tgid` in user_fd_holders (the kernel side keeps its own map)."""
        word, bit = divmod(tgid, 64)
        old = self._holder_words.get(word, 0)
        new = old | 1 << bit if holds else old & ~(1 << bit)
        if new != old:
            table = self._tables["user_fd_holders"]
            table[table.Key(word)] = table.Leaf(new)
            self._holder_words[word] = new

    def _put(self, table, key, value: int = 1) -> None:
        try:
            table[key] = table.Leaf(value)
        except Exception:  # bcc: "Could not update table" (the map is full)
            self._failed_inserts += 1

    @staticmethod
    def _delete(table, key) -> None:
        try:
            del table[key]
        except KeyError:
            pass

    # ------------------------------------------------------------ reporting

    def status(self) -> dict:
        return {
            "headers": str(self._headers) if self._headers else f"/lib/modules/{os.uname().release}/build",
            "tracefs": str(self._tracefs),
            "load_seconds": round(self.load_seconds, 3),
            "ring_buffer_bytes": self._ring_bytes,
            "device_filter": self.device_filter,
            "probes": {name: status.as_dict() for name, status in self._statuses.items()},
        }

    def source_and_cflags(self) -> str:
        """Exactly what was compiled: the header, the program, and the cflags."""
        return (f"// {RECORD_HEADER.name}\n{self._record_header}\n"
                f"// {SOURCE.name}\n{self._source}\n"
                f"// cflags: {' '.join(self.cflags())}\n")

    def close(self) -> None:
        with self._poll_lock:  # not while the reader thread is inside a poll
            bpf, self._bpf = self._bpf, None
        if bpf is not None:
            bpf.cleanup()
            atexit.unregister(bpf.cleanup)

    def __enter__(self) -> Probes:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
