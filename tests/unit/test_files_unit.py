"""files and devices on fixture /proc trees: mount lookup, overmounts, remaps, pipes, namespaces."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from stat import S_ISBLK, S_ISCHR, S_ISDIR

import pytest

from tracker.checks import devices, files, paths
from tracker.checks.paths import Mounts
from tracker.context import AuditContext
from tracker.criu.options import ghost_limit_value
from tracker.procfs import OpenFd, Proc, mnt_id_of

PID = 100
# The mount the test's scratch directories are really on: fd and directory
# mount ids are read from the kernel, so the fixture's root mount carries it.
ROOT_ID = mnt_id_of(tempfile.gettempdir())
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
REG, DIR, CHR, BLK = 0o100644, 0o040755, 0o020666, 0o060660


def stat(mode: int = REG, *, dev: int = ROOT_DEV, ino: int = 7, nlink: int = 1, blocks: int = 8,
         rdev: int = 0) -> os.stat_result:
    return os.stat_result((mode, ino, dev, nlink, 0, 0, blocks * 512, 0, 0, 0),
                          {"st_blocks": blocks, "st_rdev": rdev})


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    """A /proc with the audited process PID and the auditor (self), both in the host namespaces.

    The auditor's root (self/root) is a scratch directory: paths are looked
    up there, as CRIU looks them up from its own root. Its real mount is the
    table's "/" (27), so that linkat-like checks of directories agree.
    """
    for name in (str(PID), "self"):
        (tmp_path / name / "ns").mkdir(parents=True)
        for kind, inode in (("mnt", 1), ("net", 2), ("ipc", 3)):
            os.symlink(f"{kind}:[{inode}]", tmp_path / name / "ns" / kind)
        (tmp_path / name / "mountinfo").write_text(host_mountinfo())
    (tmp_path / "self" / "root" / "etc").mkdir(parents=True)
    (tmp_path / "self" / "root" / "dev").mkdir()
    return tmp_path


def host_mountinfo() -> str:
    """MOUNTINFO with its root mount (27) renumbered to ROOT_ID (and ROOT_ID's mount, if any, to 27)."""
    swap = {27: ROOT_ID, ROOT_ID: 27}
    lines = []
    for line in MOUNTINFO.splitlines():
        mnt_id, parent, rest = line.split(" ", 2)
        lines.append(f"{swap.get(int(mnt_id), mnt_id)} {swap.get(int(parent), parent)} {rest}\n")
    return "".join(lines)


def host_file(proc_root: Path, path: str, mode: int = REG, rdev: int = 0) -> os.stat_result:
    """Makes `path` under the auditor's root and returns its stat, as an fd on it would show."""
    where = proc_root / "self" / "root" / path[1:]
    where.parent.mkdir(parents=True, exist_ok=True)
    if S_ISDIR(mode):
        where.mkdir(exist_ok=True)
    elif S_ISCHR(mode) or S_ISBLK(mode):
        if not where.exists():   # one node, however many fds on it a test audits
            os.mknod(where, mode, rdev)
    else:
        where.touch()
    return os.stat(where)


def audit_fd(proc_root: Path, target: str, status: os.stat_result, mnt_id: int | None = None,
             **fdinfo: str) -> list:
    ctx = AuditContext(root_pid=PID, tree_pids={PID}, proc_root=proc_root)
    if target.startswith("/"):
        fdinfo.setdefault("mnt_id", str(ROOT_ID if mnt_id is None else mnt_id))
    open_fd = OpenFd(Proc(PID, proc_root), 3, target, known_stat=status,
                     known_fdinfo=fdinfo or None)
    ctx.tree_fds[PID] = [open_fd]
    owner = devices if open_fd.kind in ("chr", "blk") else files
    return [(f.code, f.option_value) for f in owner.check_fd(ctx, open_fd.process, open_fd)]


def test_mounts_are_hidden_by_a_mount_on_top_or_a_sibling_over_their_path():
    table = Mounts.parse(MOUNTINFO)
    hidden = {mount_id for mount_id in (22, 24, 25, 27, 30, 40, 41) if table.hidden(table.get(mount_id))}
    assert hidden == {25, 40}


def test_mounts_are_found_by_id_and_mountinfo_escapes_are_read():
    table = Mounts.parse(MOUNTINFO + "50 27 0:50 / /srv/a\\040b rw - tmpfs none rw\n")
    assert 27 in table and 46 not in table and table.get(46) is None
    assert table.get(50).mountpoint == "/srv/a b" and table.get(50).dev == os.makedev(0, 50)
    assert table.shows_device(os.makedev(0, 23)) and not table.shows_device(os.makedev(0, 99))


@pytest.mark.parametrize("size, value", [
    (1 << 20, "1M"), (5 << 20, "5M"), ((5 << 20) + 1, "6M"), (1 << 30, "1G"), (3 << 29, "1536M"),
    (123_456, "1M"),
])
def test_ghost_limit_is_the_size_rounded_up_in_criu_syntax(size: int, value: str):
    assert ghost_limit_value(size) == value


def test_plain_files_and_directories_need_no_finding(proc_root: Path):
    assert audit_fd(proc_root, "/etc/passwd", host_file(proc_root, "/etc/passwd")) == []
    assert audit_fd(proc_root, "/etc", host_file(proc_root, "/etc", DIR)) == []


def test_a_file_is_placed_by_its_mnt_id_never_by_its_device(proc_root: Path):
    # The same file, through the root mount and through a lazily unmounted
    # bind mount of it (same device, a mount id no table shows).
    passwd = host_file(proc_root, "/etc/passwd")
    assert audit_fd(proc_root, "/etc/passwd", passwd, mnt_id=ROOT_ID) == []
    assert audit_fd(proc_root, "/passwd", passwd, mnt_id=4242) == [("file.mount.invisible", None)]


def test_deleted_files_are_ghosts_up_to_one_mebibyte_then_need_ghost_limit(proc_root: Path):
    assert audit_fd(proc_root, "/tmp/a (deleted)", stat(nlink=0, blocks=2048)) == [
        ("file.deleted.ghost", None)]
    assert audit_fd(proc_root, "/tmp/b (deleted)", stat(nlink=0, blocks=2049)) == [
        ("file.deleted.over_ghost_limit", "2M")]


def test_unlinked_file_with_links_left_needs_link_remap(proc_root: Path):
    host_file(proc_root, "/tmp", DIR)
    assert audit_fd(proc_root, "/tmp/a (deleted)", stat(nlink=1)) == [("file.deleted.link_remap", None)]
    # Its directory gone too: CRIU links it into the nearest directory left.
    assert audit_fd(proc_root, "/tmp/gone/b", stat(nlink=1, ino=8)) == [("file.deleted.link_remap", None)]


def test_a_linked_file_under_a_directory_on_another_mount_cannot_be_link_remapped(proc_root: Path):
    # The file is on the root mount; what its directory's name now leads to is
    # another mount (here /proc, reached through a symlink): linkat would fail.
    os.symlink("/proc", proc_root / "self" / "root" / "srv")
    ctx = AuditContext(root_pid=PID, tree_pids={PID}, proc_root=proc_root)
    assert paths.dumped_namespaces(ctx)[0].root == f"{proc_root}/self/root"
    assert audit_fd(proc_root, "/srv/file", stat(nlink=1)) == [("file.path.overmounted", None)]
    assert audit_fd(proc_root, "/nowhere/file", stat(nlink=1, ino=9)) == [
        ("file.deleted.link_remap", None)]  # "/" is left, on the file's own mount


@pytest.mark.root
def test_a_path_that_now_names_another_file_is_unaccessible(proc_root: Path):
    host_file(proc_root, "/etc/passwd")
    assert audit_fd(proc_root, "/etc/passwd", stat(ino=1)) == [("file.path.unaccessible", None)]
    null = host_file(proc_root, "/dev/null", CHR, os.makedev(1, 3))
    other_null = stat(CHR, dev=null.st_dev, ino=null.st_ino + 1, rdev=os.makedev(1, 3))
    assert audit_fd(proc_root, "/dev/null", other_null) == [("file.path.evasive_device", None)]
    zero = stat(CHR, dev=null.st_dev, ino=null.st_ino + 1, rdev=os.makedev(1, 5))
    assert audit_fd(proc_root, "/dev/null", zero) == [("file.path.unaccessible", None)]


def test_memfd_and_dead_process_proc_files_are_left_to_criu(proc_root: Path):
    shmem = paths.shmem_device()
    assert audit_fd(proc_root, "/memfd:cache (deleted)", stat(dev=shmem, nlink=1), mnt_id=0) == []
    assert audit_fd(proc_root, "/memfd:x (deleted)", stat(dev=os.makedev(0, 99)), mnt_id=0) == []
    assert audit_fd(proc_root, "/proc/555 (deleted)", stat(DIR, dev=PROC_DEV, nlink=0), mnt_id=22) == []


def test_files_on_hidden_mounts_are_blocked(proc_root: Path):
    assert audit_fd(proc_root, "/dev/shm/old", stat(dev=os.makedev(0, 23)), mnt_id=25) == [
        ("file.mount.overmounted", None)]
    new = host_file(proc_root, "/dev/shm/new")
    assert audit_fd(proc_root, "/dev/shm/new", new, mnt_id=30) == []


def test_a_root_in_its_own_mount_namespace_is_looked_up_in_the_tree_s_tables(proc_root: Path):
    # The root's namespace (mnt:[5]) has a mount 60 the auditor's has not; the
    # auditor's own mounts (ROOT_ID...) are not CRIU's to search any more.
    (proc_root / str(PID) / "ns" / "mnt").unlink()
    os.symlink("mnt:[5]", proc_root / str(PID) / "ns" / "mnt")
    (proc_root / str(PID) / "mountinfo").write_text(
        "60 1 0:60 / / rw - tmpfs none rw\n")
    (proc_root / str(PID) / "root").mkdir()
    (proc_root / str(PID) / "root" / "file").touch()
    ctx = AuditContext(root_pid=PID, tree_pids={PID}, proc_root=proc_root)
    assert [n.root for n in paths.dumped_namespaces(ctx)] == [f"{proc_root}/{PID}/root"]
    inside = os.stat(proc_root / str(PID) / "root" / "file")
    assert audit_fd(proc_root, "/file", inside, mnt_id=60) == []
    assert audit_fd(proc_root, "/etc/passwd", host_file(proc_root, "/etc/passwd")) == [
        ("file.mount.invisible", None)]


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


@pytest.mark.root
def test_devices_by_major_and_minor(proc_root: Path):
    def device(target: str, major: int, minor: int, mode: int = CHR, **fdinfo: str) -> list:
        node = host_file(proc_root, target, mode, os.makedev(major, minor))
        return audit_fd(proc_root, target, node, **fdinfo)

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


# ---------------------------------------------------------------- the mount tree of an own namespace

OWN_NAMESPACE = """\
60 59 254:0 / / rw - ext4 /dev/vda rw
61 60 0:21 / /proc rw - proc proc rw
62 60 254:0 /etc /srv/etc rw master:7 - ext4 /dev/vda rw
63 60 0:70 / /data rw - ramfs none rw
64 60 0:71 /sub /bind rw - tmpfs none rw
65 60 0:72 / /shared rw master:9 - tmpfs none rw
66 60 0:73 / /orphan rw master:11 - tmpfs none rw
67 60 0:74 / /peer rw shared:12 - tmpfs none rw
68 60 0:75 / /peer-slave rw master:12 - tmpfs none rw
69 60 0:76 / /remote rw - fuse.sshfs host:/ rw
70 60 0:77 / /dev/mqueue rw - mqueue mqueue rw
71 60 0:78 / /empty-mqueue rw - mqueue mqueue rw
72 60 0:79 / /host-ramfs rw - ramfs none rw
73 60 0:80 /dir /host-bind rw - tmpfs none rw
"""


def mount_tree(proc_root: Path, root_master: str = "") -> list[tuple[str, str | None]]:
    (proc_root / str(PID) / "ns" / "mnt").unlink()
    os.symlink("mnt:[5]", proc_root / str(PID) / "ns" / "mnt")
    (proc_root / str(PID) / "mountinfo").write_text(
        OWN_NAMESPACE.replace(" / / rw ", f" / / rw {root_master}"))
    # Paths of the namespace resolve from its process's root: one queue in /dev/mqueue.
    (proc_root / str(PID) / "root" / "dev" / "mqueue").mkdir(parents=True)
    (proc_root / str(PID) / "root" / "dev" / "mqueue" / "jobs").touch()
    (proc_root / str(PID) / "root" / "empty-mqueue").mkdir()
    # CRIU's own namespace has peer group 9 on the device of mount 65, none for 11,
    # and mounts the file systems of 72 and 73 (whole, or a directory above 73's).
    (proc_root / "self" / "mountinfo").write_text(
        "27 1 254:0 / / rw - ext4 /dev/vda rw\n90 27 0:72 / /mnt rw shared:9 - tmpfs none rw\n"
        "91 27 0:79 / /ramfs rw - ramfs none rw\n92 27 0:80 / /tmpfs rw - tmpfs none rw\n")
    ctx = AuditContext(root_pid=PID, tree_pids={PID}, proc_root=proc_root)
    return [(f.code, f.option_value) for f in files.check_mount_tree(ctx, Proc(PID, proc_root))]


def test_mountinfo_says_roots_and_peer_groups():
    table = Mounts.parse(OWN_NAMESPACE)
    assert table.namespace_root().id == 60
    assert (table.get(62).root, table.get(62).master, table.get(67).shared) == ("/etc", 7, 12)


def test_the_mount_tree_of_a_root_in_its_own_namespace(proc_root: Path):
    assert sorted(mount_tree(proc_root)) == sorted([
        ("mount.sharing.unreachable", None),            # 62: master 7 is nowhere
        ("mount.fs_unsupported", "ramfs"),              # 63
        ("mount.bind.no_root", None),                   # 64: /sub of a tmpfs mounted nowhere
        ("mount.sharing.external_master", None),        # 65: master 9 is in CRIU's namespace
        ("mount.external.auto", "auto"),
        ("mount.sharing.unreachable", None),            # 66: master 11 is nowhere
        ("mount.fuse", None),                           # 69, whatever its subtype
        ("mount.fs_not_empty", None),                   # 70: 71 is empty
        ("mount.external.auto", "auto"),                # 72: a ramfs CRIU's namespace has
        ("mount.external.auto", "auto"),                # 73: a bind of a tmpfs CRIU's has whole
    ])                                                  # 68: its master is 67, dumped too


def test_a_bind_of_the_namespace_root_takes_the_root_s_master(proc_root: Path):
    # 62 is a bind of the root's file system: with the root's master (7) it
    # receives it from the root; only 66's master is left unreachable.
    findings = mount_tree(proc_root, "master:7 ")
    assert findings.count(("mount.sharing.unreachable", None)) == 1
    assert ("mount.fs_unsupported", "ramfs") in findings


def test_a_root_in_the_auditor_s_namespace_has_no_mount_tree_to_judge(proc_root: Path):
    ctx = AuditContext(root_pid=PID, tree_pids={PID}, proc_root=proc_root)
    assert list(files.check_mount_tree(ctx, Proc(PID, proc_root))) == []


# The host's table (CRIU's own) and that of a child's mount namespace, copied
# from it (private) before the child mounted a ramfs of its own; the root
# shares the host's.
HOST_WITH_ODD_MOUNTS = """\
27 1 254:0 / / rw - ext4 /dev/vda rw
28 27 0:21 / /proc rw - proc proc rw
29 27 254:0 /srv /srv/bind rw - ext4 /dev/vda rw
30 27 0:70 / /host-ramfs rw - ramfs none rw
31 27 0:71 / /shared-ramfs rw shared:4 - ramfs none rw
32 27 0:72 / /remote rw - fuse.sshfs host:/ rw
33 27 0:73 / /dev/mqueue rw - mqueue mqueue rw
34 27 0:74 / /host-loop rw - ext4 /dev/loop0 rw
"""
CHILD_NAMESPACE = """\
80 79 254:0 / / rw - ext4 /dev/vda rw
81 80 0:21 / /proc rw - proc proc rw
82 80 0:70 / /host-ramfs rw - ramfs none rw
83 80 0:71 / /shared-ramfs rw - ramfs none rw
84 80 0:72 / /remote rw - fuse.sshfs host:/ rw
85 80 0:73 / /dev/mqueue rw - mqueue mqueue rw
86 80 0:90 / /own-ramfs rw - ramfs none rw
"""


def nested_mount_tree(proc_root: Path, child_namespace: str) -> list[tuple[str, str]]:
    child = PID + 1
    (proc_root / str(child) / "ns").mkdir(parents=True)
    os.symlink(child_namespace, proc_root / str(child) / "ns" / "mnt")
    (proc_root / str(child) / "mountinfo").write_text(CHILD_NAMESPACE)
    for name in (str(PID), "self"):
        (proc_root / name / "mountinfo").write_text(HOST_WITH_ODD_MOUNTS)
    (proc_root / "self" / "root" / "dev" / "mqueue" / "jobs").mkdir(parents=True)
    ctx = AuditContext(root_pid=PID, tree_pids={PID, child}, proc_root=proc_root)
    return [(f.code, f.message) for f in files.check_mount_tree(ctx, Proc(PID, proc_root))]


def test_a_child_in_a_mount_namespace_of_its_own_has_the_host_s_mounts_validated(proc_root: Path):
    findings = nested_mount_tree(proc_root, "mnt:[6]")
    assert sorted((code, message.split(" is ")[0].split(" binds ")[0]) for code, message in findings) == [
        ("mount.external.auto", "mount 30 at /host-ramfs"),     # private: CRIU's own mount
        ("mount.external.auto", "mount 31 at /shared-ramfs"),   # shared, but 83 binds it whole
        ("mount.external.auto", "mount 34 at /host-loop"),
        ("mount.external.auto", "mount 82 at /host-ramfs"),
        ("mount.external.auto", "mount 83 at /shared-ramfs"),
        ("mount.fs_unsupported", "mount 86 at /own-ramfs"),     # in CRIU's namespace nowhere
    ]   # 29 binds the root's file system; FUSE and the mqueue are dumped by no one
    assert all(message.endswith("when a process of the tree has a mount namespace of its own")
               for _, message in findings)


def test_a_tree_in_the_auditor_s_mount_namespace_has_no_mount_tree_to_judge(proc_root: Path):
    assert nested_mount_tree(proc_root, "mnt:[1]") == []


# A root in its own namespace with one btrfs (device 0:50) shown three ways:
# from its top, a directory of the top, and a subvolume.
BTRFS_NAMESPACE = """\
60 59 254:0 / / rw - ext4 /dev/vda rw
61 60 0:50 / /top rw - btrfs /dev/loop0 rw,space_cache=v2,subvolid=5,subvol=/
62 60 0:50 /dir /top-dir rw - btrfs /dev/loop0 rw,space_cache=v2,subvolid=5,subvol=/
63 60 0:50 /volume /volume rw - btrfs /dev/loop0 rw,space_cache=v2,subvolid=256,subvol=/volume
"""


def test_btrfs_subvolumes_are_file_systems_of_their_own_and_none_can_be_mounted_anew(proc_root: Path):
    table = Mounts.parse(BTRFS_NAMESPACE)
    assert [table.get(i).file_system for i in (60, 61, 63)] == [
        (os.makedev(254, 0), 0), (os.makedev(0, 50), 5), (os.makedev(0, 50), 256)]
    (proc_root / str(PID) / "ns" / "mnt").unlink()
    os.symlink("mnt:[5]", proc_root / str(PID) / "ns" / "mnt")
    (proc_root / str(PID) / "mountinfo").write_text(BTRFS_NAMESPACE)
    ctx = AuditContext(root_pid=PID, tree_pids={PID}, proc_root=proc_root)
    findings = [(f.code, f.message.split(" ")[1]) for f in files.check_mount_tree(ctx, Proc(PID, proc_root))]
    assert sorted(findings) == [("mount.bind.no_root", "63"), ("mount.btrfs", "61")]  # 62 binds 61


def test_read_only_mounts_are_those_whose_mount_or_file_system_says_ro():
    table = Mounts.parse("1 0 0:1 / / ro,relatime - tmpfs a rw\n2 1 0:2 / /b rw - tmpfs b ro\n"
                         "3 1 0:3 / /c rw,nosuid - tmpfs c rw,size=4k\n")
    assert [table.get(n).read_only for n in (1, 2, 3)] == [True, True, False]


def test_a_fixture_pipe_is_walked_for_its_holders_even_when_the_audit_names_none(
        proc_root: Path):
    # No kernel stands behind a fixture's pipe to be asked whether its other end is open.
    (proc_root / "200" / "fd").mkdir(parents=True)
    os.symlink("pipe:[76]", proc_root / "200" / "fd" / "4")
    (proc_root / str(PID) / "fdinfo").mkdir()
    (proc_root / str(PID) / "fdinfo" / "3").write_text("flags:\t00\n")
    ctx = AuditContext(root_pid=PID, tree_pids={PID}, proc_root=proc_root, name_holders=False)
    proc = Proc(PID, proc_root)
    ctx.tree_fds[PID] = [end := OpenFd(proc, 3, "pipe:[76]", known_stat=stat(0o10600))]
    (found,) = files.check_fd(ctx, proc, end)
    assert found.code == "file.pipe.external" and "pid 200" in found.message
