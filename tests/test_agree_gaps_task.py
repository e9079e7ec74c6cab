"""Task states CRIU refuses that no other agreement test reaches, judged by crwatch and by
the real CRIU:
- an fd table (CLONE_FILES) shared by two processes of the tree neither of which is
  the other's parent (cr-dump.c dump_task_kobj_ids: `Can't make FILES id for %d`);
  shared with the parent it dumps.
"""
from __future__ import annotations

from tests.agreement import assert_agrees
from tests.subjects import subject

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
