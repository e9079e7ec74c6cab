"""The tracker: probes, their reader, the live table, and the thread that applies events.

start() attaches the probes, seeds the table from a /proc audit of every
process, tells subscribers it is ready, then applies events as they come
and hands each notice (ready, transition, lost) to every subscriber, on the
applier thread. caught_up() tells whoever keeps answers whether every event the
kernel emitted before the call has been applied (waiting a little for it);
caught_up_on_loop() tells the same to a coroutine, which awaits the reader's and
the applier's progress without holding a thread.
Probes that cannot load leave the tracker degraded, not dead: the table is
still seeded, and the reason is reported. The applier and the probe reader
are supervised workers (tracker/supervised.py): an error outside one event's
application is counted and the loop goes on after a backoff.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Union

from probes.events import Event, Kind
from probes.loader import ATTACHED, ProbeError, Probes
from probes.reader import DEFAULT_CAPACITY, Reader, RingPositions
from tracker.audit import Audit
from tracker.checks import devices
from tracker.clock import iso_from_wall_ns
from tracker.live import probe_choice
from tracker.live.handlers.fds import dup_close_pairs
from tracker.live.model import SCHEMA, Transition
from tracker.live.startup import PROBES, READY, SEEDING, Startup
from tracker.live.table import LiveTable
from tracker.profiles import Profile
from tracker.rules import Finding
from tracker.supervised import Worker

SWEEP_SECONDS = 1.0
# Events applied together, each pid's holder read once for all (LiveTable.applying):
# small enough that a batch never delays the next read of /proc by much.
APPLY_BATCH = 256
STOP_TIMEOUT = 5.0
# The reader's and the applier's nice value: on a busy host they keep up with a burst of
# events at the expense of other work, as events lost cost more (every process is
# audited again) than the CPU that keeping up takes.
WORKERS_NICE = -5
# An apply that fails for lack of fds lost what its event said: it is counted lost,
# and the table is re-audited once fds can be opened again, tried this often.
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)
FD_RETRY_SECONDS = 1.0

log = logging.getLogger(__name__)


@dataclass
class Ready:
    """The probes are attached (or could not be) and the table is seeded."""

    probes: list[dict]
    degraded: str | None
    device_filter: dict | None = None    # how device opens are filtered in the kernel
    startup: dict[str, float] | None = None  # seconds each phase of the start took
    ts: str = field(default_factory=lambda: iso_from_wall_ns(time.time_ns()))

    def to_json(self) -> dict:
        line = {"schema": SCHEMA, "kind": "ready", "probes": self.probes, "ts": self.ts}
        if self.startup:
            line["startup_seconds"] = self.startup
        if self.device_filter:
            line["device_filter"] = self.device_filter
        if self.degraded:
            line["degraded"] = self.degraded
        return line


@dataclass
class Lost:
    """Records were lost (kernel, queue or decoding): the table was re-audited."""

    count: int
    total: int
    reaudits: int
    ts: str = field(default_factory=lambda: iso_from_wall_ns(time.time_ns()))

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "kind": "lost", "count": self.count, "total": self.total,
                "reaudits": self.reaudits, "ts": self.ts}


Notice = Union[Ready, Transition, Lost]


class Tracker:
    def __init__(self, profile: Profile, *, queue_capacity: int = DEFAULT_CAPACITY,
                 served: Iterable[Profile] = (), progress: Callable[[str], None] | None = None):
        """`served`: the profiles verdicts will be asked under besides `profile`; the
        optional probes attached are those one of them needs (probe_choice). `progress`
        is told a line at each step of start() (tracker.live.startup)."""
        self.profile = profile
        self.startup = Startup(progress)
        self.served = [profile, *served]
        self.queue_capacity = queue_capacity
        self.probes: Probes | None = None
        self.reader: Reader | None = None
        self.reading: Worker | None = None     # the supervised thread that runs the reader
        self.table: LiveTable | None = None
        self.degraded: str | None = None
        self.ready_at: str | None = None     # when the ready notice went out (ISO 8601)
        self.apply_errors = 0
        self.fd_losses = 0               # applies failed for lack of fds (counted lost)
        self._fd_losses_pending = 0      # ... not yet followed by a re-audit
        self._fd_lost_ns = 0             # when the last of them failed
        self._fd_retry_at = 0.0
        self._subscribers: list[Callable[[Notice], None]] = []
        self._progress = threading.Condition()  # notified after each poll and each batch
        # coroutines awaiting the reader's progress past a ring position: their event
        # loops, futures and positions
        self._progress_futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future,
                                           int]] = []
        self.applier = Worker("applier", self._step, nice=WORKERS_NICE)
        self._swept = time.monotonic()

    def subscribe(self, callback: Callable[[Notice], None]) -> None:
        """Called on the applier thread for every notice, from the ready notice on."""
        self._subscribers.append(callback)

    def start(self) -> Tracker:
        self.startup.enter(PROBES, "compiling and attaching the probes")
        try:
            self.probes = Probes(disabled=probe_choice.left_out(self.served),
                                 quiet_majors=devices.QUIET_DEVICES.majors,
                                 quiet_devices=devices.QUIET_DEVICES.devices)
            self.reader = Reader(self.probes, capacity=self.queue_capacity,
                                 positions=RingPositions(self.probes.events_fd()))
            self.reading = Worker("probe-reader", self._read, nice=WORKERS_NICE).start()
        except (ProbeError, OSError) as error:  # OSError: e.g. tracefs unreadable without root
            self.degraded = str(error)
            self._close_probes()
        self.startup.enter(SEEDING, self._attached_line())
        self.table = LiveTable(self.profile, self.probes)
        seeded = self.table.seed(self.startup.seeded)
        self.startup.enter(READY, f"ready, {len(self.table)} processes tracked")
        ready = Ready(self.probe_statuses(), self.degraded, self.device_filter(),
                      self.startup.seconds)
        self.ready_at = ready.ts
        self._publish([ready])
        self._publish(seeded)
        if self.reader is not None:
            self.applier.start()
        return self

    def _attached_line(self) -> str:
        if self.probes is None:
            return f"no probes attached ({self.degraded}): seeding from /proc alone"
        states = [status["state"] for status in self.probes.status()["probes"].values()]
        attached = states.count(ATTACHED)
        return (f"attached {attached} probes ({len(states) - attached} left out), compiled "
                f"in {self.probes.load_seconds:.1f} s")

    def stop(self) -> None:
        self.applier.stop(STOP_TIMEOUT)
        self._close_probes()

    def workers(self) -> list[Worker]:
        """The supervised threads running now."""
        return [self.applier] + ([self.reading] if self.reading is not None else [])

    def counters(self) -> dict:
        counts = {"table": self.table.counters.as_dict() if self.table is not None else {},
                  "apply_errors": self.apply_errors}
        if self.reader is not None:
            counts["lost"] = {**self.reader.counters(), "out_of_fds": self.fd_losses}
        return counts

    def caught_up(self, pids: Iterable[int], timeout: float) -> bool:
        """Has every event about `pids` the kernel emitted before this call (and every
        loss) been applied to the table? Waits up to `timeout` for the reader to consume
        the records written before the call; False at once when an event about `pids`
        waits for the applier (it will change them), and without probes."""
        mark = self._mark()
        if mark is None:
            return False
        reader, position = mark
        pids = list(pids)
        deadline = time.monotonic() + timeout
        with self._progress:
            while True:
                applied = _applied_through(reader, position, pids)
                if applied is not None:
                    return applied
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(left)

    async def caught_up_on_loop(self, pids: Iterable[int], timeout: float) -> bool:
        """caught_up() for a coroutine: the same answer, awaited on the running event loop
        (woken by the reader's and the applier's progress) instead of blocking it."""
        mark = self._mark()
        if mark is None:
            return False
        reader, position = mark
        pids = list(pids)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            progressed = loop.create_future()
            with self._progress:  # registered before the check: no progress goes unseen
                self._progress_futures.append((loop, progressed, position))
            applied = _applied_through(reader, position, pids)
            if applied is not None:
                return applied
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(progressed, left)
            except TimeoutError:
                return False

    def _mark(self) -> tuple[Reader, int] | None:
        """The reader and its ring's position now, which a caught-up answer must see
        consumed (None: no probes, nothing is ever caught up)."""
        reader = self.reader
        position = reader.position() if reader is not None else None
        return None if position is None else (reader, position)

    def reconcile(self, result: Audit, started_ns: int,
                  gate_tracer: int | None = None) -> list[dict] | None:
        """The drift between the tracked state and a recheck of a frozen tree, which then
        corrects the table (None: nothing is tracked, the probes are not attached).
        `gate_tracer`: the pid of the gate's ptrace holder, whose tracing is no drift."""
        if self.degraded or self.table is None:
            return None
        drift, transitions = self.table.reconcile(result, started_ns, gate_tracer)
        self._publish(transitions)
        return drift

    def probe_statuses(self) -> list[dict]:
        """Each probe's status, and for those attached by profile, why."""
        if self.probes is None:
            return []
        return [{"name": name, **status, **({"why": probe_choice.why(name, self.served)[1]}
                                            if name in probe_choice.PROBE_RULES else {})}
                for name, status in self.probes.status()["probes"].items()]

    def device_filter(self) -> dict | None:
        """Whether device opens every profile accepts stay in the kernel, and why (None:
        no probes)."""
        return self.probes.device_filter if self.probes is not None else None

    def unseen(self, judged_by: Profile, pid: int) -> list[Finding]:
        """What a verdict under `judged_by` cannot see for want of a probe (none while the
        probes are not attached at all: the tracker is degraded then, and says so)."""
        if self.probes is None:
            return []
        missing = [name for name, status in self.probes.status()["probes"].items()
                   if status["state"] != ATTACHED]
        return probe_choice.unseen(missing, judged_by, pid)

    def _close_probes(self) -> None:
        if self.reading is not None:
            self.reading.stop(STOP_TIMEOUT)
            self.reading = None
        self.reader = None
        if self.probes is not None:
            self.probes.close()
            self.probes = None

    def _read(self) -> bool:
        """One turn of the reader, then a word to those waiting to be caught up."""
        going_on = self.reader.poll_once()
        self._progressed()
        return going_on

    def _progressed(self) -> None:
        with self._progress:
            self._progress.notify_all()
            if not self._progress_futures:
                return
            # woken once the records before their position are consumed (a wake per
            # poll would cost the event loop more than the wait)
            reader, woken, still = self.reader, [], []
            for waiter in self._progress_futures:
                _, progressed, position = waiter
                passed = (progressed.done() or reader is None
                          or reader.queued_through(position) is not None)
                (woken if passed else still).append(waiter)
            self._progress_futures = still
        for loop, progressed, _ in woken:
            try:
                loop.call_soon_threadsafe(_settle, progressed)
            except RuntimeError:  # its loop is closed: nobody awaits it any more
                pass

    def _step(self) -> None:
        """One turn of the applier: a batch of events, then what is due, then a sweep."""
        due_ns = self.table.next_due_ns()
        wait = SWEEP_SECONDS if due_ns is None else \
            max(0.0, min(SWEEP_SECONDS, (due_ns - time.monotonic_ns()) / 1e9))
        batch = self.reader.events.get_batch(APPLY_BATCH, wait)
        if batch:
            self._guarded(self._apply_batch, batch)
            self.reader.note_applied(len(batch))
            self._progressed()
        if due_ns is not None and time.monotonic_ns() >= due_ns:
            self._publish(self._guarded(self.table.run_due))
        if time.monotonic() - self._swept >= SWEEP_SECONDS:
            self._swept = time.monotonic()
            self._publish(self._guarded(self.table.sweep))
        if self._fd_losses_pending and time.monotonic() >= self._fd_retry_at:
            self._reaudit_after_fd_losses()

    def _apply_batch(self, batch: list[Event]) -> None:
        """Events taken from the queue together, under one hold of the table (each pid's
        holder read once for all); subscribers are told once it is let go."""
        pairs = dup_close_pairs(batch)
        skipped: set[int] = set()
        notices: list[Notice] = []
        with self.table.applying() as held:
            for index, event in enumerate(batch):
                if index in skipped:
                    continue
                if index in pairs and held.skip_dup_and_close(event, batch[pairs[index]]):
                    skipped.add(pairs[index])
                    continue
                notices += self._guarded(self._apply, held.apply, event)
        self._publish(notices)

    def _apply(self, apply: Callable[[Event], list[Transition]], event: Event) -> list[Notice]:
        transitions = apply(event)
        if event.kind is not Kind.LOST:
            return transitions
        counters = self.table.counters
        return [Lost(event.arg, counters.lost, counters.reaudits), *transitions]

    def _guarded(self, work: Callable, *args) -> list[Notice]:
        try:
            return work(*args)
        except OSError as error:
            if error.errno not in OUT_OF_FDS:
                return self._failed(work, args)
            self._out_of_fds(error)
            return []
        except Exception:  # a bug must not stop the tracking of everything else
            return self._failed(work, args)

    def _failed(self, work: Callable, args: tuple) -> list[Notice]:
        self.apply_errors += 1
        log.exception("%s%s failed", work.__name__, args)
        return []

    def _out_of_fds(self, error: OSError) -> None:
        """An apply (or a sweep) failed for lack of fds: counted lost, said once per spell."""
        if not self._fd_losses_pending:
            log.error("crwatch: cannot read /proc: %s; events are counted lost until fds "
                      "can be opened again, then every process is audited again",
                      os.strerror(error.errno))
            self._fd_retry_at = time.monotonic() + FD_RETRY_SECONDS
        self.fd_losses += 1
        self._fd_losses_pending += 1
        self._fd_lost_ns = time.monotonic_ns()

    def _reaudit_after_fd_losses(self) -> None:
        """The applies lost for lack of fds, reported as a loss (a `lost` notice) and
        followed by a re-audit of the table, once an fd can be opened again."""
        self._fd_retry_at = time.monotonic() + FD_RETRY_SECONDS
        try:
            os.close(os.open("/proc/self/stat", os.O_RDONLY))
        except OSError:
            return  # still short: the losses wait
        count, self._fd_losses_pending = self._fd_losses_pending, 0
        self._publish(self._guarded(self._apply, self.table.apply,
                                    Event(Kind.LOST, self._fd_lost_ns, 0, 0, arg=count)))
        if not self._fd_losses_pending:
            log.warning("crwatch: fds can be opened again: %d events lost for lack of them, "
                        "every process audited again", count)

    def _publish(self, notices: list[Notice]) -> None:
        for notice in notices:
            if isinstance(notice, Transition):
                notice.emitted_ns = time.monotonic_ns()
            for callback in self._subscribers:
                try:
                    callback(notice)
                except Exception:  # one subscriber's failure is not the others'
                    log.exception("a subscriber failed on %s", notice)


def _applied_through(reader: Reader, position: int, pids: list[int]) -> bool | None:
    """True: the records before `position` are consumed and no event about `pids` (nor a
    loss) waits for the applier; False: one does (it will change them); None: the
    reader has not consumed them yet."""
    consumed = reader.queued_through(position) is not None
    if reader.pending(pids):
        return False
    return True if consumed else None


def _settle(progressed: asyncio.Future) -> None:
    if not progressed.done():  # not timed out meanwhile
        progressed.set_result(None)
