"""The reader thread: ring buffer -> decoded Events -> a bounded queue.

Each record is copied out of the ring-buffer callback (its memory is valid
only during the call); after each poll the batch is decoded, shown to the
loader (which keeps the in-kernel maps right), and put in the queue without
blocking, under one lock acquisition per batch. Three losses
are counted apart: records the kernel could not send, records dropped
because the queue was full, and records that did not decode. Whenever their
sum grows, a LOST event (arg = how many since the last one) goes into the
queue, ahead of the next records; when the queue is full it is folded into
the next one.

The reader owns no thread: whoever runs it calls poll_once() in a loop
(the tracker, as a supervised worker that counts a failed poll and tries it again
after a backoff), so probes/ stands on its own.

A caller can ask whether the records the kernel had written at some moment about
some processes are applied: position() is the ring's producer position (its own
page of the ring, mapped read-only), queued_through(position) how many events the
queue had taken once the reader's consumer passed it, with every loss among them
reported, and pending(pids) whether an event about one of them (or a loss) is
queued that the queue's consumer has not said it applied (note_applied).
"""
from __future__ import annotations

import ctypes
import mmap
import queue
import struct
import time
from collections import deque
from typing import Iterable

from probes.events import Event, Kind
from probes.loader import Probes
from probes.wire import DecodeError, decode

DEFAULT_CAPACITY = 65536
DEFAULT_POLL_MS = 50
# Records taken per poll: the callback stops the ring's consumer there, which
# bounds the batch's memory and the delay before its first event is queued.
MAX_BATCH = 4096
STOP_CONSUMING = -1
# Polls remembered with where the consumer stood and how many events were queued.
DRAINED_MARKS = 64
# Processes whose last queued event is remembered; past this many, those with nothing
# pending are forgotten.
PENDING_PIDS = 65536
_POSITION = struct.Struct("=Q")


class RingPositions:
    """A BPF ring buffer's consumer and producer positions, read from its first two
    pages (each holds one position), mapped read-only from the map's fd."""

    def __init__(self, map_fd: int):
        self._page = mmap.PAGESIZE
        self._pages = mmap.mmap(map_fd, 2 * self._page, mmap.MAP_SHARED, mmap.PROT_READ)

    def consumer(self) -> int:
        return _POSITION.unpack_from(self._pages, 0)[0]

    def producer(self) -> int:
        """Past every record reserved so far, committed or not."""
        return _POSITION.unpack_from(self._pages, self._page)[0]


class EventQueue(queue.Queue):
    """A bounded queue.Queue that also takes a batch at once, as much of it as fits."""

    def put_batch(self, items: list[Event]) -> int:
        """Append what fits without blocking; returns how many were taken."""
        with self.not_full:
            room = self.maxsize - self._qsize() if self.maxsize > 0 else len(items)
            taken = items[:max(room, 0)]
            for item in taken:
                self._put(item)
            self.unfinished_tasks += len(taken)
            if taken:
                self.not_empty.notify(len(taken))
        return len(taken)

    def get_batch(self, most: int, timeout: float) -> list[Event]:
        """Up to `most` items: waits up to `timeout` for the first, takes the rest as queued."""
        with self.not_empty:
            if not self._qsize() and not self.not_empty.wait_for(self._qsize, timeout):
                return []
            items = [self._get() for _ in range(min(most, self._qsize()))]
            self.not_full.notify(len(items))
        return items


class Reader:
    """`positions`: the ring's, for callers that ask whether the reader is caught up
    with a moment (without them, it never says so)."""

    def __init__(self, probes: Probes, *, capacity: int = DEFAULT_CAPACITY,
                 poll_ms: int = DEFAULT_POLL_MS, positions: RingPositions | None = None):
        self.events: EventQueue = EventQueue(maxsize=capacity)
        self.queue_overflow = 0
        self.decode_errors = 0
        self._probes = probes
        self._poll_ms = poll_ms
        self._kernel_lost = 0
        self._reported = 0
        self._batch: list[bytes] = []
        self.queued = 0           # events put in the queue so far, LOST ones included
        self._applied = 0         # of them, those the consumer said it applied
        self._last_about: dict[int, int] = {}   # pid: number of the last event about it
        self._last_lost = 0                     # number of the last LOST event
        self._ring = positions
        self._drained: deque[tuple[int, int]] = deque(maxlen=DRAINED_MARKS)
        probes.open_events(self._on_record)

    def counters(self) -> dict[str, int]:
        return {"kernel": self._kernel_lost, "queue_overflow": self.queue_overflow,
                "decode_errors": self.decode_errors}

    def poll_once(self) -> bool:
        """One round of the reading loop: wait for records, queue them, account for losses.
        False once the probes are closed."""
        if not self._probes.poll(self._poll_ms):
            return False
        self._report_losses()  # first: a pending LOST event takes the first free slot
        if self._batch:
            batch, self._batch = self._batch, []
            self._deliver(batch)
        self._count_kernel_losses()
        self._report_losses()
        self._note_drained()
        return True

    def position(self) -> int | None:
        """Where the kernel writes its next record: a point to ask queued_through about."""
        return self._ring.producer() if self._ring is not None else None

    def queued_through(self, position: int) -> int | None:
        """How many events had been queued once every record before `position` was
        consumed and every loss among them reported; None: not yet (or too long ago to
        be remembered, which a caller treats alike)."""
        for consumed, queued in tuple(self._drained):
            if consumed >= position:
                return queued
        return None

    def note_applied(self, count: int) -> None:
        """The queue's consumer applied `count` more of the events it took, in order."""
        self._applied += count

    def pending(self, pids: Iterable[int]) -> bool:
        """Is an event about one of `pids` (a fork: about its parent and child), or a
        LOST event, queued and not yet applied?"""
        applied, last_about = self._applied, self._last_about
        return self._last_lost > applied or any(last_about.get(pid, 0) > applied
                                                for pid in pids)

    def _note_drained(self) -> None:
        """Where this poll left the consumer, unless a loss is still to be reported (its
        LOST event is not queued yet)."""
        if (self._ring is None
                or self._reported != self._kernel_lost + self.queue_overflow + self.decode_errors):
            return
        mark = (self._ring.consumer(), self.queued)
        if not self._drained or self._drained[-1] != mark:
            self._drained.append(mark)

    def _on_record(self, _ctx: int, data: int, size: int) -> int:
        self._batch.append(ctypes.string_at(data, size))
        return STOP_CONSUMING if len(self._batch) >= MAX_BATCH else 0

    def _deliver(self, batch: list[bytes]) -> None:
        events = []
        for raw in batch:
            try:
                event = decode(raw)
            except DecodeError:
                self.decode_errors += 1
                continue
            self._probes.note(event)
            events.append(event)
        taken = self.events.put_batch(events)
        self._note_queued(events[:taken])
        self.queue_overflow += len(events) - taken

    def _note_queued(self, events: list[Event]) -> None:
        last_about = self._last_about
        if len(last_about) > PENDING_PIDS:
            applied = self._applied
            last_about = self._last_about = {pid: number for pid, number in last_about.items()
                                             if number > applied}
        number = self.queued
        for event in events:
            number += 1
            last_about[event.tgid] = number
            if event.kind is Kind.FORKED:
                last_about[event.arg] = number
        self.queued = number

    def _count_kernel_losses(self) -> None:
        kernel_lost = self._probes.lost_in_kernel()
        if kernel_lost > self._kernel_lost:
            self._kernel_lost = kernel_lost
            self._probes.prune_exited()  # their exits may be among the lost records

    def _report_losses(self) -> None:
        total = self._kernel_lost + self.queue_overflow + self.decode_errors
        if total == self._reported:
            return
        lost = Event(Kind.LOST, time.monotonic_ns(), 0, 0, arg=total - self._reported)
        try:
            self.events.put_nowait(lost)
        except queue.Full:
            return  # folded into the next LOST event
        self.queued += 1
        self._last_lost = self.queued
        self._reported = total
