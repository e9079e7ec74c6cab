"""Task states CRIU refuses that no other agreement test reaches, judged by crwatch and by
the real CRIU:
- an fd table (CLONE_FILES) shared by two processes of the tree neither of which is
  the other's parent (cr-dump.c dump_task_kobj_ids: `Can't make FILES id for %d`);
  shared with the parent it dumps;
- a zombie as the root of the dump: compel cannot seize it (`Unable to interrupt task`,
  a warning, then `Dumping FAILED.`); below the root a zombie dumps (test_agree_task);
- 974 or more supplementary groups, more than the parasite's page holds
  (pie/parasite.c dump_creds: `Too many groups in task %d`);
- a line of /proc/PID/status or smaps of 4096 bytes or more, more than CRIU's
  buffered reader holds (bfd.c breadchr: `The bfd buffer is too small`): a Groups
  line of 818 4-digit gids, the smaps line of a file mapped through a long path,
  an executable run through one. Each next to the largest state that still dumps.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.agreement import assert_agrees
from tests.support.long_paths import DESCEND
from tests.support.subjects import subject

pytestmark = [pytest.mark.criu]

# clone() as fork() (no new stack) with CLONE_FILES: the child shares its parent's fd table.
CLONE_FILES = """
libc = ctypes.CDLL(None, use_errno=True)
CLONE_FILES, SYS_clone = 0x400, 56
def clone_files(then):
    pid = libc.syscall(SYS_clone, CLONE_FILES | signal.SIGCHLD, 0, 0, 0, 0)
    if pid < 0:
        raise OSError(ctypes.get_errno(), "clone")
    if pid == 0:
        then()
        os._exit(0)
    return pid
"""

# Two children share one fd table that their parent then leaves (unshare(CLONE_FILES)).
# The table the children keep still holds the ready pipe: once the parent has left,
# it tells them (pipe `go`) to close it, and hears (pipe `done`, at EOF) that they did.
SIBLINGS_SHARE = CLONE_FILES + """
ready_fd = int(os.environ["SUBJECT_READY_FD"])
go_r, go_w = os.pipe()
done_r, done_w = os.pipe()
def child():
    try:
        os.read(go_r, 1)        # a byte for one child, EOF for the other
    except OSError:
        pass                    # or EBADF: the first one has closed it already
    for fd in (ready_fd, go_r, go_w, done_r, done_w):
        try:
            os.close(fd)
        except OSError:
            pass                # the other child closed it in the table they share
    hold()
kids = [clone_files(child), clone_files(child)]
if libc.unshare(CLONE_FILES) != 0:
    raise OSError(ctypes.get_errno(), "unshare")
os.write(go_w, b"x")
for fd in (go_r, go_w, done_w):
    os.close(fd)
os.read(done_r, 1)              # EOF: the children's table has closed its copies
os.close(done_r)
ready(" ".join(map(str, kids)))
hold()
"""


def test_children_sharing_an_fd_table_their_parent_left_are_blocked():
    with subject(SIBLINGS_SHARE) as s:
        first, second = (int(pid) for pid in s.note.split())
        document = assert_agrees(s.pid, "two children share an fd table their parent left",
                                 expect="blocked", codes={"task.shared_files"}, tree=True,
                                 criu_error=f"Can't make FILES id for {second}")
    reasons = [r for r in document["reasons"] if r["code"] == "task.shared_files"]
    assert [(r["pid"], r["message"]) for r in reasons] == [
        (second, f"pid {second} shares its fd table with pid {first}, which is not its parent "
                 "(CLONE_FILES)")]


def test_a_child_sharing_its_parents_fd_table_is_ok():
    code = CLONE_FILES + """
kid = clone_files(hold)
ready(str(kid))
hold()
"""
    with subject(code) as s:
        document = assert_agrees(s.pid, "a child shares its parent's fd table", expect="ok",
                                 tree=True)
    assert int(s.note) in {p["pid"] for p in document["processes"]}


# ---------------------------------------------------------------- a zombie root

def test_a_zombie_as_the_root_of_the_dump_is_blocked():
    # the child leads its own session, so only its being a zombie is in question
    code = """
kid = os.fork()
if kid == 0:
    os.setsid()
    os._exit(0)
os.waitid(os.P_PID, kid, os.WEXITED | os.WNOWAIT)   # it has exited; it stays unreaped
ready(str(kid)); hold()
"""
    with subject(code) as s:
        zombie = int(s.note)
        document = assert_agrees(zombie, "a zombie as the root of the dump", expect="blocked",
                                 codes={"task.zombie_root"}, tree=True,
                                 criu_error=f"Unable to interrupt task: {zombie}")
    assert "task.zombie" not in {r["code"] for r in document["reasons"]}


# ---------------------------------------------------------------- CRIU's buffers

def groups_code(count: int, first: int) -> str:
    return f"os.setgroups(list(range({first}, {first + count})))\nready(); hold()\n"


def test_974_supplementary_groups_are_blocked():
    with subject(groups_code(974, 0)) as s:
        document = assert_agrees(s.pid, "974 supplementary groups", expect="blocked",
                                 codes={"task.too_many_groups"},
                                 criu_error="Too many groups in task")
    reason = next(r for r in document["reasons"] if r["code"] == "task.too_many_groups")
    assert reason["tid"] == s.pid and "974 supplementary groups" in reason["message"]


def test_973_supplementary_groups_are_ok():
    with subject(groups_code(973, 0)) as s:
        assert_agrees(s.pid, "973 supplementary groups", expect="ok")


def test_a_status_groups_line_over_4095_bytes_is_blocked():
    # 818 gids of 4 digits: "Groups:\t" and 818 times "NNNN " make a 4098-byte line
    with subject(groups_code(818, 1000)) as s:
        assert _status_line(s.pid, "Groups:") >= 4096
        document = assert_agrees(s.pid, "a status Groups line over 4095 bytes", expect="blocked",
                                 codes={"task.proc_line_too_long"},
                                 criu_error="The bfd buffer is too small")
    reason = next(r for r in document["reasons"] if r["code"] == "task.proc_line_too_long")
    assert f"/proc/{s.pid}/status" in reason["message"] and "groups" in reason["remedy"]


def test_a_status_groups_line_of_4093_bytes_is_ok():
    with subject(groups_code(817, 1000)) as s:
        assert _status_line(s.pid, "Groups:") == 4093
        assert_agrees(s.pid, "a status Groups line of 4093 bytes", expect="ok")


def test_a_file_mapped_through_a_path_over_4095_bytes_is_blocked(tmp_path):
    # the fd is closed once mapped: only the smaps line of the mapping is long
    code = DESCEND + f"""
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
descend({str(tmp_path)!r}, 4200, "f")
fd = os.open("f", os.O_CREAT | os.O_RDWR)
os.ftruncate(fd, 4096)
if libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0) in (None, 2**64 - 1):
    raise OSError(ctypes.get_errno(), "mmap")
os.close(fd)
os.chdir("/")
ready(); hold()
"""
    with subject(code) as s:
        document = assert_agrees(s.pid, "a file mapped through a path over 4095 bytes",
                                 expect="blocked", codes={"task.proc_line_too_long"},
                                 criu_error="The bfd buffer is too small")
    reason = next(r for r in document["reasons"] if r["code"] == "task.proc_line_too_long")
    assert f"/proc/{s.pid}/smaps" in reason["message"] and "shorter path" in reason["remedy"]


def test_an_executable_run_through_a_path_over_path_max_is_blocked(tmp_path):
    # the executable is mapped: CRIU reads its smaps line before it saves the exe link
    code = DESCEND + f"""
import shutil
descend({str(tmp_path)!r}, 5000, "sleep")
shutil.copy("/bin/sleep", "sleep")
ready()
os.execv("./sleep", ["sleep", "1000"])
"""
    with subject(code) as s:
        _await_exec(s.pid, "sleep")
        document = assert_agrees(s.pid, "an executable run through a path over PATH_MAX",
                                 expect="blocked",
                                 codes={"task.proc_line_too_long", "file.path.too_long"},
                                 criu_error="The bfd buffer is too small")
    messages = {r["code"]: r["message"] for r in document["reasons"]}
    assert f"/proc/{s.pid}/smaps" in messages["task.proc_line_too_long"]
    assert "its cwd" in messages["file.path.too_long"]   # it runs in the deep directory


def _await_exec(pid: int, name: str) -> None:
    """exec() sends no event the test can wait on: poll until the process has the new name and
    sleeps (the name changes midway through exec, while the new program is still mapped in)."""
    deadline = time.monotonic() + 30
    while not (Path(f"/proc/{pid}/comm").read_text().strip() == name
               and Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "S"):
        assert time.monotonic() < deadline, f"pid {pid} never ran {name}"
        time.sleep(0.005)


def _status_line(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return len(next(line for line in status if line.startswith(key)).rstrip("\n"))
