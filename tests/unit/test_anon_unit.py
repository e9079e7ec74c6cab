"""anon: fdinfo parsing and the per-fd judgement, on fixture /proc trees."""
from __future__ import annotations

from pathlib import Path

import pytest

from tracker.checks import anon
from tracker.context import AuditContext
from tracker.procfs import OpenFd, Proc

SUBJECT, CHILD, STRANGER = 100, 101, 200


def write_stat(root: Path, pid: int, ppid: int) -> None:
    fields = ["S", str(ppid), str(pid), str(pid), "0", "-1", "4194304"] + ["0"] * 10
    fields += ["1", "0", "100"]  # threads, itrealvalue, start time
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "stat").write_text(f"{pid} (python3) {' '.join(fields)}\n")


def fixture_fd(root: Path, fd: int, target: str, fdinfo: str, pid: int = SUBJECT) -> OpenFd:
    (root / str(pid) / "fdinfo").mkdir(parents=True, exist_ok=True)
    common = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\n"
    (root / str(pid) / "fdinfo" / str(fd)).write_text(common + fdinfo)
    return OpenFd(Proc(pid, root), fd, target)


def findings(root: Path, open_fd: OpenFd, *others: OpenFd, tree=(SUBJECT,)) -> list:
    ctx = AuditContext(root_pid=SUBJECT, tree_pids=set(tree), proc_root=root,
                       tree_fds={SUBJECT: [open_fd, *others]})
    return list(anon.check_fd(ctx, open_fd.process, open_fd))


def test_epoll_targets_keep_their_rank_under_a_reused_fd_number():
    lines = ["pos:\t0",
             "tfd:        5 events:       19 data:                5  pos:0 ino:45fe sdev:f",
             "tfd:        7 events:        1 data:                7  pos:0 ino:406 sdev:e",
             "tfd:        5 events:        1 data:         deadbeef  pos:0 ino:45ff sdev:f"]
    assert anon.parse_epoll_targets(lines) == [
        anon.EpollTarget(5, 0x45FE, 0), anon.EpollTarget(7, 0x406, 0),
        anon.EpollTarget(5, 0x45FF, 1)]


def test_epoll_target_held_by_its_fd_is_fine(tmp_path: Path):
    epoll = fixture_fd(tmp_path, 4, "anon_inode:[eventpoll]",
                       "tfd:        3 events:       19 data:    3  pos:0 ino:45fe sdev:f\n")
    pipe = OpenFd(epoll.process, 3, f"pipe:[{0x45FE}]")
    assert findings(tmp_path, epoll, pipe) == []


def test_epoll_target_whose_fd_is_gone_or_replaced_is_a_blocker(tmp_path: Path):
    epoll = fixture_fd(tmp_path, 4, "anon_inode:[eventpoll]",
                       "tfd:        3 events:       19 data:    3  pos:0 ino:45fe sdev:f\n"
                       "tfd:        6 events:       19 data:    6  pos:0 ino:4600 sdev:f\n")
    other_pipe = OpenFd(epoll.process, 3, "pipe:[999]")
    found = findings(tmp_path, epoll, other_pipe)
    assert [f.code for f in found] == ["anon.epoll.escaped_target"] * 2
    assert "watches fd 3 (inode 17918)" in found[0].message
    assert "watches fd 6 (inode 17920)" in found[1].message


def test_epoll_target_moved_to_another_fd_number_is_fine(tmp_path: Path):
    epoll = fixture_fd(tmp_path, 4, "anon_inode:[eventpoll]",
                       "tfd:        3 events:       19 data:    3  pos:0 ino:45fe sdev:f\n")
    assert findings(tmp_path, epoll, OpenFd(epoll.process, 9, f"pipe:[{0x45FE}]")) == []


def pidfd(root: Path, fdinfo: str) -> OpenFd:
    return fixture_fd(root, 5, "anon_inode:[pidfd]", fdinfo)


def test_pidfd_of_a_descendant_is_dumped(tmp_path: Path):
    write_stat(tmp_path, SUBJECT, 1)
    write_stat(tmp_path, CHILD, SUBJECT)
    found = findings(tmp_path, pidfd(tmp_path, f"Pid:\t{CHILD}\nNSpid:\t{CHILD}\n"))
    assert [(f.code, f.fd) for f in found] == [("anon.pidfd", 5)]


def test_pidfd_of_a_process_outside_the_tree_is_a_blocker(tmp_path: Path):
    write_stat(tmp_path, SUBJECT, 1)
    write_stat(tmp_path, STRANGER, 1)
    found = findings(tmp_path, pidfd(tmp_path, f"Pid:\t{STRANGER}\nNSpid:\t{STRANGER}\n"))
    assert [f.code for f in found] == ["anon.pidfd.outside_tree"]
    assert f"pid {STRANGER}" in found[0].message


def test_pidfd_of_an_exited_process_is_dumped(tmp_path: Path):
    found = findings(tmp_path, pidfd(tmp_path, "Pid:\t-1\nNSpid:\t-1\n"))
    assert [f.code for f in found] == ["anon.pidfd"]


def test_pidfd_thread_is_a_blocker(tmp_path: Path):
    open_fd = fixture_fd(tmp_path, 5, "anon_inode:[pidfd]", f"Pid:\t{CHILD}\n")
    thread_flag = f"pos:\t0\nflags:\t02000202\nPid:\t{CHILD}\n"  # O_EXCL is PIDFD_THREAD
    (tmp_path / str(SUBJECT) / "fdinfo" / "5").write_text(thread_flag)
    assert [f.code for f in findings(tmp_path, open_fd)] == ["anon.pidfd.thread"]


def test_notify_watches_are_counted_and_filesystem_marks_named(tmp_path: Path):
    fanotify = fixture_fd(tmp_path, 3, "anon_inode:[fanotify]", (
        "fanotify flags:200 event-flags:8000\n"
        "fanotify ino:3f7e8 sdev:fe00000 mflags:0 mask:20 ignored_mask:0 fhandle-bytes:8 "
        "fhandle-type:1 f_handle:e8f7030000000000\n"
        "fanotify mnt_id:1b mflags:0 mask:20 ignored_mask:0\n"
        "fanotify sdev:fe00001 mflags:0 mask:20 ignored_mask:0\n"))
    found = findings(tmp_path, fanotify)
    assert [f.code for f in found] == ["anon.notify.events_dropped",
                                       "anon.fanotify.filesystem_mark"]
    assert "3 watch(es)" in found[0].message
    assert "device 254:1" in found[1].message


def test_watch_lines_parse_into_device_and_inode():
    [watch] = anon.parse_watches(["inotify wd:1 ino:3f7e8 sdev:15 mask:100 ignored_mask:0 "
                                  "fhandle-bytes:8 fhandle-type:1 f_handle:e8f7030000000000"])
    assert (watch.kind, watch.device, watch.inode) == ("inode", "0:21", 0x3F7E8)
    assert watch.fields["f_handle"] == "e8f7030000000000"


def test_bpf_maps_name_their_type(tmp_path: Path):
    ring = fixture_fd(tmp_path, 7, "anon_inode:bpf-map", "map_type:\t27\nmap_id:\t12\n")
    hash_map = fixture_fd(tmp_path, 8, "anon_inode:bpf-map", "map_type:\t1\nmap_id:\t13\n")
    assert "type 27 map (id 12)" in findings(tmp_path, ring)[0].message
    assert "HASH map (id 13)" in findings(tmp_path, hash_map)[0].message


def test_supported_kinds_need_no_finding_and_unknown_ones_block(tmp_path: Path):
    for target in ("anon_inode:[eventfd]", "anon_inode:[signalfd]"):
        assert findings(tmp_path, fixture_fd(tmp_path, 3, target, "")) == []
    timer = fixture_fd(tmp_path, 3, "anon_inode:[timerfd]", "clockid: 1\nticks: 0\n")
    assert findings(tmp_path, timer) == []
    for target in ("anon_inode:[vfio-device]", "anon_inode:kvm-vm", "anon_inode:[fscontext]"):
        [finding] = findings(tmp_path, OpenFd(Proc(SUBJECT, tmp_path), 3, target))
        assert (finding.code, finding.fd) == ("anon.unsupported", 3)
        assert target in finding.message


@pytest.mark.parametrize("clock, codes", [
    (0, []), (1, []), (7, []),                              # realtime, monotonic, boottime
    (8, ["anon.timerfd.clock"]), (9, ["anon.timerfd.clock"]),  # the alarm clocks
])
def test_a_timerfd_is_judged_by_its_clock(tmp_path: Path, clock: int, codes: list):
    timer = fixture_fd(tmp_path, 4, "anon_inode:[timerfd]",
                       f"clockid: {clock}\nticks: 0\nsettime flags: 00\n"
                       "it_value: (0, 0)\nit_interval: (0, 0)\n")
    assert [f.code for f in findings(tmp_path, timer)] == codes


@pytest.mark.parametrize("target, blocked", [
    ("anon_inode:[eventfd]", True), ("anon_inode:[pidfd]", True),
    ("anon_inode:[eventpoll]", False), ("anon_inode:inotify", False),   # dumped empty
])
def test_an_o_path_fd_on_an_anon_inode(tmp_path: Path, target: str, blocked: bool):
    (tmp_path / str(SUBJECT) / "fdinfo").mkdir(parents=True, exist_ok=True)
    (tmp_path / str(SUBJECT) / "fdinfo" / "3").write_text("pos:\t0\nflags:\t012000000\nmnt_id:\t17\n")
    open_fd = OpenFd(Proc(SUBJECT, tmp_path), 3, target)
    assert ("anon.o_path" in [f.code for f in findings(tmp_path, open_fd)]) is blocked
