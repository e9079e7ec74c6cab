"""Subject code and waits for task states: ptrace, threads, scheduler states."""
from __future__ import annotations

import time

# A subject that seizes `pid` with ptrace and keeps it traced while it lives.
SEIZE = """
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
def seize(pid):
    if libc.ptrace(0x4206, pid, None, None) != 0:  # PTRACE_SEIZE
        raise OSError(ctypes.get_errno(), "PTRACE_SEIZE")
"""


def state_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as file:
        return file.read().rpartition(")")[2].split()[0]


def wait_for_state(pid: int, state: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while state_of(pid) != state:
        assert time.monotonic() < deadline, f"pid {pid} never reached state {state}"
        time.sleep(0.01)


THREADED = ("import threading\n"
            "threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
            "ready(); hold()")


# A child that asked to be traced (PTRACE_TRACEME) by the subject, which then waits.
TRACED_CHILD = """
libc = ctypes.CDLL(None, use_errno=True)
child = os.fork()
if child == 0:
    libc.ptrace(0, 0, None, None)
    while True:
        time.sleep(60)
while open(f"/proc/{child}/status").read().find("TracerPid:\\t0\\n") >= 0:
    time.sleep(0.001)
ready(str(child))
hold()
"""
