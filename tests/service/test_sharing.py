"""Sharing without a cost per peer: 2,000 real children of one parent share a pipe and a
unix socket pair. Messages name a few holders and count the rest; a pass of audits
shares one index of holders, walked again only when it is older than an fd it meets.
"""
from __future__ import annotations

import os

import pytest

from bench.sharing_bench import SHARING_CHILDREN
from tests.support.subjects import subject
from tracker.audit import audit
from tracker.holders import HostHolders
from tracker.rules import id_list, pid_list

CHILDREN = 2_000


def test_id_lists_name_a_few_and_count_the_rest():
    assert pid_list([7]) == "pid 7"
    assert pid_list([15, 12, 14, 12]) == "pids 12, 14, 15"
    assert id_list(range(1, 6)) == "1, 2, 3, 4, 5"
    assert id_list(range(1, 7)) == "1, 2, 3 and 3 more"
    assert pid_list(range(10, 2010)) == "pids 10, 11, 12 and 1,997 more"


@pytest.fixture(scope="module")
def sharing():
    """The parent, and its children's pids in order."""
    with subject(SHARING_CHILDREN, env={"CHILDREN": str(CHILDREN)}) as parent:
        yield parent.pid, sorted(int(pid) for pid in parent.note.split())


def test_a_pipe_shared_with_thousands_names_three_and_counts_the_rest(sharing):
    parent, children = sharing
    child = children[0]
    (pipe,) = [f for f in audit(child).findings if f.code == "file.pipe.external"]
    outside = sorted({parent, *children} - {child})
    assert pipe.message.endswith(f"is shared with pids {outside[0]}, {outside[1]}, {outside[2]} "
                                 f"and 1,997 more outside the dumped tree")
    assert len(pipe.message) < 200 and len(pipe.remedy) < 300


def test_a_socket_peer_held_by_thousands_names_three_and_counts_the_rest(sharing):
    parent, children = sharing
    (sock,) = [f for f in audit(parent).findings if f.code == "socket.unix.external_stream"]
    assert sock.message.endswith(f"held by pids {children[0]}, {children[1]}, {children[2]} "
                                 f"and 1,997 more outside the tree")


def test_a_pass_of_audits_walks_proc_once_and_again_for_an_fd_newer_than_its_walk(sharing):
    parent, children = sharing
    holders = HostHolders(max_age=60)
    for child in children[:20]:
        assert [f.message for f in audit(child, holders=holders).findings] == \
            [f.message for f in audit(child).findings]
    assert holders.walks == 1
    # A pipe made after the walk, its other end outside the holder's tree (with this test):
    # the index that does not show the holder's own end is walked again.
    read_end, write_end = os.pipe()
    try:
        with subject("ready(); hold()", pass_fds=(write_end,)) as late:
            found = audit(late.pid, holders=holders).findings
    finally:
        os.close(read_end)
        os.close(write_end)
    assert holders.walks == 2
    assert [f.message.endswith(f"is shared with pid {os.getpid()} outside the dumped tree")
            for f in found if f.code == "file.pipe.external"] == [True]
