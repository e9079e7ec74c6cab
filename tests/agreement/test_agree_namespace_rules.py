"""Namespace states no other agreement test reaches, judged by crwatch and the real CRIU:
a tree in its own user namespace with a namespace that user namespace does not own
(CRIU's namespaces.c, check_user_ns / "doesn't belong to the target user namespace")."""
from __future__ import annotations

import pytest

from tests.support.agreement import assert_agrees
from tests.support.namespaces import CLONE, UNSHARE
from tests.support.subjects import subject

pytestmark = [pytest.mark.criu]

MAP_ALL = "0 0 4294967295"


@pytest.mark.parametrize("kind", ["uts", "ipc"])
def test_namespace_made_before_the_user_namespace_is_foreign_to_it(kind: str):
    # unshared first, the namespace is owned by the host's user namespace
    code = UNSHARE + f"""
unshare({CLONE[kind]})
unshare({CLONE['user']})
ready(); hold()"""
    with subject(code) as s:
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{s.pid}/{name}", "w") as id_map:
                id_map.write(MAP_ALL)
        assert_agrees(s.pid, f"root in its own user namespace, its {kind} namespace made "
                      "before it", expect="blocked", codes={"namespace.user_foreign"},
                      criu_error="doesn't belong to the target user namespace")


def test_namespace_made_with_the_user_namespace_is_its_own():
    code = UNSHARE + f"""
unshare({CLONE['user'] | CLONE['uts']})
ready(); hold()"""
    with subject(code) as s:
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{s.pid}/{name}", "w") as id_map:
                id_map.write(MAP_ALL)
        assert_agrees(s.pid, "root in its own user namespace and a uts namespace made with it",
                      expect="ok", codes={"namespace.own"})
