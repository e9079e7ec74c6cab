"""A fanotify mount mark on a mount the dump does not take, judged by crwatch and the real CRIU.

CRIU saves a mount mark by the mount's id and looks it up among the mounts of the namespaces it
dumps (fsnotify.c check_one_mark: "Can't find mnt_id 0x%x"). A mark made before the process
moved to a mount namespace of its own names a mount of the old namespace.
"""
from __future__ import annotations

import pytest

from tests.support.agreement import assert_agrees
from tests.support.namespaces import in_own_mount_namespace
from tests.support.subjects import subject

pytestmark = [pytest.mark.criu]

# The mark is made in the host's namespace; then the process unshares its mount namespace and
# runs itself again with nothing of the old namespace but the fanotify fd.
MARK = """
libc = ctypes.CDLL(None, use_errno=True)
FAN_MARK_ADD, FAN_MARK_MOUNT, FAN_OPEN, AT_FDCWD = 0x1, 0x10, 0x20, -100
fan = libc.fanotify_init(0, os.O_RDONLY)
assert fan >= 0, os.strerror(ctypes.get_errno())
assert libc.fanotify_mark(fan, FAN_MARK_ADD | MARK_KIND, ctypes.c_uint64(FAN_OPEN), AT_FDCWD,
                          b"/tmp") == 0, os.strerror(ctypes.get_errno())
os.set_inheritable(fan, True)
"""


def test_fanotify_mount_mark_of_another_mount_namespace_is_blocked():
    for flags, expect, codes in (("0", "ok", set()),
                                 ("FAN_MARK_MOUNT", "blocked",
                                  {"anon.fanotify.mount_unreachable"})):
        # without FAN_MARK_MOUNT the mark is an inode's, saved by its file handle
        code = in_own_mount_namespace("ready(); hold()",
                                      before=MARK.replace("MARK_KIND", flags))
        with subject(code) as s:
            assert_agrees(s.pid, f"fanotify {'mount' if codes else 'inode'} mark made before "
                          "unsharing the mount namespace", expect=expect, codes=codes,
                          criu_error="Can't find mnt_id" if codes else None)
