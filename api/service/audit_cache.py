"""The audits the service keeps for reuse: a process's last audit, or its tree's, is
answered again while no probe event came for any process it read and it is recent, so
neither a request nor a row of the process list reads /proc again for processes nothing
happened to.

An audit is also shared by the requests that wait for it, never by one that came after
it began: a request that finds an audit of the same process (or tree) being read
waits for the one begun after it came (starting it, or joining the one another
request started meanwhile), so that a process that keeps changing costs one audit
per audit time, however many ask, and every answer is read after its question.

Only the probes can tell that nothing happened: without a live table fed by them,
nothing is kept and every audit is fresh. And they tell it only once they are
caught up: an audit is reused only when every event about its processes that the
kernel emitted before the question came (and every loss) has been applied to the
table (the tracker waits CATCH_UP_SECONDS at most for its reader and applier, and
LOOP_CATCH_UP_SECONDS for a question awaited on the event loop, where the wait holds
no thread; a question they are further behind than that is answered by a fresh
audit). A
tree's membership is not left to them (the probes report the forks of watched
processes only): the kept tree is reused only while the tree read now from
/proc/PID/task/*/children has the same members, each the same identity (pid,
start time).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import count
from typing import Awaitable, Callable

from api.service.errors import NoSuchProcess
from tracker.audit import Audit
from tracker.holders import HostHolders
from tracker.live.table import LiveTable
from tracker.procfs import AccessDenied, Proc, ProcessGone

# An audit is reused while no probe event came for its processes, for this long at
# most: what no probe sees (a regular file opened, a unix socket connected) is
# then at most this stale.
AUDIT_REUSE_SECONDS = 5.0
# How long a question waits for the probes' events emitted before it to be applied,
# before it is answered by a fresh audit instead.
CATCH_UP_SECONDS = 0.005
# The same on the event loop, where waiting holds no thread: longer, since the reader
# and the applier wait for the interpreter's lock like everyone else, and a question
# that gives up goes to a thread and may have an audit read for it.
LOOP_CATCH_UP_SECONDS = 0.02


@dataclass(frozen=True)
class _Kept:
    start_time: float
    sequence: int        # the live table's sequence when the audit began
    at: float            # time.monotonic() when it began
    audit: Audit
    # what callers derive from the audit while it is kept (their answers), dropped with it
    answers: dict = field(default_factory=dict, compare=False)


@dataclass
class _Flight:
    """An audit being read: `ticket` orders its start against the requests' arrivals."""

    ticket: int
    done: threading.Event = field(default_factory=threading.Event)
    result: Audit | None = None
    error: BaseException | None = None

    def outcome(self) -> Audit:
        if self.error is not None:
            raise self.error
        return self.result


class AuditCache:
    """`audit(pid, tree=, holders=)`: a fresh audit of one process (tree False: its own
    findings) or of its tree, with a pass's `holders` index if any; `live_table`: the
    table, when probes feed it (None: nothing is kept); `caught_up(pids, timeout)`:
    has every event about them emitted before the call (and every loss) been applied
    to it (waiting up to timeout); `caught_up_on_loop`: the same, awaited by a
    coroutine (kept_on_loop)."""

    def __init__(self, *, audit: Callable[..., Audit],
                 live_table: Callable[[], LiveTable | None],
                 caught_up: Callable[[list[int], float], bool],
                 caught_up_on_loop: Callable[[list[int], float],
                                             Awaitable[bool]] | None = None):
        self._audit = audit
        self._live_table = live_table
        self._caught_up = caught_up
        self._caught_up_on_loop = caught_up_on_loop
        self._kept: dict[tuple[int, bool], _Kept] = {}
        self._flights: dict[tuple[int, bool], _Flight] = {}
        self._tickets = count()
        self._lock = threading.Lock()

    def audit(self, pid: int, holders: HostHolders | None = None, *,
              tree: bool = False) -> tuple[Audit, bool]:
        """The last audit of this process (or tree) if no probe event came for what it read
        since (and it is recent), else a fresh one; True when it is the last one."""
        kept = self.kept(pid, tree=tree)
        if kept is not None:
            return kept, True
        return self._read_after_now(pid, tree, holders, self._live_table()), False

    def kept(self, pid: int, *, tree: bool = False, wait: float = CATCH_UP_SECONDS,
             most: int | None = None) -> Audit | None:
        """The last audit of this process (or tree), if it may be answered again now: no
        probe event came for what it read (waiting up to `wait` for the probes to catch
        up with this call), it is recent, and the process (its tree) is the same. None:
        a fresh audit is needed, or the audit is of more than `most` processes."""
        kept = self._candidate(pid, tree, most)
        # first: the events about them emitted before this call are applied
        if kept is None or not self._caught_up(_pids(kept), wait):
            return None
        return self._still_same(pid, tree, kept)

    async def kept_on_loop(self, pid: int, *, tree: bool = False,
                           most: int | None = None) -> Audit | None:
        """kept() for a coroutine on the event loop: the probes' catch-up is awaited
        (caught_up_on_loop), never waited for by blocking the loop. None also when no
        such wait was given to the cache."""
        kept = self._candidate(pid, tree, most)
        if (kept is None or self._caught_up_on_loop is None
                or not await self._caught_up_on_loop(_pids(kept), LOOP_CATCH_UP_SECONDS)):
            return None
        return self._still_same(pid, tree, kept)

    def answers(self, pid: int, tree: bool, audit: Audit) -> dict | None:
        """Where callers keep what they derive from this audit while it is the kept one of
        the process (or tree): it goes when the audit does. None: it is not kept."""
        kept = self._kept.get((pid, tree))
        return kept.answers if kept is not None and kept.audit is audit else None

    def _candidate(self, pid: int, tree: bool, most: int | None) -> _Kept | None:
        """The kept audit of this process (or tree) if one is recent enough, small enough
        and without an event applied since, before anything is read or awaited."""
        kept = self._kept.get((pid, tree))
        table = self._live_table()
        if (table is not None and kept is not None
                and (most is None or len(kept.audit.processes) <= most)
                and time.monotonic() - kept.at < AUDIT_REUSE_SECONDS
                # an event for them applied already: no need to wait for the probes
                and not any(table.changed_since(member.pid, kept.sequence)
                            for member in kept.audit.processes)):
            return kept
        return None

    def _still_same(self, pid: int, tree: bool, kept: _Kept) -> Audit | None:
        """The kept audit, once the probes are caught up with the question, if no event
        came for what it read and the process (its tree) is the same."""
        table = self._live_table()
        if table is None or any(table.changed_since(member.pid, kept.sequence)
                                for member in kept.audit.processes):
            return None
        try:
            # The same identity (pid, start time) as the audit's: a process, not a thread,
            # as it was then (an exec by another of its threads takes its start time too,
            # and is an event). A tree's members are each read so, its root among them.
            if (_same_members(pid, kept.audit) if tree
                    else Proc(pid).stat.start_time == kept.start_time):
                return kept.audit
        except (ProcessGone, AccessDenied):
            self.forget(pid)
            raise NoSuchProcess(pid) from None
        return None

    def _read_after_now(self, pid: int, tree: bool, holders: HostHolders | None,
                        table: LiveTable | None) -> Audit:
        """An audit begun after this call: the one another caller began meanwhile, or
        one read here."""
        key = (pid, tree)
        with self._lock:
            arrived = next(self._tickets)
        while True:
            with self._lock:
                flight = self._flights.get(key)
                reading = flight is None
                if reading:
                    flight = self._flights[key] = _Flight(next(self._tickets))
            if reading:
                self._read(flight, key, holders, table)
                return flight.outcome()
            flight.done.wait()
            if flight.ticket > arrived:
                return flight.outcome()
            # it began before this call came: what changed since may be missing from it

    def _read(self, flight: _Flight, key: tuple[int, bool], holders: HostHolders | None,
              table: LiveTable | None) -> None:
        pid, tree = key
        sequence, began = (table.sequence if table else 0), time.monotonic()
        try:
            flight.result = self._audit(pid, tree=tree, holders=holders)
            if table is not None:
                self._kept[key] = _Kept(flight.result.root.start_time, sequence, began,
                                        flight.result)
        except BaseException as error:  # every caller waiting for it gets it
            flight.error = error
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()

    def forget(self, pid: int) -> None:
        for tree in (False, True):
            self._kept.pop((pid, tree), None)

    def forget_old(self) -> None:
        stale = time.monotonic() - 2 * AUDIT_REUSE_SECONDS
        # copied in one step: requests keep audits from other threads meanwhile
        for key in [key for key, kept in tuple(self._kept.items()) if kept.at < stale]:
            self._kept.pop(key, None)


def _pids(kept: _Kept) -> list[int]:
    return [member.pid for member in kept.audit.processes]


def _same_members(pid: int, kept: Audit) -> bool:
    """Is the tree rooted at pid now made of the processes the kept audit read, each the
    same identity? (A descendant that left it while it was read, `departed`, is no member
    either.) Read as tracker.audit.descendants reads it, each member's stat first, which
    spares listing the tasks of a member of one thread (Proc.children)."""
    members = {member.pid: member.start_time for member in kept.processes}
    found, queue = {pid}, deque([pid])
    try:
        while queue:
            current = queue.popleft()
            proc = Proc(current)
            stat = proc.stat
            if stat.start_time != members.get(current):
                return False
            for kid in proc.children():  # its stat read: one thread's list when it is alone
                if kid not in found:
                    found.add(kid)
                    queue.append(kid)
    except (ProcessGone, AccessDenied):
        return False
    return len(found) == len(members)
