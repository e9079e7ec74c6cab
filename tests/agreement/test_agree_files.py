"""Files, directories, pipes, FIFOs, cwd: every state judged by crwatch and dumped by the real CRIU."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.agreement import assert_agrees, namespace_lock_codes
from tests.support.subjects import subject

pytestmark = [pytest.mark.criu]


@pytest.fixture
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="crwatch-files-") as directory:
        yield Path(directory)


@pytest.fixture
def tmpfs(scratch: Path) -> Iterator[Path]:
    """A fresh tmpfs mounted on a scratch directory; whatever the test stacks on it is unmounted too."""
    subprocess.run(["mount", "-t", "tmpfs", "crwatch-test", str(scratch)], check=True)
    try:
        yield scratch
    finally:
        while _mounted(scratch):
            subprocess.run(["umount", "-l", str(scratch)], check=True)


def files_reasons(document: dict) -> list[dict]:
    return [r for r in document["reasons"] if r["code"].startswith("file.")]


def _mounted(path: Path) -> bool:
    return any(line.split()[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_plain_process_is_ok():
    with subject("ready(); hold()") as s:
        assert_agrees(s.pid, "plain process", expect="ok")


def test_open_files_directories_and_o_path_fds_are_ok(scratch: Path):
    code = f"""
    os.symlink("/etc/hostname", {str(scratch / "link")!r})
    kept = [open("/etc/passwd"), open({str(scratch / "new")!r}, "w"),
            os.open("/etc", os.O_RDONLY | os.O_DIRECTORY),
            os.open("/etc/passwd", os.O_PATH), os.open("/tmp", os.O_PATH),
            os.open({str(scratch / "link")!r}, os.O_PATH | os.O_NOFOLLOW)]
    ready(); hold()
    """
    with subject(code) as s:
        document = assert_agrees(s.pid, "regular file, directory and O_PATH fds", expect="ok")
    assert files_reasons(document) == []


def test_small_deleted_file_travels_as_a_ghost(scratch: Path):
    code = f"""
    f = open({str(scratch / "small")!r}, "wb+"); f.write(b"x" * 4096); f.flush()
    os.unlink({str(scratch / "small")!r})
    ready(); hold()
    """
    with subject(code) as s:
        document = assert_agrees(s.pid, "deleted file of 4 KiB", expect="ok",
                                 codes={"file.deleted.ghost"})
    assert "small" in files_reasons(document)[0]["message"]


def test_deleted_file_over_the_ghost_limit_needs_ghost_limit(scratch: Path):
    code = f"""
    f = open({str(scratch / "big")!r}, "wb+"); f.write(b"x" * (5 << 20)); f.flush(); os.fsync(f.fileno())
    os.unlink({str(scratch / "big")!r})
    ready(); hold()
    """
    with subject(code) as s:
        document = assert_agrees(s.pid, "deleted file of 5 MiB", expect="needs_options",
                                 codes={"file.deleted.over_ghost_limit"},
                                 criu_error="Can't dump ghost file")
    assert document["required_options"] == ["--ghost-limit"]
    assert "--ghost-limit 5M" in files_reasons(document)[0]["remedy"]


def test_unlinked_file_with_another_hard_link_needs_link_remap(scratch: Path):
    first, second = scratch / "first", scratch / "second"
    code = f"""
    open({str(first)!r}, "w").write("hello"); os.link({str(first)!r}, {str(second)!r})
    f = open({str(first)!r}); os.unlink({str(first)!r})
    ready(); hold()
    """
    with subject(code) as s:
        assert_agrees(s.pid, "unlinked file with another hard link", expect="needs_options",
                      codes={"file.deleted.link_remap"}, criu_error="Use link-remap option")
    assert sorted(os.listdir(scratch)) == ["second"]  # CRIU cleaned its temporary link up


def test_deleted_cwd_and_deleted_directory_fd_are_ok(scratch: Path):
    code = f"""
    os.mkdir({str(scratch / "cwd")!r}); os.chdir({str(scratch / "cwd")!r})
    os.mkdir({str(scratch / "dir")!r}); fd = os.open({str(scratch / "dir")!r}, os.O_RDONLY)
    os.rmdir({str(scratch / "cwd")!r}); os.rmdir({str(scratch / "dir")!r})
    ready(); hold()
    """
    with subject(code) as s:
        document = assert_agrees(s.pid, "deleted cwd and deleted directory fd", expect="ok",
                                 codes={"file.deleted.ghost"})
    assert {r["message"].split(":")[0] for r in files_reasons(document)} >= {"cwd"}


def test_pipe_inside_the_process_with_data_is_ok():
    with subject("r, w = os.pipe(); os.write(w, b'queued'); ready(); hold()") as s:
        document = assert_agrees(s.pid, "pipe with both ends inside, data queued", expect="ok")
    assert files_reasons(document) == []


def test_pipe_shared_with_a_process_outside_is_dumped_and_noted():
    read_end, write_end = os.pipe()
    try:
        with subject(f"os.write({write_end}, b'x'); ready(); hold()", pass_fds=(write_end,)) as s:
            document = assert_agrees(s.pid, "pipe whose other end the test holds", expect="ok",
                                     codes={"file.pipe.external"})
    finally:
        os.close(read_end)
        os.close(write_end)
    reason = files_reasons(document)[0]
    assert str(os.getpid()) in reason["message"] and "--inherit-fd" in reason["remedy"]


def test_packet_mode_pipe_is_blocked():
    with subject("r, w = os.pipe2(os.O_DIRECT); ready(); hold()") as s:
        assert_agrees(s.pid, "pipe in packet mode (O_DIRECT)", expect="blocked",
                      codes={"file.pipe.packetized"}, criu_error="packetized mode for pipes")


def test_fifo_is_ok(scratch: Path):
    fifo = scratch / "fifo"
    code = f"os.mkfifo({str(fifo)!r}); fd = os.open({str(fifo)!r}, os.O_RDWR); ready(); hold()"
    with subject(code) as s:
        assert_agrees(s.pid, "FIFO (named pipe)", expect="ok")


def test_proc_and_sys_files_are_ok():
    code = """
    kept = [open("/proc/self/status"), open("/proc/1/status"), open("/proc/meminfo"),
            open("/sys/kernel/uevent_seqnum")]
    ready(); hold()
    """
    with subject(code) as s:
        assert_agrees(s.pid, "/proc/self, /proc/1, /proc and /sys files", expect="ok")


def test_memfd_is_ok():
    with subject("fd = os.memfd_create('crwatch'); os.write(fd, b'x' * 100); ready(); hold()") as s:
        assert_agrees(s.pid, "memfd", expect="ok")


def test_namespace_file_of_the_process_itself_is_ok():
    code = "kept = [os.open(f'/proc/self/ns/{n}', os.O_RDONLY) for n in ('net', 'mnt')]; ready(); hold()"
    with subject(code) as s:
        assert_agrees(s.pid, "namespace files of its own namespaces", expect="ok")


def test_namespace_file_of_a_namespace_outside_the_tree_is_blocked():
    # A helper child moves into a new network namespace; the subject keeps
    # that namespace open and lets the child go, so no tree task lives in it.
    code = """
    libc = ctypes.CDLL(None, use_errno=True)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(w, b"1" if libc.unshare(0x40000000) == 0 else b"0")
        signal.pause()
    assert os.read(r, 1) == b"1"
    fd = os.open(f"/proc/{child}/ns/net", os.O_RDONLY)
    os.kill(child, signal.SIGKILL); os.waitpid(child, 0); os.close(r); os.close(w)
    ready(); hold()
    """
    with subject(code) as s:
        assert_agrees(s.pid, "namespace file of a foreign network namespace", expect="blocked",
                      codes={"file.nsfs.foreign"}, criu_error="No NS ID with kid")


def test_namespace_file_of_the_dumpers_own_network_namespace_is_ok():
    # The root moves into a network namespace of its own and keeps the host's open: CRIU
    # knows its own namespaces too.
    code = """
    host = os.open("/proc/self/ns/net", os.O_RDONLY)
    assert ctypes.CDLL(None, use_errno=True).unshare(0x40000000) == 0
    ready(); hold()
    """
    with subject(code) as s:
        assert_agrees(s.pid, "namespace file of the dumper's network namespace, root in its own",
                      expect="needs_options" if namespace_lock_codes() else "ok",
                      codes=namespace_lock_codes())


def test_posix_message_queue_is_blocked():
    code = """
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    rt.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    name = f"/crwatch-{os.getpid()}".encode()
    fd = rt.mq_open(name, os.O_RDWR | os.O_CREAT, 0o600, None)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    rt.mq_unlink(name)
    ready(); hold()
    """
    with subject(code) as s:
        assert_agrees(s.pid, "POSIX message queue fd", expect="blocked", codes={"file.mqueue"},
                      criu_error="Can't lookup mount")


def test_file_on_a_lazily_unmounted_tmpfs_is_blocked(tmpfs: Path):
    with subject(f"f = open({str(tmpfs / 'file')!r}, 'w'); ready(); hold()") as s:
        subprocess.run(["umount", "-l", str(tmpfs)], check=True)
        assert_agrees(s.pid, "file on a lazily unmounted tmpfs", expect="blocked",
                      codes={"file.mount.invisible"}, criu_error="Can't lookup mount")


def test_file_on_an_overmounted_tmpfs_is_blocked(tmpfs: Path):
    with subject(f"f = open({str(tmpfs / 'file')!r}, 'w'); ready(); hold()") as s:
        subprocess.run(["mount", "-t", "tmpfs", "crwatch-over", str(tmpfs)], check=True)
        assert_agrees(s.pid, "file on an overmounted tmpfs", expect="blocked",
                      codes={"file.mount.overmounted"},
                      criu_error="Open files on overmounted mounts are not supported")
