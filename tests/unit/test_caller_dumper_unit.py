"""Whose dumper judges a check the service answers: this test process plays the caller
on the socket (its credentials and namespaces are read from /proc, as a caller's are)."""
from __future__ import annotations

import os

import pytest

from api.service.caller_dumper import OtherDumper, judged_for
from api.service.peer import UnixPeer
from tracker import environment
from tracker.criu.runner import first_choice

PATH = os.environ.get("PATH", environment.DEFAULT_EXEC_PATH)
ME_AS_ROOT = UnixPeer(os.getpid(), 0, 0)


def served() -> environment.Environment:
    """The service's environment, were it this process with the CRIU it would choose."""
    found = environment.detect(None, path=PATH)
    return found._replace(criu_path=first_choice(os.environ.get("CRWATCH_CRIU"), PATH))


def test_a_caller_off_the_unix_socket_is_not_known_by_its_credentials():
    with pytest.raises(OtherDumper, match="unix socket"):
        judged_for(None, PATH, None, served())


def test_another_user_is_judged_for_the_service_s_dumper_whatever_its_path(tmp_path):
    service = served()
    other = UnixPeer(os.getpid(), 65534, 65534)
    assert judged_for(other, str(tmp_path), "/elsewhere/criu", service) is service


@pytest.mark.root
@pytest.mark.criu
def test_root_with_the_service_s_dumper_is_judged_with_its_own_path():
    service = served()
    judged = judged_for(ME_AS_ROOT, f"{PATH}:/nonexistent", os.environ.get("CRWATCH_CRIU"),
                        service)
    assert judged == service._replace(path=f"{PATH}:/nonexistent")


@pytest.mark.root
@pytest.mark.criu
def test_root_finding_other_network_lock_tools_or_another_criu_audits_itself(tmp_path):
    iptables = tmp_path / "iptables"
    iptables.write_text("#!/bin/sh\n")
    iptables.chmod(0o755)
    service = served()
    with pytest.raises(OtherDumper, match="network-lock tools"):
        judged_for(ME_AS_ROOT, f"{tmp_path}:{PATH}", os.environ.get("CRWATCH_CRIU"), service)
    with pytest.raises(OtherDumper, match="another CRIU"):
        judged_for(ME_AS_ROOT, PATH, str(tmp_path / "criu"), service)


@pytest.mark.root
def test_root_with_other_capabilities_audits_itself():
    service = served()
    fewer = service.credentials._replace(effective=environment.Capabilities(0))
    with pytest.raises(OtherDumper, match="capabilities"):
        judged_for(ME_AS_ROOT, PATH, os.environ.get("CRWATCH_CRIU"),
                   service._replace(credentials=fewer))
