"""An fdinfo read in one read() holds the whole file, one longer than a read asks included."""
from __future__ import annotations

import os
import select

from tracker.procfs import RECORD_READ_SIZE, Proc


def test_an_fdinfo_longer_than_one_read_is_read_whole():
    epoll = select.epoll()
    targets = [os.eventfd(0) for _ in range(1_000)]     # one fdinfo line each
    try:
        for target in targets:
            epoll.register(target, select.EPOLLIN)
        proc = Proc(os.getpid())
        text = proc.read_record(f"fdinfo/{epoll.fileno()}")
        assert len(text) > RECORD_READ_SIZE
        assert text == proc.read(f"fdinfo/{epoll.fileno()}")
        assert sum(line.startswith("tfd:") for line in text.splitlines()) == len(targets)
    finally:
        epoll.close()
        for target in targets:
            os.close(target)


def test_a_short_fdinfo_is_the_same_read_either_way():
    read_end, write_end = os.pipe()
    try:
        proc = Proc(os.getpid())
        assert proc.read_record(f"fdinfo/{read_end}") == proc.read(f"fdinfo/{read_end}")
        assert "flags:" in proc.read_record(f"fdinfo/{read_end}")
    finally:
        os.close(read_end)
        os.close(write_end)
