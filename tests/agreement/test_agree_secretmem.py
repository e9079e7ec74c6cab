"""Secret memory (memfd_secret) judged by crwatch and by the real CRIU.

Its pages are unmapped from the kernel's direct map and from every process but the owner, so
CRIU cannot read them: a mapping fails its map_files open with ENXIO (proc_parse.c
vma_get_mapfile: "Unknown shit"), and an fd names a file on the kernel's internal secretmem
mount, which no mount namespace shows (files-reg.c: "Can't lookup mount").
"""
from __future__ import annotations

import pytest

from tests.support.agreement import assert_agrees
from tests.support.subjects import skip_if_refused, subject

pytestmark = [pytest.mark.criu]

SECRET = """
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def secret():
    fd = libc.syscall(447, 0)                                   # memfd_secret
    if fd < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return fd
fd = make(secret)
"""
MAPPED = """
os.ftruncate(fd, 4096)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long)
assert libc.mmap(None, 4096, 3, 1, fd, 0) not in (None, ctypes.c_void_p(-1).value)   # MAP_SHARED
"""


@pytest.mark.parametrize("state, code, criu_error", [
    ("memfd_secret fd", SECRET, "Can't lookup mount"),
    ("memfd_secret fd, mapped", SECRET + MAPPED, "Unknown shit"),
    ("memfd_secret mapping, fd closed", SECRET + MAPPED + "os.close(fd)\n", "Unknown shit"),
])
def test_secret_memory_is_blocked(state: str, code: str, criu_error: str):
    with subject(code + "ready(); hold()\n") as s:
        skip_if_refused(s, state)
        document = assert_agrees(s.pid, state, expect="blocked", codes={"file.secretmem"},
                                 criu_error=criu_error)
    assert all("memfd_secret" in r["message"] for r in document["reasons"]
               if r["code"] == "file.secretmem")
