"""Subject code that puts a process, or a child of it, in namespaces of its own."""
from __future__ import annotations

import textwrap

CLONE = {"mnt": 0x00020000, "cgroup": 0x02000000, "uts": 0x04000000, "ipc": 0x08000000,
         "user": 0x10000000, "pid": 0x20000000, "net": 0x40000000, "time": 0x00000080}


UNSHARE = """
def unshare(flags):
    if ctypes.CDLL(None, use_errno=True).unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
"""


def child_in_namespace(flags: int, *, child_setup: str = "") -> str:
    """Subject code: a child that unshares `flags`, then holds; the note is its pid."""
    return UNSHARE + f"""
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    unshare({flags})
    {child_setup or "pass"}
    os.write(w, b"x")
    hold()
os.read(r, 1)
ready(str(pid))
hold()
"""


# A root whose child unshares its pid namespace; the grandchild is pid 1 of the new one.
NESTED_PID_NS = child_in_namespace(CLONE["pid"], child_setup="""
    inner = os.fork()
    if inner == 0:
        hold()""")


# unshare(1) as a subject does it to itself: a new mount namespace, the
# propagation given, stdio opened again inside, then exec of the same code, so
# that nothing but what the code opens afterwards comes from the old namespace.
IN_OWN_MOUNT_NAMESPACE = """
libc = ctypes.CDLL(None, use_errno=True)
if os.environ.get("CRWATCH_STAGE") != "unshared":
BEFORE
    assert libc.unshare(0x00020000) == 0, os.strerror(ctypes.get_errno())   # CLONE_NEWNS
    if PROPAGATION:   # 0: left as the old namespace had it
        assert libc.mount(b"none", b"/", None, PROPAGATION, None) == 0, os.strerror(ctypes.get_errno())
    null = os.open("/dev/null", os.O_RDWR)
    for number in (0, 1, 2):
        os.dup2(null, number)
    os.close(null)
    os.environ["CRWATCH_STAGE"] = "unshared"
    os.execv(sys.executable, [sys.executable, "-c", open("/proc/self/cmdline", "rb").read().split(b"\\0")[2]])
"""


MS_REC, MS_PRIVATE, MS_SLAVE, MS_SHARED = 0x4000, 0x40000, 0x80000, 0x100000


def in_own_mount_namespace(code: str, propagation: int = MS_REC | MS_PRIVATE,
                           before: str = "pass") -> str:
    """`before` runs in the old namespace, once: what it leaves inheritable crosses over."""
    indented = textwrap.indent(textwrap.dedent(before).strip(), "    ")
    return (IN_OWN_MOUNT_NAMESPACE.replace("PROPAGATION", str(propagation))
            .replace("BEFORE", indented) + code)
