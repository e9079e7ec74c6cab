"""The wire decoder and the reader's accounting, on synthetic records (no BPF)."""
from __future__ import annotations

import ctypes
import random
import struct

import pytest

from probes.events import Event, Kind, Special
from probes.reader import Reader
from probes.wire import _HEAD, RECORD_SIZE, DecodeError, Record, decode, struct_format


def record(**fields) -> bytes:
    values = {"kind": Kind.FD_CLOSED, "tgid": 100, "ts_ns": 5_000_000, "tid": 101,
              "comm": b"worker", "fd": 7, "arg": 0, "arg2": 0, "special": 0, "path": b""}
    values.update(fields)
    return bytes(Record(**values))


def test_a_record_decodes_into_its_event():
    raw = record(kind=Kind.FD_OPENED, fd=4, special=Special.DEVICE, path=b"/dev/kvm",
                 arg=2**64 - 1, arg2=3)
    assert decode(raw) == Event(Kind.FD_OPENED, 5_000_000, 100, 101, "worker", 4, 2**64 - 1, 3,
                                Special.DEVICE, "/dev/kvm")


def test_every_kernel_kind_decodes():
    for kind in Kind:
        if kind is not Kind.LOST:
            assert decode(record(kind=kind)).kind is kind


def test_negative_fd_and_full_width_fields_survive():
    event = decode(record(fd=-1, tgid=2**32 - 1, ts_ns=2**63))
    assert (event.fd, event.tgid, event.ts_ns) == (-1, 2**32 - 1, 2**63)


def test_text_stops_at_the_first_nul_and_tolerates_bad_utf8():
    comm = b"py\xffthon\0garbage"[:16]
    event = decode(record(kind=Kind.FD_OPENED, comm=comm, path=b"/dev/null\0/dev/zero"))
    assert event.comm == "py\ufffdthon"
    assert event.path == "/dev/null"


def test_the_path_is_read_only_where_the_kernel_fills_it():
    # the kernel side writes path[0] = 0 for other kinds, leaving the rest as it was
    assert decode(record(kind=Kind.FD_CLOSED, path=b"\0stale bytes")).path == ""
    assert decode(record(kind=Kind.FD_CLOSED, path=b"stale")).path == ""


@pytest.mark.parametrize("raw", [b"", b"\x01", record()[:-1], record() + b"\0"],
                         ids=["empty", "one byte", "short", "long"])
def test_records_of_the_wrong_size_are_decode_errors(raw):
    with pytest.raises(DecodeError):
        decode(raw)


@pytest.mark.parametrize("kind", [0, Kind.LOST.value, 21, 2**32 - 1])
def test_unknown_kinds_are_decode_errors(kind):
    # LOST is made by the reader: a kernel record claiming it is garbage
    with pytest.raises(DecodeError):
        decode(record(kind=kind))


def test_unknown_specials_are_decode_errors():
    with pytest.raises(DecodeError):
        decode(record(kind=Kind.FD_OPENED, special=99))


def test_random_bytes_decode_or_fail_cleanly():
    rng = random.Random(3)
    for _ in range(2000):
        raw = bytes(rng.getrandbits(8) for _ in range(RECORD_SIZE))
        if rng.random() < 0.5:  # plausible kinds, so that some decode
            raw = struct.pack("<I", rng.randrange(0, 25)) + raw[4:56] + \
                struct.pack("<I", rng.randrange(0, 9)) + raw[60:]
        try:
            event = decode(raw)
        except DecodeError:
            continue
        assert isinstance(event.kind, Kind) and isinstance(event.special, Special)


def test_the_struct_format_follows_the_ctypes_mirror():
    assert RECORD_SIZE == 192
    assert _HEAD.size == Record.special.offset + ctypes.sizeof(ctypes.c_uint32)
    assert struct_format(Record, ["tgid", "arg"]) == \
        f"<{Record.tgid.offset}xI{Record.arg.offset - Record.tgid.offset - 4}xQ"


class SyntheticProbes:
    """Stands in for the loaded kernel side: each poll hands the reader the next batch."""

    def __init__(self, batches: list[list[bytes]], kernel_lost: list[int]):
        self.batches = batches
        self.kernel_lost = kernel_lost
        self.noted: list[Event] = []
        self.pruned = 0
        self._callback = None

    def open_events(self, callback) -> None:
        self._callback = callback

    def poll(self, timeout_ms: int) -> bool:
        for raw in self.batches.pop(0) if self.batches else []:
            buffer = ctypes.create_string_buffer(raw, len(raw))
            self._callback(0, ctypes.addressof(buffer), len(raw))
        return True

    def lost_in_kernel(self) -> int:
        return self.kernel_lost.pop(0) if len(self.kernel_lost) > 1 else self.kernel_lost[0]

    def note(self, event: Event) -> None:
        self.noted.append(event)

    def prune_exited(self) -> None:
        self.pruned += 1


def test_garbage_is_counted_and_reported_as_lost():
    probes = SyntheticProbes([[record(fd=3), b"junk", record(kind=0), record(fd=4)]], [0])
    reader = Reader(probes, capacity=10)
    reader.poll_once()
    events = [reader.events.get_nowait() for _ in range(reader.events.qsize())]
    assert [event.fd for event in events if event.kind is Kind.FD_CLOSED] == [3, 4]
    assert events[-1].kind is Kind.LOST and events[-1].arg == 2
    assert reader.counters() == {"kernel": 0, "queue_overflow": 0, "decode_errors": 2}
    assert [event.fd for event in probes.noted] == [3, 4]


def test_overflow_and_kernel_loss_fold_into_the_next_lost_event():
    batch = [record(fd=fd) for fd in range(5)]
    probes = SyntheticProbes([batch, [], []], kernel_lost=[7, 7, 7])
    reader = Reader(probes, capacity=3)
    reader.poll_once()
    # full: 3 queued, 2 dropped, and no room for the LOST event yet
    assert reader.events.qsize() == 3 and reader.queue_overflow == 2
    assert probes.pruned == 1
    drained = [reader.events.get_nowait() for _ in range(3)]
    assert all(event.kind is Kind.FD_CLOSED for event in drained)
    reader.poll_once()
    lost = reader.events.get_nowait()
    assert lost.kind is Kind.LOST and lost.arg == 7 + 2
    reader.poll_once()  # nothing new: no second LOST event
    assert reader.events.empty()


def test_a_batch_stops_the_ring_consumer_at_its_limit(monkeypatch):
    monkeypatch.setattr("probes.reader.MAX_BATCH", 2)
    returns = []
    probes = SyntheticProbes([], [0])
    Reader(probes)  # registers its ring-buffer callback with the probes
    for fd in range(3):
        raw = record(fd=fd)
        buffer = ctypes.create_string_buffer(raw, len(raw))
        returns.append(probes._callback(0, ctypes.addressof(buffer), len(raw)))
    assert returns == [0, -1, -1]


def test_a_pending_lost_event_goes_in_before_new_records():
    # a busy host refills a full queue every round: LOST must not starve behind records
    probes = SyntheticProbes([[record(fd=fd) for fd in range(5)],
                              [record(fd=fd) for fd in range(5, 8)]], kernel_lost=[0])
    reader = Reader(probes, capacity=3)
    reader.poll_once()
    reader.events.get_nowait()  # the consumer frees one slot
    reader.poll_once()
    queued = [reader.events.get_nowait() for _ in range(3)]
    assert [event.kind for event in queued] == [Kind.FD_CLOSED, Kind.FD_CLOSED, Kind.LOST]
    assert queued[-1].arg == 2 and reader.queue_overflow == 2 + 3
