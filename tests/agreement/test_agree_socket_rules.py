"""Socket states no other agreement test reaches, judged by crwatch and by the real CRIU:
unix sockets whose peer CRIU cannot find or reach (sk-unix.c dump_one_unix_fd), and a
packet socket membership of a type CRIU does not know (sk-packet.c dump_mreqs).

A peer in another network namespace is in no sock_diag table of the dumped one: the
subject creates it with `in_new_netns` and hands it to a process outside the tree.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.agreement import assert_agrees
from tests.support.sockets import HELPERS
from tests.support.subjects import subject

pytestmark = [pytest.mark.criu]

# A unix socket bound to `path` in a new network namespace (a path, unlike an abstract
# name, is reachable from every namespace), held by a process outside the tree.
FAR_SOCKET = HELPERS + """
def far_socket(kind, path, listen=False):
    def create():
        far = socket.socket(socket.AF_UNIX, kind)
        far.bind(path)
        if listen:
            far.listen()
        return far
    far = in_new_netns(create)
    keep_outside_tree(far.fileno())
    far.close()
"""


def test_unix_dgram_socket_whose_peer_is_in_another_network_namespace(tmp_path: Path):
    code = FAR_SOCKET + f"""
far_socket(socket.SOCK_DGRAM, {str(tmp_path / 'far')!r})
near = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); near.connect({str(tmp_path / 'far')!r})
ready(); hold()"""
    with subject(code) as s:
        assert_agrees(s.pid, "unix dgram socket connected to a socket of another network namespace",
                      expect="blocked", codes={"socket.unix.no_peer"}, criu_error="without peer")


def test_unix_connection_pending_on_a_listener_of_another_network_namespace(tmp_path: Path):
    code = FAR_SOCKET + f"""
far_socket(socket.SOCK_STREAM, {str(tmp_path / 'far')!r}, listen=True)
near = socket.socket(socket.AF_UNIX); near.connect({str(tmp_path / 'far')!r})
ready(); hold()"""
    with subject(code) as s:
        assert_agrees(s.pid, "unix connection not accepted by a listener of another network "
                      "namespace", expect="blocked", codes={"socket.unix.dangling"},
                      criu_error="Dangling connection")


def test_unix_dgram_socket_whose_unnamed_peer_connected_elsewhere(tmp_path: Path):
    code = f"""
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
named = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); named.bind({str(tmp_path / 'named')!r})
b.connect({str(tmp_path / 'named')!r})   # a still sends to b; b now sends to named
ready(); hold()"""
    with subject(code) as s:
        assert_agrees(s.pid, "unix dgram socket whose unnamed peer is connected elsewhere",
                      expect="blocked", codes={"socket.unix.unreachable_peer"},
                      criu_error="with unreachable peer")


@pytest.mark.parametrize("membership_type", [4, 255])
def test_packet_socket_membership_of_an_unknown_type(membership_type: int):
    # The kernel keeps any mr_type (packet_dev_mc ignores the ones it does not know).
    code = HELPERS + f"""
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(263, 1, struct.pack("iHH8s", socket.if_nametoindex("lo"), {membership_type}, 0, b""))
ready(); hold()"""
    with subject(code) as s:
        assert_agrees(s.pid, f"packet socket with a membership of type {membership_type}",
                      expect="blocked", codes={"socket.packet.unknown_membership"},
                      criu_error=f"Unknown mc membership type {membership_type}")
