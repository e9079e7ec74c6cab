"""The kernel side for real: real BPF, real syscalls from real subject processes.

For every event kind a subject makes the syscall and the event arrives; what
the kernel side must filter out does not. Absence is proved without sleeping:
a subject ends with a marker (an open of /dev/full), and since one task's
records reach the ring buffer in the order it made them, every event it sent
before the marker has arrived once the marker has.
"""
from __future__ import annotations

import os
import platform
import queue
import signal
import struct
import threading
import time
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from probes.events import Event, Kind, Special
from probes.kernel_layout import FIELDS
from probes.loader import (
    ATTACHED,
    REQUIRED,
    SOURCE,
    ProbeError,
    Probes,
    ProbeStatus,
    Tracepoint,
    find_kernel_headers,
    probe_blocks,
    probe_of_program,
)
from probes.reader import Reader
from probes.wire import COMM_LEN, PATH_LEN, RECORD_SIZE, Record
from tests.support.subjects import Subject, skip_if_refused, subject
from tracker.checks import devices
from tracker.supervised import Worker

TIMEOUT = 10.0
MARKER = "/dev/full"

if platform.machine() != "x86_64":
    pytest.skip("the subjects use x86_64 syscall numbers", allow_module_level=True)

# Prepended to every subject's code: raw syscalls, the marker, and go() to
# wait for the test (SIGUSR1 is blocked so that it waits instead of killing).
NATIVE = """
import threading, tempfile
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def syscall(nr, *args):
    ret = libc.syscall(nr, *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    if ret < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return ret
def marker():
    os.close(os.open("/dev/full", os.O_RDONLY))
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
def go():
    signal.sigwait({signal.SIGUSR1})
def addr(value):
    return ctypes.addressof(value)
SYS_OPEN, SYS_FUTEX, SYS_REMAP, SYS_CLOSE_RANGE, SYS_OPENAT2 = 2, 202, 216, 436, 437
"""


class Inbox:
    """Every event the reader delivers, kept for the tests to await."""

    def __init__(self, reader: Reader):
        self._reader = reader
        self._events: list[Event] = []
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stopping.is_set():
            try:
                event = self._reader.events.get(timeout=0.1)
            except queue.Empty:
                continue
            with self._changed:
                self._events.append(event)
                self._changed.notify_all()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(TIMEOUT)

    def clear(self) -> None:
        """Forget what arrived so far: a later subject may get a pid seen before."""
        with self._changed:
            self._events.clear()

    def wait_for(self, predicate: Callable[[Event], bool], count: int = 1) -> list[Event]:
        """The first `count` matching events, once they have arrived."""
        def found() -> list[Event]:
            return [event for event in self._events if predicate(event)]
        with self._changed:
            if not self._changed.wait_for(lambda: len(found()) >= count, TIMEOUT):
                raise AssertionError(f"only {len(found())} of {count} events arrived "
                                     f"within {TIMEOUT} s")
            return found()[:count]

    def of(self, tgid: int) -> list[Event]:
        with self._changed:
            return [event for event in self._events if event.tgid == tgid]

    def until_marker(self, tgid: int, markers: int = 1) -> list[Event]:
        """The events of `tgid` up to its `markers`-th marker (inclusive)."""
        last = self.wait_for(lambda e: e.tgid == tgid and is_marker(e), markers)[-1]
        events = self.of(tgid)
        return events[:events.index(last) + 1]


def is_marker(event: Event) -> bool:
    return event.kind is Kind.FD_OPENED and event.path == MARKER


def kinds(events: list[Event]) -> list[Kind]:
    return [event.kind for event in events if not is_marker(event)
            and not (event.kind is Kind.FD_CLOSED and event.fd == marker_fd(events))]


def marker_fd(events: list[Event]) -> int | None:
    return next((event.fd for event in events if is_marker(event)), None)


def between_markers(events: list[Event]) -> list[list[Event]]:
    """The events of one task split at its markers: what each step sent."""
    steps, step = [], []
    for event in events:
        if is_marker(event):
            steps.append(step)
            step = []
        elif not (event.kind is Kind.FD_CLOSED and steps and event.fd == marker_fd(events)):
            step.append(event)
    return steps


@pytest.fixture(scope="module")
def probes():
    with Probes() as loaded:
        yield loaded


@contextmanager
def reading_inbox(loaded: Probes) -> Iterator[Inbox]:
    """An inbox filled by a reader of these probes, polling on a worker of its own."""
    reader = Reader(loaded)
    reading = Worker("probe-reader", reader.poll_once).start()
    box = Inbox(reader)
    try:
        yield box
    finally:
        reading.stop()
        box.close()


@pytest.fixture(scope="module")
def module_inbox(probes):
    with reading_inbox(probes) as box:
        yield box


@pytest.fixture
def inbox(module_inbox):
    module_inbox.clear()
    return module_inbox


def run(code: str, **kwargs) -> AbstractContextManager[Subject]:
    return subject(NATIVE + code, **kwargs)


MAPPING = """
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
def mapping(size, shared_fd=-1):
    flags = 1 if shared_fd >= 0 else 0x22     # MAP_SHARED, or MAP_PRIVATE|MAP_ANONYMOUS
    return libc.mmap(None, size, 3, flags, shared_fd, 0)
"""


# ------------------------------------------------------------ the loader


@pytest.mark.bpf
def test_every_probe_attaches_here(probes):
    status = probes.status()
    assert {name: probe["state"] for name, probe in status["probes"].items()
            if probe["state"] != ATTACHED} == {}
    assert status["load_seconds"] < 30
    assert status["ring_buffer_bytes"] == 4 * 1024 * 1024


@pytest.mark.bpf
def test_the_printed_program_is_what_was_compiled(probes):
    text = probes.source_and_cflags()
    assert SOURCE.read_text() in text
    assert f"-DCRWATCH_TGID={os.getpid()}" in text
    assert "-DHAVE_futex" in text and "-DHAVE_GROUP_DEAD" in text


def test_probe_blocks_name_their_tracepoints():
    blocks = probe_blocks(SOURCE.read_text())
    assert set(blocks[REQUIRED]) == {Tracepoint("task", "task_newtask"),
                                     Tracepoint("sched", "sched_process_exec"),
                                     Tracepoint("sched", "sched_process_exit")}
    assert blocks["futex"] == (Tracepoint("syscalls", "sys_enter_futex"),
                               Tracepoint("syscalls", "sys_exit_futex"))
    assert blocks["close"] == (Tracepoint("syscalls", "sys_enter_close"),)
    assert all(tracepoint.category == "filelock" for tracepoint in blocks["filelock"])


def test_a_refused_program_is_traced_to_its_probe():
    statuses = {name: ProbeStatus(tracepoints)
                for name, tracepoints in probe_blocks(SOURCE.read_text()).items()}
    message = ("Failed to load BPF program b'tracepoint__syscalls__sys_exit_futex': "
               "Permission denied")
    assert probe_of_program(message, statuses) == "futex"
    assert probe_of_program("Failed to attach BPF program b'tracepoint__task__task_newtask' "
                            "to tracepoint b'task:task_newtask'", statuses) == REQUIRED
    assert probe_of_program("Failed to compile BPF module", statuses) is None


@pytest.mark.bpf
def test_closing_ends_the_reader():
    with Probes(ring_pages=1) as loaded:
        reading = Worker("probe-reader", Reader(loaded).poll_once).start()
    wait_until(lambda: not reading.is_alive())
    assert loaded.poll(0) is False
    # not asked to stop: its source went, which /healthz shows
    assert reading.state == "dead"


def test_headers_matching_the_kernel_come_first(tmp_path):
    (tmp_path / "modules" / "6.18.0" / "build").mkdir(parents=True)
    fallback = tmp_path / "fallback"
    (fallback / "include").mkdir(parents=True)
    environ = {"BCC_KERNEL_SOURCE": str(fallback)}
    assert find_kernel_headers("6.18.0", tmp_path / "modules", environ, fallback) is None
    assert find_kernel_headers("6.19.0", tmp_path / "modules", environ, tmp_path) == fallback
    assert find_kernel_headers("6.19.0", tmp_path / "modules", {}, fallback) == fallback
    with pytest.raises(ProbeError, match="no kernel headers"):
        find_kernel_headers("6.19.0", tmp_path / "modules", {}, tmp_path / "absent")


@pytest.mark.bpf
def test_a_disabled_probe_is_left_out():
    with Probes(disabled=("futex",), ring_pages=1) as loaded:
        assert loaded.status()["probes"]["futex"]["state"] == "disabled"
        assert "-DHAVE_futex" not in loaded.cflags()
    with pytest.raises(ValueError):
        Probes(disabled=("no_such_probe",))


BPF_LAYOUT = """
#include "record.h"
BPF_ARRAY(layout, u64, 64);
static __always_inline void put(u32 slot, u64 value) { layout.update(&slot, &value); }
TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    if ((bpf_get_current_pid_tgid() >> 32) != TEST_TGID)
        return 0;
    put(0, sizeof(struct record));
    put(1, __builtin_offsetof(struct record, kind));
    put(2, __builtin_offsetof(struct record, tgid));
    put(3, __builtin_offsetof(struct record, ts_ns));
    put(4, __builtin_offsetof(struct record, tid));
    put(5, __builtin_offsetof(struct record, comm));
    put(6, __builtin_offsetof(struct record, fd));
    put(7, __builtin_offsetof(struct record, arg));
    put(8, __builtin_offsetof(struct record, arg2));
    put(9, __builtin_offsetof(struct record, special));
    put(10, __builtin_offsetof(struct record, path));
    put(11, COMM_LEN);
    put(12, PATH_LEN);
    put(20 + KIND_FD_OPENED, 1); put(20 + KIND_FD_CLOSED, 2); put(20 + KIND_FD_RANGE_CLOSED, 3);
    put(20 + KIND_FD_DUPED, 4); put(20 + KIND_PI_WAITING, 5); put(20 + KIND_PI_ACQUIRED, 6);
    put(20 + KIND_PI_NOT_ACQUIRED, 7); put(20 + KIND_PI_RELEASED, 8);
    put(20 + KIND_NONLINEAR, 9); put(20 + KIND_UNMAPPED, 10); put(20 + KIND_TRACED, 11);
    put(20 + KIND_UNTRACED, 12); put(20 + KIND_LOCKS_CHANGED, 13); put(20 + KIND_NEW_PID_NS, 14);
    put(20 + KIND_SHM_ATTACHED, 15); put(20 + KIND_SHM_DETACHED, 16); put(20 + KIND_FORKED, 17);
    put(20 + KIND_EXECED, 18); put(20 + KIND_EXITED, 19); put(20 + KIND_TCP_CONNECTED, 20);
    put(50 + SPECIAL_DEVICE, 1); put(50 + SPECIAL_PERF_EVENT, 2); put(50 + SPECIAL_IO_URING, 3);
    put(50 + SPECIAL_USERFAULTFD, 4); put(50 + SPECIAL_BPF, 5); put(50 + SPECIAL_FANOTIFY, 6);
    put(50 + SPECIAL_OTHER, 7);
    return 0;
}
"""


@pytest.mark.bpf
def test_the_python_mirror_matches_the_compiled_record(probes):
    # `probes` first: it has set up headers and tracefs for bcc
    from bcc import BPF

    bpf = BPF(text=BPF_LAYOUT.encode(), cflags=[f"-I{SOURCE.parent}", f"-DTEST_TGID={os.getpid()}"])
    try:
        os.getppid()
        values = [value.value for value in bpf[b"layout"].values()]
    finally:
        bpf.cleanup()
    fields = ["kind", "tgid", "ts_ns", "tid", "comm", "fd", "arg", "arg2", "special", "path"]
    assert values[0] == RECORD_SIZE
    assert values[1:11] == [getattr(Record, name).offset for name in fields]
    assert values[11:13] == [COMM_LEN, PATH_LEN]
    # each C constant was written at its own number: the slot holds the Python number
    assert all(values[20 + kind.value] == kind.value for kind in Kind if kind is not Kind.LOST)
    assert all(values[50 + special.value] == special.value for special in Special
               if special is not Special.NONE)


# ------------------------------------------------------------ device opens


@pytest.mark.parametrize("how", ["openat", "open", "openat2"])
@pytest.mark.bpf
def test_a_device_open_is_reported_with_its_path(inbox, how):
    opens = {
        "openat": 'os.open("/dev/null", os.O_RDONLY)',
        "open": 'syscall(SYS_OPEN, b"/dev/null", 0)',
        # struct open_how {u64 flags, mode, resolve}
        "openat2": 'syscall(SYS_OPENAT2, -100, b"/dev/null", (ctypes.c_uint64 * 3)(0, 0, 0), 24)',
    }
    with run(f"""
regular = os.open("/etc/hostname", os.O_RDONLY)
fd = {opens[how]}
marker()
ready(str(fd))
hold()
""") as running:
        events = inbox.until_marker(running.pid)
    opened = [event for event in events if event.kind is Kind.FD_OPENED and not is_marker(event)]
    assert [(event.fd, event.special, event.path) for event in opened] == \
        [(int(running.note), Special.DEVICE, "/dev/null")]
    assert opened[0].comm.startswith("python")


@pytest.fixture(scope="module")
def quiet_inbox():
    """Probes told which devices are quiet, as the tracker tells them."""
    with Probes(quiet_majors=devices.QUIET_DEVICES.majors,
                quiet_devices=devices.QUIET_DEVICES.devices) as loaded:
        if loaded.status()["device_filter"]["state"] != "in kernel":
            pytest.skip(loaded.status()["device_filter"]["reason"])
        with reading_inbox(loaded) as box:
            yield box


@pytest.mark.bpf
def test_quiet_devices_stay_in_the_kernel_and_the_others_are_reported(quiet_inbox):
    """Opens of null, zero, urandom, ptmx never reach user space, nor their closes; a
    quiet device opened with O_PATH, /dev/fuse and /dev/kvm (the last, the marker) do."""
    with run("""
for path in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/ptmx"):
    os.close(os.open(path, os.O_RDWR))
os.close(syscall(SYS_OPENAT2, -100, b"/dev/null", (ctypes.c_uint64 * 3)(0, 0, 0), 24))
null_path = os.open("/dev/null", os.O_PATH)
fuse = os.open("/dev/fuse", os.O_RDWR)
os.close(fuse)
kvm = os.open("/dev/kvm", os.O_RDWR)
ready(f"{null_path} {fuse} {kvm}")
hold()
""") as running:
        null_path, fuse, kvm = map(int, running.note.split())
        quiet_inbox.wait_for(lambda e: e.tgid == running.pid and e.path == "/dev/kvm")
        events = quiet_inbox.of(running.pid)
    assert [(event.kind, event.fd, event.path) for event in events
            if event.kind in (Kind.FD_OPENED, Kind.FD_CLOSED)] == [
        (Kind.FD_OPENED, null_path, "/dev/null"), (Kind.FD_OPENED, fuse, "/dev/fuse"),
        (Kind.FD_CLOSED, fuse, ""), (Kind.FD_OPENED, kvm, "/dev/kvm")]


@pytest.mark.bpf
def test_a_device_opened_by_a_path_outside_dev_is_reported(quiet_inbox, tmp_path):
    """Every open's inode is looked at, whatever its path: a device opened relative to
    a directory fd or through a symlink is reported, with the path it was opened by
    unless the open slept (then the per-CPU note of the path may be another's, and
    the record has none), a quiet one by no path is not."""
    (tmp_path / "kvm-link").symlink_to("/dev/kvm")
    with run(f"""
dev = os.open("/dev", os.O_RDONLY | os.O_DIRECTORY)
os.close(os.open("null", os.O_RDWR, dir_fd=dev))
relative = os.open("kvm", os.O_RDWR, dir_fd=dev)
linked = os.open({str(tmp_path / "kvm-link")!r}, os.O_RDWR)
ready(f"{{relative}} {{linked}}")
hold()
""") as running:
        relative, linked = map(int, running.note.split())
        quiet_inbox.wait_for(lambda e: e.tgid == running.pid and e.fd == linked)
        events = quiet_inbox.of(running.pid)
    opened = [event for event in events if event.kind is Kind.FD_OPENED]
    assert [(event.fd, event.special) for event in opened] == [
        (relative, Special.DEVICE), (linked, Special.DEVICE)]
    assert [event.path in (path, "") for event, path in
            zip(opened, ["kvm", str(tmp_path / "kvm-link")])] == [True, True]


def assert_dev_null_open_reported(loaded: Probes) -> None:
    """With the device filter off, an open of /dev/null reaches user space, with its path."""
    with reading_inbox(loaded) as box, run("""
fd = os.open("/dev/null", os.O_RDONLY)
marker()
ready(str(fd))
hold()
""") as running:
        events = box.until_marker(running.pid)
    assert [(event.fd, event.path) for event in events if event.kind is Kind.FD_OPENED
            and not is_marker(event)] == [(int(running.note), "/dev/null")]


@pytest.mark.bpf
def test_without_btf_every_device_open_is_reported_with_its_path(tmp_path):
    with Probes(quiet_majors=devices.QUIET_DEVICES.majors,
                quiet_devices=devices.QUIET_DEVICES.devices, btf=tmp_path / "none") as loaded:
        assert loaded.status()["device_filter"]["state"] == "off"
        assert "-DTASK_FILES_OFFSET" not in " ".join(loaded.cflags())
        assert_dev_null_open_reported(loaded)


def wrong_layout_btf(path: Path) -> Path:
    """A BTF file that puts every field the device filter reads at offset 0 of its
    struct (as an int): the verifier refuses the loads the filter makes from it."""
    names = sorted({name for pair in FIELDS.values() for name in pair})
    strings = b"\0int\0" + b"".join(name.encode() + b"\0" for name in names)
    offset = {name: strings.index(b"\0" + name.encode() + b"\0") + 1 for name in names}
    types = [struct.pack("<IIII", 1, 1 << 24, 4, 32)]                      # 1: int
    for struct_name in sorted({struct_name for struct_name, _ in FIELDS.values()}):
        fields = [field for owner, field in FIELDS.values() if owner == struct_name]
        types.append(struct.pack("<III", offset[struct_name], 4 << 24 | len(fields), 64) +
                     b"".join(struct.pack("<III", offset[field], 1, 0) for field in fields))
    section = b"".join(types)
    path.write_bytes(struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(section), len(section),
                                 len(strings)) + section + strings)
    return path


@pytest.mark.bpf
def test_a_device_filter_the_kernel_refuses_is_left_out(tmp_path):
    """Every open still reports its device, judged by path, and the status says why."""
    with Probes(quiet_majors=devices.QUIET_DEVICES.majors,
                quiet_devices=devices.QUIET_DEVICES.devices,
                btf=wrong_layout_btf(tmp_path / "vmlinux")) as loaded:
        status = loaded.status()
        assert status["device_filter"]["state"] == "off"
        assert "refused" in status["device_filter"]["reason"]
        assert status["probes"]["openat"]["state"] == ATTACHED
        assert "-DTASK_FILES_OFFSET" not in " ".join(loaded.cflags())
        assert_dev_null_open_reported(loaded)


# ------------------------------------------------------------ close, dup, close_range


@pytest.mark.bpf
def test_only_tracked_fds_report_their_close(inbox):
    with run("""
device = os.open("/dev/null", os.O_RDONLY)
regular = os.open("/etc/hostname", os.O_RDONLY)
os.close(regular)
os.close(device)
marker()
ready(f"{device} {regular}")
hold()
""") as running:
        device, regular = map(int, running.note.split())
        events = inbox.until_marker(running.pid)
    closed = [event.fd for event in events if event.kind is Kind.FD_CLOSED]
    assert device in closed and regular not in closed


@pytest.mark.bpf
def test_dups_of_a_tracked_fd_are_reported_and_tracked(inbox):
    with run("""
fd = os.open("/dev/null", os.O_RDONLY)
regular = os.open("/etc/hostname", os.O_RDONLY)
copies = [os.dup(fd), os.dup2(fd, 20), os.dup2(fd, 21, inheritable=False),
          fcntl.fcntl(fd, fcntl.F_DUPFD, 30), fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 40)]
os.dup(regular); os.dup2(regular, 50); fcntl.fcntl(regular, fcntl.F_DUPFD, 60)
os.close(40)
marker()
ready(" ".join(map(str, [fd] + copies)))
hold()
""") as running:
        fd, *copies = map(int, running.note.split())
        events = inbox.until_marker(running.pid)
    duped = [(event.fd, event.arg) for event in events if event.kind is Kind.FD_DUPED]
    assert duped == [(copy, fd) for copy in copies]
    assert 40 in [event.fd for event in events if event.kind is Kind.FD_CLOSED]


@pytest.mark.bpf
def test_dup2_over_a_tracked_fd_closes_it_first(inbox):
    with run("""
null = os.open("/dev/null", os.O_RDONLY)
zero = os.open("/dev/zero", os.O_RDONLY)
os.dup2(null, zero)
marker()
ready(f"{null} {zero}")
hold()
""") as running:
        null, zero = map(int, running.note.split())
        events = inbox.until_marker(running.pid)
    after_opens = [(event.kind, event.fd, event.arg) for event in events
                   if event.kind in (Kind.FD_CLOSED, Kind.FD_DUPED) and event.fd == zero]
    assert after_opens == [(Kind.FD_CLOSED, zero, 0), (Kind.FD_DUPED, zero, null)]


@pytest.mark.bpf
def test_close_range_is_reported_and_untracks_the_range(inbox):
    with run("""
fd = os.open("/dev/null", os.O_RDONLY)
syscall(SYS_CLOSE_RANGE, fd, fd + 10, 0)
again = os.open("/etc/hostname", os.O_RDONLY)   # the same number at once, a regular file
os.close(again)
marker()
ready(f"{fd} {again}")
hold()
""") as running:
        fd, again = map(int, running.note.split())
        events = inbox.until_marker(running.pid)
    assert again == fd
    ranged = [(event.arg, event.arg2) for event in events if event.kind is Kind.FD_RANGE_CLOSED]
    assert ranged == [(fd, fd + 10)]
    assert [event for event in events if event.kind is Kind.FD_CLOSED and event.fd == fd] == []


@pytest.mark.bpf
def test_the_tracker_can_track_and_untrack_fds(probes, inbox):
    with run("""
fds = [os.open("/etc/hostname", os.O_RDONLY) for _ in range(3)]
ready(" ".join(map(str, fds)))
go()
for fd in fds:
    os.close(fd)
marker()
hold()
""") as running:
        kept, dropped, retracked = map(int, running.note.split())
        probes.track_fd(running.pid, kept)
        probes.track_fd(running.pid, dropped)
        probes.untrack_fd(running.pid, dropped)
        # judged before it was tracked (again): an untrack from that judgement is stale
        judged = time.monotonic_ns()
        probes.track_fd(running.pid, retracked)
        probes.untrack_fd(running.pid, retracked, judged_ns=judged)
        os.kill(running.pid, signal.SIGUSR1)
        events = inbox.until_marker(running.pid)
    assert [event.fd for event in events if event.kind is Kind.FD_CLOSED] == [kept, retracked]


@pytest.mark.bpf
def test_a_close_is_looked_up_only_for_processes_that_may_hold_tracked_fds(probes, inbox):
    """The kernel side marks a process when it tracks one of its fds and unmarks it when
    it dies; the loader marks the processes whose fds it tracks and unmarks those it
    forgets. A process marked by the loader again after being forgotten reports its
    close."""
    with run("""
device = os.open("/dev/kvm", os.O_RDWR)
regular = os.open("/etc/hostname", os.O_RDONLY)
ready(f"{device} {regular}")
go()
os.close(regular)
marker()
hold()
""") as by_kernel, run("""
regular = os.open("/etc/hostname", os.O_RDONLY)
ready(str(regular))
go()
os.close(regular)
marker()
hold()
""") as by_loader:
        inbox.wait_for(lambda e: e.tgid == by_kernel.pid and e.kind is Kind.FD_OPENED)
        assert probes.may_hold_tracked_fds(by_kernel.pid)
        assert not probes.may_hold_tracked_fds(by_loader.pid)
        regular = int(by_loader.note)
        probes.track_fd(by_loader.pid, regular)
        probes.forget(by_loader.pid)
        assert not probes.may_hold_tracked_fds(by_loader.pid)
        probes.track_fd(by_loader.pid, regular)
        assert probes.may_hold_tracked_fds(by_loader.pid)
        for running in (by_kernel, by_loader):
            os.kill(running.pid, signal.SIGUSR1)
        loader_events = inbox.until_marker(by_loader.pid)
        inbox.until_marker(by_kernel.pid)
        by_kernel.stop()
        inbox.wait_for(lambda e: e.tgid == by_kernel.pid and e.kind is Kind.EXITED)
    assert [event.fd for event in loader_events if event.kind is Kind.FD_CLOSED] == [regular]
    assert not probes.may_hold_tracked_fds(by_kernel.pid)


@pytest.mark.bpf
def test_the_tracker_can_mark_lock_holders_and_memory(probes, inbox, tmp_path):
    # as it does for what the startup audit found: then unlocks and unmaps matter
    with run(MAPPING + f"""
import struct
def lock(kind, start):
    return struct.pack("hhqqi4x", kind, 0, start, 10, 0)
file = open({str(tmp_path / "file")!r}, "w")
locked, child_ready = os.pipe()
if os.fork() == 0:                  # another process's lock gives the file a lock context,
    fcntl.fcntl(file, fcntl.F_SETLK, lock(fcntl.F_WRLCK, 100))  # without which an unlock
    os.write(child_ready, b"x")                                  # returns early, unseen
    hold()
os.read(locked, 1)
unlock = lock(fcntl.F_UNLCK, 0)
area = mapping(4096 * 2)
fcntl.fcntl(file, fcntl.F_SETLK, unlock)
syscall(11, area, 4096)
marker()
ready(str(area))
go()
fcntl.fcntl(file, fcntl.F_SETLK, unlock)
syscall(11, area + 4096, 4096)
marker()
hold()
""") as running:
        area = int(running.note)
        inbox.until_marker(running.pid)
        probes.mark_lock_holder(running.pid)
        probes.mark_memory(running.pid)
        os.kill(running.pid, signal.SIGUSR1)
        before, after = between_markers(inbox.until_marker(running.pid, markers=2))
    assert [event.kind for event in before] == []
    assert [(event.kind, event.arg) for event in after] == \
        [(Kind.LOCKS_CHANGED, 0), (Kind.UNMAPPED, area + 4096)]


# ------------------------------------------------------------ special fds


SPECIAL_FDS = {
    # struct perf_event_attr: type SOFTWARE, size 112, config DUMMY; this process, any cpu
    "perf_event_open": (Special.PERF_EVENT, """
attr = (ctypes.c_uint32 * 28)(); attr[0] = 1; attr[1] = 112; attr[2] = 9
fd = make(lambda: syscall(298, attr, 0, -1, -1, 0))"""),
    "io_uring_setup": (Special.IO_URING, """
params = (ctypes.c_uint8 * 120)()
fd = make(lambda: syscall(425, 4, params))"""),
    "userfaultfd": (Special.USERFAULTFD, "fd = make(lambda: syscall(323, os.O_CLOEXEC))"),
    # BPF_MAP_CREATE of an ARRAY map: type, key_size, value_size, max_entries
    "bpf": (Special.BPF, """
attr = (ctypes.c_uint32 * 30)(2, 4, 4, 1)
fd = make(lambda: syscall(321, 0, attr, 120))"""),
    "fanotify_init": (Special.FANOTIFY, "fd = make(lambda: syscall(300, 0, os.O_RDONLY))"),
    "pidfd_open": (Special.OTHER, "fd = make(lambda: syscall(434, os.getpid(), 0))"),
    "socket(AF_VSOCK)": (Special.OTHER,
                         "fd = make(lambda: socket.socket(40, socket.SOCK_SEQPACKET, 0)).detach()"),
    "fsopen": (Special.OTHER, 'fd = make(lambda: syscall(430, b"tmpfs", 0))'),
    "open_tree(OPEN_TREE_CLONE)": (Special.OTHER, 'fd = make(lambda: syscall(428, -100, b"/tmp", 1))'),
}


@pytest.mark.parametrize("name", SPECIAL_FDS)
@pytest.mark.bpf
def test_special_fds_are_reported(inbox, name):
    special, code = SPECIAL_FDS[name]
    with run(code + """
marker()
ready(str(fd))
hold()
""") as running:
        skip_if_refused(running, name)
        events = inbox.until_marker(running.pid)
    opened = [(event.fd, event.special) for event in events
              if event.kind is Kind.FD_OPENED and not is_marker(event)]
    assert opened == [(int(running.note), special)]


@pytest.mark.bpf
def test_ordinary_fds_are_not_reported(inbox):
    with run("""
import select
made = [socket.socket(), socket.socket(socket.AF_UNIX), socket.socket(socket.AF_NETLINK, socket.SOCK_RAW),
        select.epoll(), open("/etc/hostname"), os.pipe(), os.eventfd(0)]
try:
    syscall(321, 11, (ctypes.c_uint32 * 30)(), 120)  # bpf(PROG_GET_NEXT_ID): no new fd
except OSError:
    pass
fd = syscall(428, -100, b"/tmp", 0)                 # open_tree without OPEN_TREE_CLONE
marker()
ready()
hold()
""") as running:
        events = inbox.until_marker(running.pid)
    assert kinds(events) == []


# ------------------------------------------------------------ PI futexes

PI = """
LOCK_PI, UNLOCK_PI, TRYLOCK_PI, WAIT_REQUEUE_PI, CMP_REQUEUE_PI, LOCK_PI2 = 6, 7, 8, 11, 12, 13
def futex(word, op, val=0, timeout=None, word2=None, val3=0):
    second = addr(word2) if word2 is not None else None
    return syscall(SYS_FUTEX, addr(word), op, val, timeout, second, val3)
"""


@pytest.mark.bpf
def test_pi_futex_lock_and_unlock(inbox):
    with run(PI + """
word = ctypes.c_uint32(0)
futex(word, LOCK_PI | 128)          # FUTEX_PRIVATE_FLAG is masked off
futex(word, UNLOCK_PI | 128)
futex(word, TRYLOCK_PI)
futex(word, UNLOCK_PI)
futex(word, LOCK_PI2)
futex(word, UNLOCK_PI)
own = ctypes.c_uint32(threading.get_native_id())
try:
    futex(own, LOCK_PI)             # already ours: EDEADLK
except OSError:
    pass
plain = ctypes.c_uint32(0)
futex(plain, 1, 1)                  # FUTEX_WAKE
try:
    futex(plain, 0, 5)              # FUTEX_WAIT on a value it does not hold: EAGAIN
except OSError:
    pass
marker()
ready(f"{addr(word)} {addr(own)}")
hold()
""") as running:
        word, own = map(int, running.note.split())
        events = inbox.until_marker(running.pid)
    pi = [(event.kind, event.arg) for event in events if Kind.PI_WAITING <= event.kind <= Kind.PI_RELEASED]
    assert pi == [
        (Kind.PI_WAITING, word), (Kind.PI_ACQUIRED, word), (Kind.PI_RELEASED, word),
        (Kind.PI_ACQUIRED, word), (Kind.PI_RELEASED, word),
        (Kind.PI_WAITING, word), (Kind.PI_ACQUIRED, word), (Kind.PI_RELEASED, word),
        (Kind.PI_WAITING, own), (Kind.PI_NOT_ACQUIRED, own),
    ]
    assert all(event.tid == running.pid for event in events if event.kind is Kind.PI_WAITING)


@pytest.mark.bpf
def test_pi_requeue_reports_the_waiter_not_the_requeuer(inbox):
    with run(PI + """
cond, pi = ctypes.c_uint32(0), ctypes.c_uint32(0)
waiter_tid = []
def waiter():
    waiter_tid.append(threading.get_native_id())
    futex(cond, WAIT_REQUEUE_PI, 0, None, pi)    # returns holding pi
    futex(pi, UNLOCK_PI)
thread = threading.Thread(target=waiter)
thread.start()
deadline = time.monotonic() + 20
while futex(cond, CMP_REQUEUE_PI, 1, None, pi, 0) < 1:  # until the waiter is there
    if time.monotonic() > deadline:
        raise SystemExit("the waiter never waited")
    time.sleep(0.001)
thread.join()
marker()
ready(f"{waiter_tid[0]} {addr(pi)}")
hold()
""") as running:
        waiter, pi = map(int, running.note.split())
        events = inbox.until_marker(running.pid)
    pi_events = [(event.tid, event.kind, event.arg) for event in events
                 if Kind.PI_WAITING <= event.kind <= Kind.PI_RELEASED]
    assert pi_events == [(waiter, Kind.PI_WAITING, pi), (waiter, Kind.PI_ACQUIRED, pi),
                         (waiter, Kind.PI_RELEASED, pi)]


@pytest.mark.bpf
def test_a_thread_exiting_with_a_pi_futex_is_reported(inbox):
    with run(PI + """
word = ctypes.c_uint32(0)
tids = []
def holder():
    tids.append(threading.get_native_id())
    futex(word, LOCK_PI)            # and never unlocked
thread = threading.Thread(target=holder)
thread.start()
thread.join()
ready(str(tids[0]))
hold()
""") as running:
        holder = int(running.note)
        # join() returns before the thread is gone: await its exit, not a marker
        exited = inbox.wait_for(lambda e: e.tgid == running.pid and e.kind is Kind.EXITED)
    assert [(event.tid, event.arg) for event in exited] == [(holder, 0)]


# ------------------------------------------------------------ memory


@pytest.mark.bpf
def test_remap_file_pages_and_its_unmap(inbox):
    with run(MAPPING + """
scratch = mapping(8192)
syscall(11, scratch, 8192)          # munmap before any mark: not reported
backing = tempfile.TemporaryFile()
backing.truncate(8192)
start = mapping(8192, backing.fileno())
syscall(SYS_REMAP, start, 4096, 0, 1, 0)
syscall(11, start, 8192)
marker()
ready(str(start))
hold()
""") as running:
        start = int(running.note)
        events = inbox.until_marker(running.pid)
    memory = [(event.kind, event.arg, event.arg2) for event in events
              if event.kind in (Kind.NONLINEAR, Kind.UNMAPPED)]
    # what Python itself unmaps once marked is reported too; nothing before the mark
    assert memory[0] == (Kind.NONLINEAR, start, 4096)
    assert (Kind.UNMAPPED, start, 8192) in memory


@pytest.mark.bpf
def test_sysv_shm_attach_and_detach(inbox):
    with run("""
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
libc.shmdt(ctypes.c_void_p(4096))                   # detach by an unmarked process: not reported
shmid = libc.shmget(0, 4096, 0o1000 | 0o600)        # IPC_PRIVATE, IPC_CREAT
at = libc.shmat(shmid, None, 0)
libc.shmctl(shmid, 0, None)                         # IPC_RMID: gone with its last detach
if libc.shmdt(ctypes.c_void_p(at)) != 0:
    raise OSError(ctypes.get_errno(), "shmdt")
marker()
ready(f"{shmid} {at}")
hold()
""") as running:
        shmid, at = map(int, running.note.split())
        events = inbox.until_marker(running.pid)
    shm = [(event.kind, event.arg, event.arg2) for event in events
           if event.kind in (Kind.SHM_ATTACHED, Kind.SHM_DETACHED)]
    assert shm == [(Kind.SHM_ATTACHED, at, shmid), (Kind.SHM_DETACHED, at, 0)]


# ------------------------------------------------------------ ptrace


PTRACE = """
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
def ptrace(request, pid):
    if libc.ptrace(request, pid, None, None) != 0:
        raise OSError(ctypes.get_errno(), f"ptrace {request}")
def child():
    pid = os.fork()
    if pid == 0:
        hold()
    return pid
"""


@pytest.mark.bpf
def test_attach_seize_and_detach(inbox):
    with run(PTRACE + """
try:
    ptrace(16, os.getpid())         # attaching to oneself fails: not reported
except OSError:
    pass
attached, seized = child(), child()
ptrace(16, attached)                # PTRACE_ATTACH
os.waitpid(attached, 0)
ptrace(17, attached)                # PTRACE_DETACH
ptrace(0x4206, seized)              # PTRACE_SEIZE
ptrace(0x4207, seized)              # PTRACE_INTERRUPT, so that it can be detached
os.waitpid(seized, 0)
ptrace(17, seized)
marker()
ready(f"{attached} {seized}")
hold()
""") as running:
        attached, seized = map(int, running.note.split())
        events = inbox.until_marker(running.pid)
    traces = [(event.kind, event.arg) for event in events
              if event.kind in (Kind.TRACED, Kind.UNTRACED)]
    assert traces == [(Kind.TRACED, attached), (Kind.UNTRACED, attached),
                      (Kind.TRACED, seized), (Kind.UNTRACED, seized)]


@pytest.mark.bpf
def test_traceme_and_the_tracee_exit(inbox):
    with run(PTRACE + """
pid = os.fork()
if pid == 0:
    ptrace(0, 0)                    # PTRACE_TRACEME: the parent becomes the tracer
    marker()
    hold()
ready(str(pid))
hold()
""") as running:
        tracee = int(running.note)
        traced = [event for event in inbox.until_marker(tracee) if event.kind is Kind.TRACED]
        assert [(event.tgid, event.arg) for event in traced] == [(tracee, tracee)]
        os.kill(tracee, signal.SIGKILL)
        exited = inbox.wait_for(lambda e: e.tgid == tracee and e.kind is Kind.EXITED)
    assert exited[0].arg == 1


@pytest.mark.bpf
def test_a_tracer_exit_is_reported(inbox):
    with run(PTRACE + """
tracee = child()
ptrace(0x4206, tracee)              # PTRACE_SEIZE, kept until the tracer dies
ready(str(tracee))
hold()
""") as running:
        tracee = int(running.note)
        try:
            inbox.wait_for(lambda e: e.tgid == running.pid and e.kind is Kind.TRACED)
            running.process.kill()
            running.process.wait()
            exited = inbox.wait_for(lambda e: e.tgid == running.pid and e.kind is Kind.EXITED)
        finally:
            os.kill(tracee, signal.SIGKILL)  # no longer in a living subject's group
    assert exited[0].arg == 1


# ------------------------------------------------------------ file locks


@pytest.mark.bpf
def test_lock_changes_are_reported_once_until_the_tracker_reads(inbox, probes, tmp_path):
    # After each step the test reads (clears the kernel's flag) as the tracker does.
    steps = ["",                                                         # nothing locked yet
             'fcntl.fcntl(first, fcntl.F_GETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))',
             "fcntl.flock(first, fcntl.LOCK_EX)",
             "fcntl.flock(first, fcntl.LOCK_UN)",
             'second = open(path, "w"); fcntl.lockf(second, fcntl.LOCK_EX)',
             "second.close()",                                           # the close drops it
             'third = open(path, "w"); '
             'fcntl.fcntl(third, 37, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))',  # OFD
             # three changes before the next read: one report
             "fcntl.flock(first, fcntl.LOCK_EX); fcntl.flock(first, fcntl.LOCK_UN); "
             "fcntl.flock(first, fcntl.LOCK_SH)"]
    code = "\n".join([f"import struct\npath = {str(tmp_path / 'locked')!r}\n"
                      'first = open(path, "w")\nready()\ngo()',
                      *(f"{step}\nmarker()\ngo()" for step in steps), "hold()"])
    with run(code) as running:
        for step in range(len(steps)):
            os.kill(running.pid, signal.SIGUSR1)
            inbox.until_marker(running.pid, markers=step + 1)
            probes.locks_read(running.pid)
        events = inbox.until_marker(running.pid, markers=len(steps))
    reported = [sum(event.kind is Kind.LOCKS_CHANGED for event in step)
                for step in between_markers(events)]
    assert reported == [0, 0, 1, 1, 1, 1, 1, 1]


# ------------------------------------------------------------ TCP


@pytest.mark.bpf
def test_tcp_connections_are_reported_and_their_close(inbox):
    with run("""
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(4)
client = socket.create_connection(listener.getsockname())
server, _ = listener.accept()
pending = socket.socket()
pending.setblocking(False)
pending.connect_ex(listener.getsockname())          # EINPROGRESS: reported too
local = socket.socket(socket.AF_UNIX)
unix_listener = socket.socket(socket.AF_UNIX)
unix_listener.bind(""); unix_listener.listen(1)     # an abstract address
local.connect(unix_listener.getsockname())
unix_listener.accept()
client_fd = client.fileno()
client.close()
marker()
ready(f"{client_fd} {server.fileno()} {pending.fileno()}")
hold()
""") as running:
        client, server, pending = map(int, running.note.split())
        events = inbox.until_marker(running.pid)
    assert [event.fd for event in events if event.kind is Kind.TCP_CONNECTED] == \
        [client, server, pending]
    assert client in [event.fd for event in events if event.kind is Kind.FD_CLOSED]


# ------------------------------------------------------------ pid namespaces, fork, exec, exit

CLONE_NEWPID, SIGCHLD = 0x20000000, 17


@pytest.mark.parametrize("how", ["unshare", "clone", "clone3"])
@pytest.mark.bpf
def test_a_new_pid_namespace_is_reported(inbox, how):
    steps = {
        "unshare": "syscall(272, CLONE_NEWPID); pid = os.fork()",
        "clone": "pid = syscall(56, CLONE_NEWPID | SIGCHLD, 0, None, None, 0)",
        # struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, ... (88 bytes)
        "clone3": "pid = syscall(435, (ctypes.c_uint64 * 11)(CLONE_NEWPID, 0, 0, 0, SIGCHLD), 88)",
    }
    with run(f"""
CLONE_NEWPID, SIGCHLD = {CLONE_NEWPID}, {SIGCHLD}
{steps[how]}
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
marker()
ready(str(pid))
hold()
""") as running:
        child = int(running.note)
        events = inbox.until_marker(running.pid)
    namespaces = [event.arg for event in events if event.kind is Kind.NEW_PID_NS]
    forks = [event.arg for event in events if event.kind is Kind.FORKED]
    if how == "unshare":
        assert (namespaces, forks) == ([0], [child])  # the namespace's pid 1 is a watched child
    else:
        assert namespaces == [child]


@pytest.mark.bpf
def test_forks_of_watched_processes_only(inbox):
    with run("""
def forked():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid
unwatched = forked()
fd = os.open("/dev/null", os.O_RDONLY)
thread = threading.Thread(target=lambda: None)
thread.start(); thread.join()                       # a thread is no new process
watched = forked()
marker()
ready(f"{unwatched} {watched}")
hold()
""") as running:
        unwatched, watched = map(int, running.note.split())
        events = inbox.until_marker(running.pid)
        child_exit = inbox.wait_for(lambda e: e.tgid == watched and e.kind is Kind.EXITED)
    assert [event.arg for event in events if event.kind is Kind.FORKED] == [watched]
    assert child_exit[0].arg == 1  # the child of a watched process is watched


AFTER_EXEC = "import os, signal; os.open('/dev/full', os.O_RDONLY); signal.pause()"


@pytest.mark.bpf
def test_exec_of_a_watched_process(inbox):
    with run(f"""
AFTER_EXEC = {AFTER_EXEC!r}
fd = os.open("/dev/null", os.O_RDONLY)
ready()
os.execv(sys.executable, [sys.executable, "-c", AFTER_EXEC])
""") as running:
        events = inbox.until_marker(running.pid)
    assert Kind.EXECED in kinds(events)


@pytest.mark.bpf
def test_exec_of_an_unwatched_process_is_not_reported(inbox):
    with run(f"""
AFTER_EXEC = {AFTER_EXEC!r}
ready()
os.execv(sys.executable, [sys.executable, "-c", AFTER_EXEC])
""") as running:
        events = inbox.until_marker(running.pid)
    assert Kind.EXECED not in kinds(events)


@pytest.mark.bpf
def test_the_exit_of_an_unwatched_process_is_not_reported(inbox):
    with run("ready(); hold()") as first:
        first.stop()
    # started after the first one was reaped: its marker comes after any exit record of it
    with run("marker(); ready(); hold()") as second:
        inbox.until_marker(second.pid)
    assert inbox.of(first.pid) == []


@pytest.mark.bpf
def test_exits_of_watched_processes_and_threads(probes, inbox):
    with run("""
fd = os.open("/dev/null", os.O_RDONLY)
tids = []
thread = threading.Thread(target=lambda: tids.append(threading.get_native_id()))
thread.start(); thread.join()
ready(str(tids[0]))
hold()
""") as running:
        thread = int(running.note)
        inbox.wait_for(lambda e: e.tid == thread and e.kind is Kind.EXITED)
        running.stop()
        exited = inbox.wait_for(lambda e: e.tgid == running.pid and e.kind is Kind.EXITED, 2)
    assert [(event.tid, event.arg) for event in exited] == [(thread, 0), (running.pid, 1)]


@pytest.mark.bpf
def test_a_watched_pid_reports_its_exit(probes, inbox):
    with run("ready(); hold()") as running:
        probes.watch(running.pid)
        running.stop()
        exited = inbox.wait_for(lambda e: e.tgid == running.pid and e.kind is Kind.EXITED)
    assert exited[0].arg == 1


@pytest.mark.bpf
def test_an_unwatched_pid_no_longer_reports_forks(probes, inbox):
    with run("""
fd = os.open("/dev/null", os.O_RDONLY)
os.close(fd)
ready()
go()
if os.fork() == 0:
    os._exit(0)
marker()
hold()
""") as running:
        inbox.wait_for(lambda e: e.tgid == running.pid and e.kind is Kind.FD_CLOSED)
        probes.unwatch(running.pid)
        os.kill(running.pid, signal.SIGUSR1)
        events = inbox.until_marker(running.pid)
    assert Kind.FORKED not in kinds(events)


# ------------------------------------------------------------ loss is counted


LOOP = """
fd = os.open("/dev/null", os.O_RDONLY)
for _ in range({count}):
    os.close(os.dup(fd))
ready()
hold()
"""


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def first_lost(events: queue.Queue) -> Event:
    """Takes events off the queue until a LOST one (other processes' records may come first)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        event = events.get(timeout=max(deadline - time.monotonic(), 0.01))
        if event.kind is Kind.LOST:
            return event


@pytest.mark.bpf
def test_kernel_and_queue_losses_become_lost_events():
    # A one-page ring buffer holds about 20 records and nobody reads it: the host's
    # other activity may fill it first, so the burst's fd is tracked by hand.
    with Probes(ring_pages=1) as small:
        reader = Reader(small, capacity=4)
        with run("""
fd = os.open("/etc/hostname", os.O_RDONLY)
ready(str(fd))
go()
for _ in range(1000):
    os.close(os.dup(fd))            # each dup's record is lost, so its copy is not tracked
os._exit(0)
""") as running:
            small.track_fd(running.pid, int(running.note))
            before = small.lost_in_kernel()
            os.kill(running.pid, signal.SIGUSR1)
            running.process.wait(TIMEOUT)
            kernel_lost = small.lost_in_kernel()
        assert kernel_lost - before >= 1000 - 21
        reading = Worker("probe-reader", reader.poll_once).start()
        try:
            wait_until(lambda: reader.queue_overflow > 0)
            lost = first_lost(reader.events)  # queued ahead of the next records
        finally:
            reading.stop()
    counters = reader.counters()
    assert counters["kernel"] >= kernel_lost and counters["queue_overflow"] > 0
    assert counters["decode_errors"] == 0
    assert kernel_lost < lost.arg <= sum(counters.values())


@pytest.mark.bpf
def test_the_loader_forgets_an_exited_process(probes, inbox):
    with run("""
fd = os.open("/dev/null", os.O_RDONLY)
ready(str(fd))
hold()
""") as running:
        inbox.wait_for(lambda e: e.tgid == running.pid and e.kind is Kind.FD_OPENED)
        running.stop()
        inbox.wait_for(lambda e: e.tgid == running.pid and e.kind is Kind.EXITED)
    assert probes.tracked_in_kernel(running.pid) == []


@pytest.mark.bpf
def test_a_burst_arrives_whole(inbox):
    """10,000 records (2 MB) in a few milliseconds: the ring buffer absorbs them."""
    with run(LOOP.format(count=5000)) as running:
        events = inbox.wait_for(lambda e: e.tgid == running.pid and e.kind is Kind.FD_CLOSED,
                                5000)
    assert len(events) == 5000
