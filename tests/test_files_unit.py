"""files and devices on fixture /proc trees: mount lookup, overmounts, remaps, pipes, namespaces."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracker.checks import devices, files
from tracker.checks.files import Mounts, ghost_limit_value
from tracker.context import AuditContext
from tracker.procfs import OpenFd, Proc

PID = 100
# Shaped like the test VM's: /dev/shm mounted twice (25 lies under 30), and a
# tmpfs on /srv mounted after /srv/data, hiding it (40 and 41 are siblings).
MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,mode=755
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw
40 27 0:40 / /srv/data rw,relatime shared:5 master:2 - tmpfs none rw
41 27 0:41 / /srv rw,relatime - tmpfs none rw
"""
ROOT_DEV, DEVTMPFS, PROC_DEV = os.makedev(254, 0), os.makedev(0, 6), os.makedev(0, 21)
UNLISTED = os.makedev(0, 99)  # a device no mount shows: lookups fall back to the mnt_id
REG, DIR, CHR, BLK = 0o100644, 0o040755, 0o020666, 0o060660


def stat(mode: int = REG, *, dev: int = ROOT_DEV, ino: int = 7, nlink: int = 1, blocks: int = 8,
         rdev: int = 0) -> os.stat_result:
    return os.stat_result((mode, ino, dev, nlink, 0, 0, blocks * 512, 0, 0, 0),
                          {"st_blocks": blocks, "st_rdev": rdev})


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    """A /proc with the audited process PID and the auditor (self), both in the host namespaces."""
    for name in (str(PID), "self"):
        (tmp_path / name / "ns").mkdir(parents=True)
        for kind, inode in (("mnt", 1), ("net", 2), ("ipc", 3)):
            os.symlink(f"{kind}:[{inode}]", tmp_path / name / "ns" / kind)
    (tmp_path / str(PID) / "mountinfo").write_text(MOUNTINFO)
    return tmp_path


def audit_fd(proc_root: Path, target: str, status: os.stat_result, **fdinfo: str) -> list:
    ctx = AuditContext(root_pid=PID, tree_pids={PID}, proc_root=proc_root)
    open_fd = OpenFd(Proc(PID, proc_root), 3, target, known_stat=status, known_fdinfo=fdinfo or None)
    ctx.tree_fds[PID] = [open_fd]
    owner = devices if open_fd.kind in ("chr", "blk") else files
    return [(f.code, f.option_value) for f in owner.check_fd(ctx, open_fd.process, open_fd)]


def test_mounts_are_hidden_by_a_mount_on_top_or_a_sibling_over_their_path():
    table = Mounts.parse(MOUNTINFO)
    hidden = {mount_id for mount_id in (22, 24, 25, 27, 30, 40, 41)
              if table.hidden(table.find(UNLISTED, lambda: mount_id)[1])}
    assert hidden == {25, 40}


def test_a_file_is_placed_by_its_device_and_reads_its_mnt_id_only_when_that_is_ambiguous():
    table = Mounts.parse(MOUNTINFO)
    asked = []

    def mnt_id(value: int):
        return lambda: asked.append(value) or value

    assert table.find(ROOT_DEV, mnt_id(27))[1].mountpoint == "/" and asked == []
    assert table.find(os.makedev(0, 23), mnt_id(25))[1].id == 25 and asked == [25]
    assert table.find(UNLISTED, mnt_id(46)) == (46, None)


@pytest.mark.parametrize("size, value", [
    (1 << 20, "1M"), (5 << 20, "5M"), ((5 << 20) + 1, "6M"), (1 << 30, "1G"), (3 << 29, "1536M"),
    (123_456, "1M"),
])
def test_ghost_limit_is_the_size_rounded_up_in_criu_syntax(size: int, value: str):
    assert ghost_limit_value(size) == value


def test_plain_files_and_directories_need_no_finding(proc_root: Path):
    assert audit_fd(proc_root, "/etc/passwd", stat()) == []
    assert audit_fd(proc_root, "/etc", stat(DIR, nlink=3)) == []


def test_deleted_files_are_ghosts_up_to_one_mebibyte_then_need_ghost_limit(proc_root: Path):
    assert audit_fd(proc_root, "/tmp/a (deleted)", stat(nlink=0, blocks=2048)) == [
        ("file.deleted.ghost", None)]
    assert audit_fd(proc_root, "/tmp/b (deleted)", stat(nlink=0, blocks=2049)) == [
        ("file.deleted.over_ghost_limit", "2M")]


def test_unlinked_file_with_links_left_needs_link_remap(proc_root: Path):
    assert audit_fd(proc_root, "/tmp/a (deleted)", stat(nlink=1)) == [("file.deleted.link_remap", None)]


def test_memfd_and_dead_process_proc_files_are_left_to_criu(proc_root: Path):
    assert audit_fd(proc_root, "/memfd:cache (deleted)", stat(dev=os.makedev(0, 1), nlink=1)) == []
    assert audit_fd(proc_root, "/proc/555 (deleted)", stat(DIR, dev=PROC_DEV, nlink=0)) == []


def test_files_on_unlisted_or_hidden_mounts_are_blocked(proc_root: Path):
    assert audit_fd(proc_root, "/file", stat(dev=UNLISTED), mnt_id="46") == [
        ("file.mount.invisible", None)]
    assert audit_fd(proc_root, "/dev/shm/old", stat(dev=os.makedev(0, 23)), mnt_id="25") == [
        ("file.mount.overmounted", None)]
    assert audit_fd(proc_root, "/dev/shm/new", stat(dev=os.makedev(0, 27))) == []


def test_names_that_are_not_paths_are_blocked_unless_namespace_files_of_the_tree(proc_root: Path):
    assert audit_fd(proc_root, "net:[2]", stat(0o100444, dev=os.makedev(0, 4))) == []
    assert audit_fd(proc_root, "net:[9]", stat(0o100444, dev=os.makedev(0, 4))) == [
        ("file.nsfs.foreign", None)]
    assert audit_fd(proc_root, "weird:thing", stat()) == [("file.path.unsupported", None)]


def test_pipes_in_packet_mode_are_blocked_and_outside_holders_noted(proc_root: Path):
    (proc_root / "200" / "fd").mkdir(parents=True)
    os.symlink("pipe:[76]", proc_root / "200" / "fd" / "4")
    fdinfo = proc_root / str(PID) / "fdinfo" / "3"
    fdinfo.parent.mkdir()

    def pipe(flags: int) -> list:
        fdinfo.write_text(f"pos:\t0\nflags:\t{flags:o}\nmnt_id:\t15\nino:\t76\n")
        return audit_fd(proc_root, "pipe:[76]", stat(0o10600))

    assert pipe(os.O_RDONLY | os.O_CLOEXEC) == [("file.pipe.external", None)]
    assert pipe(os.O_WRONLY | os.O_DIRECT) == [("file.pipe.packetized", None), ("file.pipe.external", None)]


def test_a_pipe_with_both_ends_in_the_tree_is_not_searched_for_outside(proc_root: Path):
    (proc_root / "200" / "fd").mkdir(parents=True)
    os.symlink("pipe:[76]", proc_root / "200" / "fd" / "4")
    (proc_root / str(PID) / "fdinfo").mkdir()
    (proc_root / str(PID) / "fdinfo" / "3").write_text("flags:\t00\n")
    (proc_root / str(PID) / "fdinfo" / "4").write_text("flags:\t01\n")
    ctx = AuditContext(root_pid=PID, tree_pids={PID}, proc_root=proc_root)
    proc = Proc(PID, proc_root)
    ends = [OpenFd(proc, fd, "pipe:[76]", known_stat=stat(0o10600)) for fd in (3, 4)]
    ctx.tree_fds[PID] = ends
    assert [f for end in ends for f in files.check_fd(ctx, proc, end)] == []


@pytest.mark.parametrize("major, minor, tty", [
    (5, 0, True), (5, 1, True), (5, 2, True), (5, 3, False), (4, 0, False), (4, 1, True),
    (4, 63, True), (4, 64, False), (136, 3, True), (137, 0, False), (128, 0, True), (135, 9, True),
    (188, 0, True), (204, 64, True), (10, 232, False),
])
def test_ttys_are_the_devices_criu_tty_code_takes(major: int, minor: int, tty: bool):
    assert devices.is_tty(major, minor) is tty


def test_devices_by_major_and_minor(proc_root: Path):
    def device(target: str, major: int, minor: int, mode: int = CHR, **fdinfo: str) -> list:
        return audit_fd(proc_root, target, stat(mode, dev=DEVTMPFS, rdev=os.makedev(major, minor)),
                        **fdinfo)

    assert device("/dev/null", 1, 3) == [] and device("/dev/autofs", 10, 235) == []
    assert device("/dev/pts/3", 136, 3, flags="0100002") == []  # terminal's to judge
    # an O_PATH fd on a terminal (here the tree's only fd on it): no ioctl can ask it anything
    assert device("/dev/pts/3", 136, 3, flags="010000000") == [("device.tty.o_path", None)]
    assert device("/dev/ptmx", 5, 2, flags="010000000") == [("device.tty.o_path", None)]
    assert device("/dev/kvm", 10, 232) == [("device.chr.unsupported", None)]
    assert device("/dev/ttyS0", 4, 64) == [("device.chr.unsupported", None)]
    assert device("/dev/loop0", 7, 0, BLK) == [("device.blk", None)]
    assert device("/dev/net/tun", 10, 200, flags="0100002") == [("device.tun.host_netns", None)]


def test_tun_is_fine_when_the_tree_has_its_own_network_namespace(proc_root: Path):
    (proc_root / str(PID) / "ns" / "net").unlink()
    os.symlink("net:[8]", proc_root / str(PID) / "ns" / "net")
    tun = stat(CHR, dev=DEVTMPFS, rdev=os.makedev(10, 200))
    assert audit_fd(proc_root, "/dev/net/tun", tun, flags="0100002") == []
    assert audit_fd(proc_root, "/dev/net/tun", tun, flags="010000000") == [("device.tun.o_path", None)]


def test_a_zombie_has_no_cwd_or_root_to_judge(proc_root: Path):
    fields = ["Z", "1", str(PID), str(PID), "0", "-1", "4194316"] + ["0"] * 12 + ["12345"]
    (proc_root / str(PID) / "stat").write_text(f"{PID} (subject) {' '.join(fields)}\n")
    ctx = AuditContext(root_pid=PID, tree_pids={PID}, proc_root=proc_root)
    assert list(files.check_process(ctx, Proc(PID, proc_root))) == []  # no cwd link to read
