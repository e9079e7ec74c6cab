"""Mounts as CRIU looks them up: by mount id, in the mount tables of the dump.

Every state here is made for real (bind mounts lazily unmounted, directories
mounted over, processes in mount namespaces of their own) and dumped by the
real CRIU next to crwatch's verdict.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.agreement import assert_agrees
from tests.support.filesystems import btrfs_image, ext4_image
from tests.support.namespaces import (
    CLONE,
    MS_PRIVATE,
    MS_REC,
    MS_SHARED,
    MS_SLAVE,
    child_in_namespace,
    in_own_mount_namespace,
)
from tests.support.subjects import subject
from tracker.criu.runner import find_criu

pytestmark = [pytest.mark.criu]


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A scratch directory on a tmpfs of its own; whatever a test mounts inside goes with it."""
    directory = Path(tempfile.mkdtemp(prefix="crwatch-mounts-"))
    subprocess.run(["mount", "-t", "tmpfs", "crwatch-mounts", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-R", "-l", str(directory)], check=True)
        directory.rmdir()


def mount(*arguments: str) -> None:
    subprocess.run(["mount", *arguments], check=True)


def lazily_unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=True)


def mapping(path: Path) -> str:
    return (f"f = open({str(path)!r}, 'rb'); m = mmap.mmap(f.fileno(), 8192, prot=mmap.PROT_READ); "
            f"f.close()")


def dump_fails_with(pid: int, options: list[str], message: str) -> None:
    """CRIU refuses the state even with `options`, with `message`."""
    result = find_criu().dump(pid, options)
    assert not result.ok and message in result.log, (options, result.errors)


# ---------------------------------------------------------------- lazily unmounted mounts

def test_file_opened_through_a_lazily_unmounted_bind_mount_is_blocked(scratch: Path):
    # The bind mount shares its device with the scratch tmpfs, still mounted:
    # only the file's mount id tells that its mount is gone.
    (scratch / "source").mkdir()
    (scratch / "source" / "file").write_text("x")
    (scratch / "bind").mkdir()
    mount("--bind", str(scratch / "source"), str(scratch / "bind"))
    with subject(f"f = open({str(scratch / 'bind' / 'file')!r}); ready(); hold()") as s:
        lazily_unmount(scratch / "bind")
        document = assert_agrees(s.pid, "file opened through a lazily unmounted bind mount",
                                 expect="blocked", codes={"file.mount.invisible"},
                                 criu_error="Can't lookup mount=")
    assert any(r["fd"] == 3 for r in document["reasons"] if r["code"] == "file.mount.invisible")


def test_file_mapped_through_a_lazily_unmounted_bind_mount_is_blocked(scratch: Path):
    (scratch / "source").mkdir()
    (scratch / "source" / "data").write_bytes(b"x" * 8192)
    (scratch / "bind").mkdir()
    mount("--bind", str(scratch / "source"), str(scratch / "bind"))
    with subject(f"{mapping(scratch / 'bind' / 'data')}; ready(); hold()") as s:
        lazily_unmount(scratch / "bind")
        document = assert_agrees(s.pid, "file mapped through a lazily unmounted bind mount",
                                 expect="blocked", codes={"file.mount.invisible"},
                                 criu_error="for fd=-3 path=/data")
    assert any(r["message"].startswith("mapping ") for r in document["reasons"])


def test_executable_run_from_a_lazily_unmounted_tmpfs_is_blocked(scratch: Path):
    (scratch / "bin").mkdir()
    mount("-t", "tmpfs", "crwatch-bin", str(scratch / "bin"))
    python = scratch / "bin" / "python3"
    shutil.copy2(os.path.realpath(sys.executable), python)
    code = f"""
    if os.environ.get("CRWATCH_STAGE") != "copied":
        os.environ["CRWATCH_STAGE"] = "copied"
        own_code = open("/proc/self/cmdline", "rb").read().split(b"\\0")[2]
        os.execv({str(python)!r}, [{str(python)!r}, "-c", own_code])
    ready(); hold()
    """
    with subject(code) as s:
        assert os.readlink(f"/proc/{s.pid}/exe") == str(python)
        lazily_unmount(scratch / "bin")
        document = assert_agrees(s.pid, "executable run from a lazily unmounted tmpfs",
                                 expect="blocked", codes={"file.mount.invisible"},
                                 criu_error="for fd=-3 path=/python3")
    assert any("/python3 is on mount" in r["message"] for r in document["reasons"])


# ---------------------------------------------------------------- overmounted directories

def test_file_under_a_directory_mounted_over_is_blocked_even_with_link_remap(scratch: Path):
    # The file's own mount is in plain sight; its name now leads into the
    # tmpfs on top, where it is not: CRIU asks for --link-remap, whose link
    # into that directory then fails across mounts.
    (scratch / "dir").mkdir()
    (scratch / "dir" / "file").write_text("x")
    with subject(f"f = open({str(scratch / 'dir' / 'file')!r}); ready(); hold()") as s:
        mount("-t", "tmpfs", "crwatch-over", str(scratch / "dir"))
        assert_agrees(s.pid, "file under a directory mounted over", expect="blocked",
                      codes={"file.path.overmounted"}, criu_error="Use link-remap option")
        dump_fails_with(s.pid, ["--link-remap"], "Invalid cross-device link")


def test_file_mapped_from_under_a_directory_mounted_over_is_blocked(scratch: Path):
    (scratch / "dir").mkdir()
    (scratch / "dir" / "data").write_bytes(b"x" * 8192)
    with subject(f"{mapping(scratch / 'dir' / 'data')}; ready(); hold()") as s:
        mount("-t", "tmpfs", "crwatch-over", str(scratch / "dir"))
        assert_agrees(s.pid, "file mapped from under a directory mounted over", expect="blocked",
                      codes={"file.path.overmounted"}, criu_error="Use link-remap option")
        dump_fails_with(s.pid, ["--link-remap"], "Invalid cross-device link")


def test_path_that_now_names_another_file_is_unaccessible(scratch: Path):
    (scratch / "dir").mkdir()
    (scratch / "dir" / "file").write_text("old")
    with subject(f"f = open({str(scratch / 'dir' / 'file')!r}); ready(); hold()") as s:
        mount("-t", "tmpfs", "crwatch-over", str(scratch / "dir"))
        (scratch / "dir" / "file").write_text("new")
        assert_agrees(s.pid, "still-linked file whose path names another file", expect="blocked",
                      codes={"file.path.unaccessible"}, criu_error="Unaccessible path opened")
        dump_fails_with(s.pid, ["--link-remap"], "Unaccessible path opened")


def test_cwd_in_a_directory_mounted_over_is_unaccessible(scratch: Path):
    (scratch / "dir").mkdir()
    with subject(f"os.chdir({str(scratch / 'dir')!r}); ready(); hold()") as s:
        mount("-t", "tmpfs", "crwatch-over", str(scratch / "dir"))
        document = assert_agrees(s.pid, "cwd in a directory mounted over", expect="blocked",
                                 codes={"file.path.unaccessible"},
                                 criu_error="Unaccessible path opened")
    assert any(r["message"].startswith("cwd: ") for r in document["reasons"])


def test_device_node_whose_path_names_another_node_of_the_device_needs_evasive_devices(scratch: Path):
    (scratch / "dir").mkdir()
    os.mknod(scratch / "dir" / "null", 0o20666, os.makedev(1, 3))
    with subject(f"f = open({str(scratch / 'dir' / 'null')!r}); ready(); hold()") as s:
        mount("-t", "tmpfs", "crwatch-over", str(scratch / "dir"))
        os.mknod(scratch / "dir" / "null", 0o20666, os.makedev(1, 3))
        assert_agrees(s.pid, "device node whose path names another node of the same device",
                      expect="needs_options", codes={"file.path.evasive_device"},
                      criu_error="Unaccessible path opened")


# ---------------------------------------------------------------- own mount namespaces

def test_process_that_unshared_its_mount_namespace_keeps_the_old_mounts_and_is_blocked():
    # Its stdio, its executable and its libraries were opened before
    # unshare(CLONE_NEWNS): their mounts belong to the old namespace, which
    # CRIU no longer searches once the root has a namespace of its own.
    code = """
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.unshare(0x00020000) == 0, os.strerror(ctypes.get_errno())
    ready(); hold()
    """
    with subject(code) as s:
        document = assert_agrees(s.pid, "process that unshared its mount namespace",
                                 expect="blocked", codes={"file.mount.invisible"},
                                 criu_error="Can't lookup mount=")
    invisible = [r["message"] for r in document["reasons"] if r["code"] == "file.mount.invisible"]
    assert any(m.startswith("fd 0: /dev/null") for m in invisible)
    assert any(m.startswith("mapping ") and "python" in m for m in invisible)


@pytest.mark.parametrize("propagation, state", [
    (MS_REC | MS_PRIVATE, "private"), (MS_REC | MS_SLAVE, "slave"), (0, "unchanged")])
def test_process_that_execs_in_its_own_mount_namespace_is_ok(propagation: int, state: str):
    with subject(in_own_mount_namespace("ready(); hold()", propagation)) as s:
        document = assert_agrees(s.pid, f"exec in its own mount namespace ({state} propagation)",
                                 expect="ok")
    assert "namespace.own" in {r["code"] for r in document["reasons"]}


def test_own_mount_namespace_with_a_tmpfs_and_a_bind_mount_of_the_host_is_ok(scratch: Path):
    (scratch / "tmp").mkdir()
    (scratch / "etc").mkdir()
    code = in_own_mount_namespace(f"""
assert libc.mount(b"crwatch-ns", {str(scratch / 'tmp')!r}.encode(), b"tmpfs", 0, None) == 0
assert libc.mount(b"/etc", {str(scratch / 'etc')!r}.encode(), None, 0x1000, None) == 0   # MS_BIND
kept = [open({str(scratch / 'tmp' / 'file')!r}, "w"), open({str(scratch / 'etc' / 'hostname')!r})]
os.chdir({str(scratch / 'tmp')!r})
ready(); hold()
""")
    with subject(code) as s:
        assert_agrees(s.pid, "own mount namespace with a tmpfs and a bind mount of the host",
                      expect="ok")


def test_own_mount_namespace_with_a_file_lazily_unmounted_inside_is_blocked(scratch: Path):
    (scratch / "tmp").mkdir()
    code = in_own_mount_namespace(f"""
assert libc.mount(b"crwatch-ns", {str(scratch / 'tmp')!r}.encode(), b"tmpfs", 0, None) == 0
f = open({str(scratch / 'tmp' / 'file')!r}, "w")
assert libc.umount2({str(scratch / 'tmp')!r}.encode(), 2) == 0   # MNT_DETACH
ready(); hold()
""")
    with subject(code) as s:
        assert_agrees(s.pid, "own mount namespace, file on a mount it lazily unmounted",
                      expect="blocked", codes={"file.mount.invisible"},
                      criu_error="Can't lookup mount=")


# ---------------------------------------------------------------- shared memory on the shmem mount

SHARED_MEMORY = """
anonymous = mmap.mmap(-1, 8192, flags=mmap.MAP_SHARED)
anonymous[0] = 1
memfd = os.memfd_create("crwatch-shared")
os.ftruncate(memfd, 8192)
shared_memfd = mmap.mmap(memfd, 8192, flags=mmap.MAP_SHARED)
os.close(memfd)
zero = os.open("/dev/zero", os.O_RDWR)
shared_zero = mmap.mmap(zero, 8192, flags=mmap.MAP_SHARED)
os.close(zero)
kept_memfd = os.memfd_create("crwatch-kept")
ready(); hold()
"""


@pytest.mark.parametrize("own_namespace", [False, True])
def test_shared_anonymous_memory_and_memfds_are_not_files_on_mount_0(own_namespace: bool):
    # /dev/zero (deleted) and /memfd:... (deleted) live on the kernel's shmem
    # mount (mount id 0, in no table): CRIU dumps their contents.
    code = in_own_mount_namespace(SHARED_MEMORY) if own_namespace else SHARED_MEMORY
    with subject(code) as s:
        maps = Path(f"/proc/{s.pid}/maps").read_text()
        assert "/dev/zero (deleted)" in maps and "/memfd:crwatch-shared (deleted)" in maps
        document = assert_agrees(s.pid, "shared anonymous memory, memfds mapped shared"
                                 + (" (own mount namespace)" if own_namespace else ""), expect="ok")
    assert not [r for r in document["reasons"] if r["code"].startswith("file.")]


# ---------------------------------------------------------------- the mount tree of an own namespace

def test_own_mount_namespace_with_a_file_system_criu_does_not_know_needs_enable_fs(scratch: Path):
    (scratch / "ramfs").mkdir()
    code = in_own_mount_namespace(f"""
assert libc.mount(b"crwatch-ramfs", {str(scratch / 'ramfs')!r}.encode(), b"ramfs", 0, None) == 0
ready(); hold()
""")
    with subject(code) as s:
        document = assert_agrees(s.pid, "own mount namespace with a ramfs", expect="needs_options",
                                 codes={"mount.fs_unsupported"}, criu_error="unsupported id")
    assert document["required_options"] == ["--enable-fs"]


def test_own_mount_namespace_slave_of_a_shared_host_mount_needs_external_masters(scratch: Path):
    # `unshare -m --propagation slave` where the host's mounts are shared (as
    # systemd makes them): the copy receives mounts from the host's peer group.
    (scratch / "shared").mkdir()
    mount("-t", "tmpfs", "crwatch-shared", str(scratch / "shared"))
    mount("--make-shared", str(scratch / "shared"))
    with subject(in_own_mount_namespace("ready(); hold()", MS_REC | MS_SLAVE)) as s:
        assert_agrees(s.pid, "own mount namespace, slave of a shared host mount",
                      expect="needs_options",
                      codes={"mount.sharing.external_master", "mount.external.auto"},
                      criu_error="has unreachable sharing")
        dump_fails_with(s.pid, ["--enable-external-masters"], "has unreachable sharing")


def test_own_mount_namespace_with_a_bind_mount_whose_file_system_is_gone_is_blocked(scratch: Path):
    (scratch / "whole").mkdir()
    (scratch / "bind").mkdir()
    code = in_own_mount_namespace(f"""
assert libc.mount(b"crwatch-whole", {str(scratch / 'whole')!r}.encode(), b"tmpfs", 0, None) == 0
os.mkdir({str(scratch / 'whole' / 'sub')!r})
assert libc.mount({str(scratch / 'whole' / 'sub')!r}.encode(), {str(scratch / 'bind')!r}.encode(),
                  None, 0x1000, None) == 0   # MS_BIND
assert libc.umount2({str(scratch / 'whole')!r}.encode(), 0) == 0
ready(); hold()
""")
    with subject(code) as s:
        assert_agrees(s.pid, "own mount namespace, bind mount of a file system mounted nowhere "
                      "else", expect="blocked", codes={"mount.bind.no_root"},
                      criu_error="doesn't have a proper root mount")
        dump_fails_with(s.pid, ["--ext-mount-map", "auto"], "doesn't have a proper root mount")


def test_child_in_a_nested_mount_namespace_with_a_file_on_its_own_mount_is_blocked(scratch: Path):
    # The root shares CRIU's namespace, so CRIU resolves every path from its
    # own root, where the child's tmpfs is not: the name leads nowhere, and the
    # link --link-remap would make lands on another mount.
    (scratch / "nested").mkdir()
    code = f"""
    libc = ctypes.CDLL(None, use_errno=True)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        assert libc.unshare(0x00020000) == 0
        assert libc.mount(b"none", b"/", None, {MS_REC | MS_PRIVATE}, None) == 0
        assert libc.mount(b"crwatch-nested", {str(scratch / 'nested')!r}.encode(), b"tmpfs", 0, None) == 0
        f = open({str(scratch / 'nested' / 'file')!r}, "w")
        os.write(w, b"x")
        hold()
    os.read(r, 1); os.close(r); os.close(w)
    ready(); hold()
    """
    with subject(code) as s:
        assert_agrees(s.pid, "child in a nested mount namespace, file on its own tmpfs",
                      expect="blocked", codes={"file.path.overmounted", "namespace.nested_subns"},
                      tree=True, criu_error="Use link-remap option")
        dump_fails_with(s.pid, ["--link-remap"], "Invalid cross-device link")


def test_own_mount_namespace_with_a_fuse_mount_is_blocked_whatever_the_options(scratch: Path):
    # A FUSE mount whose connection is already gone (its /dev/fuse fd closed,
    # so nothing waits on a daemon): CRIU refuses FUSE mounts without looking in.
    (scratch / "fuse").mkdir()
    code = in_own_mount_namespace(f"""
fuse = os.open("/dev/fuse", os.O_RDWR)
options = f"fd={{fuse}},rootmode=40000,user_id=0,group_id=0".encode()
assert libc.mount(b"crwatch", {str(scratch / 'fuse')!r}.encode(), b"fuse.crwatch", 0, options) == 0, \\
    os.strerror(ctypes.get_errno())
os.close(fuse)
ready(); hold()
""")
    with subject(code) as s:
        assert_agrees(s.pid, "own mount namespace with a FUSE mount", expect="blocked",
                      codes={"mount.fuse"}, criu_error="always fail")
        dump_fails_with(s.pid, ["--enable-fs", "fuse"], "always fail")


@pytest.fixture
def message_queue() -> Iterator[bytes]:
    """A POSIX message queue name, unlinked after the test (a queue outlives its creator)."""
    name = f"/crwatch-mounts-{os.getpid()}".encode()
    yield name
    ctypes.CDLL("librt.so.1").mq_unlink(name)


@pytest.mark.parametrize("with_queue", [False, True])
def test_own_mount_namespace_with_an_mqueue_mount_is_ok_only_empty(scratch: Path, message_queue: bytes,
                                                                    with_queue: bool):
    (scratch / "mqueue").mkdir()
    queue = f"""
rt = ctypes.CDLL("librt.so.1", use_errno=True)
rt.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
queue = rt.mq_open({message_queue!r}, os.O_RDWR | os.O_CREAT, 0o600, None)
assert queue >= 0, os.strerror(ctypes.get_errno())
rt.mq_close(queue)
"""
    code = in_own_mount_namespace(f"""
assert libc.mount(b"mqueue", {str(scratch / 'mqueue')!r}.encode(), b"mqueue", 0, None) == 0
{queue if with_queue else ""}
ready(); hold()
""")
    with subject(code) as s:
        if with_queue:
            assert_agrees(s.pid, "own mount namespace with an mqueue mount holding a queue",
                          expect="blocked", codes={"mount.fs_not_empty"},
                          criu_error="mqueue isn't empty")
        else:
            assert_agrees(s.pid, "own mount namespace with an empty mqueue mount", expect="ok")


def test_unlinked_file_with_a_link_left_on_a_read_only_mount_is_blocked(scratch: Path):
    (scratch / "file").write_text("x")
    os.link(scratch / "file", scratch / "other-link")
    with subject(f"f = open({str(scratch / 'file')!r}); os.unlink({str(scratch / 'file')!r}); "
                 f"ready(); hold()") as s:
        mount("-o", "remount,ro", str(scratch))
        assert_agrees(s.pid, "unlinked file with a link left, on a read-only mount",
                      expect="blocked", codes={"file.link_remap.read_only"},
                      criu_error="Use link-remap option")
        dump_fails_with(s.pid, ["--link-remap"], "Read-only file system")


def test_own_mount_namespace_with_a_copy_of_a_host_ramfs_needs_ext_mount_map_auto(scratch: Path):
    # The host mounted the ramfs before the unshare: CRIU cannot save a ramfs,
    # but can take the copy as external, a bind of the host's at restore.
    (scratch / "ramfs").mkdir()
    mount("-t", "ramfs", "crwatch-ramfs", str(scratch / "ramfs"))
    with subject(in_own_mount_namespace("ready(); hold()")) as s:
        document = assert_agrees(s.pid, "own mount namespace with a copy of a host ramfs",
                                 expect="needs_options", codes={"mount.external.auto"},
                                 criu_error="unsupported id")
    assert document["required_options"] == ["--ext-mount-map"]


def test_own_mount_namespace_bind_of_a_host_mount_it_unmounted_needs_ext_mount_map_auto(scratch: Path):
    (scratch / "whole").mkdir()
    (scratch / "bind").mkdir()
    mount("-t", "tmpfs", "crwatch-whole", str(scratch / "whole"))
    (scratch / "whole" / "sub").mkdir()
    code = in_own_mount_namespace(f"""
assert libc.mount({str(scratch / 'whole' / 'sub')!r}.encode(), {str(scratch / 'bind')!r}.encode(),
                  None, 0x1000, None) == 0   # MS_BIND
assert libc.umount2({str(scratch / 'whole')!r}.encode(), 0) == 0
ready(); hold()
""")
    with subject(code) as s:
        assert_agrees(s.pid, "own mount namespace, bind of a host tmpfs it unmounted",
                      expect="needs_options", codes={"mount.external.auto"},
                      criu_error="doesn't have a proper root mount")


def test_own_mount_namespace_slave_of_a_peer_group_only_an_outside_process_has_is_blocked(
        scratch: Path):
    # The subject makes a shared mount in a namespace of its own, and its child copies that
    # namespace as a slave: the child's mount receives from a peer group that neither the
    # dumped tree (the child) nor CRIU's namespace has.
    peer = scratch / "peer"
    peer.mkdir()
    code = f"""
libc = ctypes.CDLL(None, use_errno=True)
def call(result):
    assert result == 0, os.strerror(ctypes.get_errno())
call(libc.unshare(0x00020000))                                        # CLONE_NEWNS
call(libc.mount(b"none", b"/", None, {MS_REC | MS_PRIVATE}, None))
call(libc.mount(b"crwatch-peer", {str(peer).encode()!r}, b"tmpfs", 0, None))
call(libc.mount(b"none", {str(peer).encode()!r}, None, {MS_SHARED}, None))
kid = os.fork()
if kid == 0:
    call(libc.prctl(1, signal.SIGKILL))                               # PR_SET_PDEATHSIG
    os.setsid()                                                       # a root of its own session
    call(libc.unshare(0x00020000))
    call(libc.mount(b"none", b"/", None, {MS_REC | MS_SLAVE}, None))
    null = os.open("/dev/null", os.O_RDWR)
    for number in (0, 1, 2):
        os.dup2(null, number)
    os.execv("/bin/sleep", ["sleep", "1000"])                         # nothing of the old namespace
while os.readlink(f"/proc/{{kid}}/exe") != "/usr/bin/sleep":
    time.sleep(0.01)
ready(str(kid)); hold()
"""
    with subject(code) as s:
        kid = int(s.note)
        assert_agrees(kid, "own mount namespace, slave of a peer group of an outside process",
                      expect="blocked", codes={"mount.sharing.unreachable"},
                      criu_error="has unreachable sharing")
        dump_fails_with(kid, ["--enable-external-masters", "--ext-mount-map", "auto"],
                        "has unreachable sharing")


# ---------------------------------------------------------------- a child's mount namespace

# A child with a mount namespace of its own makes CRIU validate every mount
# table it collects, the child's and its own (the host's), though it dumps
# none of them when the root shares CRIU's: what the host mounts can refuse
# a tree none of whose files are on it.

PROPAGATION = {True: "private", False: "unchanged"}
MAKE_PRIVATE = f'assert ctypes.CDLL(None).mount(b"none", b"/", None, {MS_REC | MS_PRIVATE}, None) == 0'


def child_in_own_mount_namespace(private: bool, child_setup: str = "") -> str:
    """A root in the host's mount namespace whose child unshares one (its mounts made private,
    or left as the host has them), runs the lines of `child_setup`, and holds."""
    lines = [MAKE_PRIVATE] if private else []
    lines += textwrap.dedent(child_setup).strip().splitlines()
    return child_in_namespace(CLONE["mnt"], child_setup="\n    ".join(lines) or "pass")


@pytest.mark.parametrize("private", [True, False], ids=["private", "unchanged"])
def test_child_in_its_own_mount_namespace_without_odd_mounts_is_ok(private: bool):
    with subject(child_in_own_mount_namespace(private)) as s:
        document = assert_agrees(s.pid, f"child in its own mount namespace ({PROPAGATION[private]} "
                                 f"propagation)",
                                 expect="ok", tree=True)
    assert "namespace.nested_subns" in {r["code"] for r in document["reasons"]}


@pytest.mark.parametrize("private", [True, False], ids=["private", "unchanged"])
def test_host_ramfs_with_a_child_in_its_own_mount_namespace_needs_ext_mount_map_auto(
        scratch: Path, private: bool):
    # Nothing of the tree is on the ramfs: CRIU refuses it only because it
    # validates its own namespace's mounts once a child has a namespace of its
    # own. --ext-mount-map auto takes the host's (private) ramfs as external.
    (scratch / "ramfs").mkdir()
    mount("-t", "ramfs", "crwatch-ramfs", str(scratch / "ramfs"))
    with subject(child_in_own_mount_namespace(private)) as s:
        document = assert_agrees(s.pid, f"host ramfs, child in its own mount namespace "
                                 f"({PROPAGATION[private]} propagation)",
                                 expect="needs_options", codes={"mount.external.auto"},
                                 tree=True, criu_error="unsupported id")
    assert document["required_options"] == ["--ext-mount-map"]
    assert any("/ramfs is a ramfs" in r["message"] for r in document["reasons"])


@pytest.mark.parametrize("private", [True, False], ids=["private", "unchanged"])
def test_shared_host_ramfs_with_a_child_in_its_own_mount_namespace(scratch: Path, private: bool):
    # A shared mount is never auto-detected as external; the child's private
    # copy is, and CRIU then passes the host's as a bind of it. Left shared in
    # the child too, only --enable-fs helps.
    (scratch / "ramfs").mkdir()
    mount("-t", "ramfs", "crwatch-ramfs", str(scratch / "ramfs"))
    mount("--make-shared", str(scratch / "ramfs"))
    with subject(child_in_own_mount_namespace(private)) as s:
        state = (f"shared host ramfs, child in its own mount namespace ({PROPAGATION[private]} "
                 f"propagation)")
        if private:
            assert_agrees(s.pid, state, expect="needs_options", codes={"mount.external.auto"},
                          tree=True, criu_error="unsupported id")
        else:
            assert_agrees(s.pid, state, expect="needs_options", codes={"mount.fs_unsupported"},
                          tree=True, criu_error="unsupported id")
            dump_fails_with(s.pid, ["--ext-mount-map", "auto"], "unsupported id")


def test_ramfs_in_a_child_s_own_mount_namespace_needs_enable_fs(scratch: Path):
    # The host has no ramfs for --ext-mount-map auto to bind it from.
    (scratch / "ramfs").mkdir()
    setup = (f'assert ctypes.CDLL(None).mount(b"crwatch-ramfs", {str(scratch / "ramfs")!r}.encode(), '
             f'b"ramfs", 0, None) == 0')
    with subject(child_in_own_mount_namespace(True, setup)) as s:
        document = assert_agrees(s.pid, "ramfs in a child's own mount namespace",
                                 expect="needs_options", codes={"mount.fs_unsupported"},
                                 tree=True, criu_error="unsupported id")
        dump_fails_with(s.pid, ["--ext-mount-map", "auto"], "unsupported id")
    assert document["required_options"] == ["--enable-fs"]


def test_host_ext4_with_a_child_in_its_own_mount_namespace_needs_ext_mount_map_auto(scratch: Path):
    # CRIU knows no ext4 to mount anew: only binds of the host's "/" pass.
    with ext4_image(scratch / "ext4"):
        with subject(child_in_own_mount_namespace(True)) as s:
            assert_agrees(s.pid, "host ext4 mount, child in its own mount namespace",
                          expect="needs_options", codes={"mount.external.auto"}, tree=True,
                          criu_error="unsupported id")


def test_host_bind_without_its_file_system_with_a_child_in_its_own_mount_namespace(scratch: Path):
    (scratch / "whole").mkdir()
    (scratch / "bind").mkdir()
    mount("-t", "tmpfs", "crwatch-whole", str(scratch / "whole"))
    (scratch / "whole" / "sub").mkdir()
    mount("--bind", str(scratch / "whole" / "sub"), str(scratch / "bind"))
    subprocess.run(["umount", str(scratch / "whole")], check=True)
    with subject(child_in_own_mount_namespace(True)) as s:
        assert_agrees(s.pid, "host bind mount of a file system mounted nowhere else, child in its "
                      "own mount namespace", expect="needs_options", codes={"mount.external.auto"},
                      tree=True, criu_error="doesn't have a proper root mount")


def test_fuse_and_a_full_mqueue_in_a_child_s_own_mount_namespace_are_ok(scratch: Path,
                                                                      message_queue: bytes):
    # CRIU validates the child's mounts but, the root sharing its namespace,
    # dumps none: the dump of FUSE and of a non-empty mqueue never runs.
    (scratch / "fuse").mkdir()
    (scratch / "mqueue").mkdir()
    setup = f"""
    libc = ctypes.CDLL(None, use_errno=True)
    fuse = os.open("/dev/fuse", os.O_RDWR)
    options = f"fd={{fuse}},rootmode=40000,user_id=0,group_id=0".encode()
    assert libc.mount(b"crwatch", {str(scratch / 'fuse')!r}.encode(), b"fuse.crwatch", 0, options) == 0
    os.close(fuse)
    assert libc.mount(b"mqueue", {str(scratch / 'mqueue')!r}.encode(), b"mqueue", 0, None) == 0
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    rt.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    queue = rt.mq_open({message_queue!r}, os.O_RDWR | os.O_CREAT, 0o600, None)
    assert queue >= 0, os.strerror(ctypes.get_errno())
    rt.mq_close(queue)
    """
    with subject(child_in_own_mount_namespace(True, setup)) as s:
        assert_agrees(s.pid, "FUSE and a non-empty mqueue in a child's own mount namespace",
                      expect="ok", tree=True)


def test_host_slave_of_a_peer_group_outside_with_a_child_in_its_own_mount_namespace(scratch: Path):
    # The host's mount receives from a peer group that only another namespace
    # (a holder's, outside the tree) has: CRIU, validating the host's table,
    # finds the master nowhere it looks.
    (scratch / "source").mkdir()
    (scratch / "slave").mkdir()
    mount("-t", "tmpfs", "crwatch-source", str(scratch / "source"))
    mount("--make-shared", str(scratch / "source"))
    mount("--bind", str(scratch / "source"), str(scratch / "slave"))
    mount("--make-slave", str(scratch / "slave"))
    holder = subprocess.Popen(["unshare", "-m", "--propagation", "unchanged", "sh", "-c",
                               "echo ready; exec sleep 600"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"ready\n"
        subprocess.run(["umount", str(scratch / "source")], check=True)
        with subject(child_in_own_mount_namespace(True)) as s:
            assert_agrees(s.pid, "host slave of a peer group only a namespace outside has, child "
                          "in its own mount namespace", expect="needs_options",
                          codes={"mount.sharing.external_master", "mount.external.auto"},
                          tree=True, criu_error="has unreachable sharing")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


# ---------------------------------------------------------------- btrfs

# CRIU's fstypes[] names btrfs with the code of a file system it does not
# know, which --enable-fs cannot change, and tells its subvolumes apart
# (btrfs_sb_equal): it mounts no btrfs anew, and a subvolume binds nothing of
# the file system's top.

def test_own_mount_namespace_with_a_btrfs_is_blocked_whatever_the_options(scratch: Path):
    image = btrfs_image(scratch / "btrfs.img")
    (scratch / "btrfs").mkdir()
    code = in_own_mount_namespace(f"""
import subprocess
subprocess.run(["mount", "-o", "loop", {str(image)!r}, {str(scratch / 'btrfs')!r}], check=True)
ready(); hold()
""")
    with subject(code) as s:
        assert_agrees(s.pid, "own mount namespace with a btrfs", expect="blocked",
                      codes={"mount.btrfs"}, criu_error="unsupported id")
        dump_fails_with(s.pid, ["--enable-fs", "btrfs"], "unsupported id")


def test_host_btrfs_and_its_subvolume_with_a_child_in_its_own_mount_namespace(scratch: Path):
    # The host's private mounts pass as external with --ext-mount-map auto;
    # without it the subvolume, validated first, has no mount of its own top.
    image = btrfs_image(scratch / "btrfs.img", subvolume="volume")
    (scratch / "top").mkdir()
    (scratch / "volume").mkdir()
    mount("-o", "loop", str(image), str(scratch / "top"))
    mount("-o", "loop,subvol=volume", str(image), str(scratch / "volume"))
    with subject(child_in_own_mount_namespace(True)) as s:
        document = assert_agrees(s.pid, "host btrfs and its subvolume, child in its own mount "
                                 "namespace", expect="needs_options",
                                 codes={"mount.external.auto"}, tree=True,
                                 criu_error="doesn't have a proper root mount")
    external = {r["message"].split(" at ")[1].split(" ")[0] for r in document["reasons"]
                if r["code"] == "mount.external.auto"}
    assert {str(scratch / "top"), str(scratch / "volume")} <= external


def test_shared_host_btrfs_with_a_child_in_its_own_mount_namespace_is_blocked(scratch: Path):
    image = btrfs_image(scratch / "btrfs.img")
    (scratch / "btrfs").mkdir()
    mount("-o", "loop", str(image), str(scratch / "btrfs"))
    mount("--make-shared", str(scratch / "btrfs"))
    with subject(child_in_own_mount_namespace(False)) as s:
        assert_agrees(s.pid, "shared host btrfs, child in its own mount namespace (unchanged "
                      "propagation)", expect="blocked", codes={"mount.btrfs"}, tree=True,
                      criu_error="unsupported id")
        dump_fails_with(s.pid, ["--enable-fs", "btrfs", "--ext-mount-map", "auto"], "unsupported id")
