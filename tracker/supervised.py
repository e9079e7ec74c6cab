"""Supervised background work: a failure is counted, logged once and retried, never fatal.

A Worker runs one step of a background loop again and again on its own
thread (the history writer, the process list's refresher, the tracker's
applier, the probe reader). A step that raises does not end the thread: the
error is counted, logged once per distinct cause (not once per try), the
worker is `retrying` with the reason until a step succeeds again, and the
next try comes after a backoff that doubles up to a cap. A Callback guards
work done on someone else's thread (a subscriber of the tracker's notices)
the same way, without the retrying. Errors a worker expects (a database
refusing writes) are logged as one line, any other one with its traceback.
Both report their state, which
/healthz and /metrics show: `running`, `retrying` (since when, why), `dead`
(the loop ended on its own, e.g. its source closed), or `stopped` (asked to).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Optional

from tracker.clock import iso_from_wall_ns

RUNNING, RETRYING, DEAD, STOPPED = "running", "retrying", "dead", "stopped"
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
# Distinct causes remembered (to log each once) while a worker fails; a flood of
# different messages is logged up to this many times per failing spell.
CAUSES_KEPT = 32

log = logging.getLogger(__name__)


def backoff(failures: int, first: float = FIRST_BACKOFF, cap: float = MAX_BACKOFF) -> float:
    """Seconds to wait before the next try, after this many failures in a row."""
    return min(cap, first * 2 ** max(failures - 1, 0))


class _Supervised:
    """What a worker and a callback share: state, counts, and the once-per-cause log."""

    def __init__(self, name: str, describe: Optional[Callable[[str], str]] = None,
                 expected: tuple[type[Exception], ...] = ()):
        self.name = name
        self._expected = expected
        self.errors = 0
        self.restarts = 0
        self.failing = 0          # failures in a row (0: working)
        self._describe = describe
        self._state = RUNNING
        self._since = time.time_ns()
        self._reason: str | None = None
        self._causes: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        return self._state

    def reason(self) -> str | None:
        """Why the worker is not running (None while it is)."""
        if self._state == RUNNING or self._reason is None:
            return None
        return self._describe(self._reason) if self._describe else self._reason

    def status(self) -> dict:
        return {"name": self.name, "state": self._state, "since": iso_from_wall_ns(self._since),
                "reason": self.reason(), "errors": self.errors, "restarts": self.restarts}

    def _failed(self, error: Exception) -> None:
        cause = (type(error).__name__, str(error))
        with self._lock:
            self.errors += 1
            self.failing += 1
            if self._state != RETRYING:
                self._set(RETRYING)
            self._reason = str(error) or type(error).__name__
            first = cause not in self._causes and len(self._causes) < CAUSES_KEPT
            self._causes.add(cause)
        if first:
            log.error("%s failed (retrying; the same error is not logged again): %s",
                      self.name, self._reason,
                      exc_info=None if isinstance(error, self._expected) else error)

    def _succeeded(self) -> None:
        if self.failing == 0:  # the common case, on hot paths: one attribute read
            return
        with self._lock:
            failures, self.failing = self.failing, 0
            self._causes.clear()
            self._reason = None
            self._set(RUNNING)
        log.warning("%s works again after %d failed tries", self.name, failures)

    def _set(self, state: str) -> None:
        self._state = state
        self._since = time.time_ns()


class Worker(_Supervised):
    """`step()` in a loop on a thread of its own, `interval` seconds apart; a step that
    returns False ends the loop (its source is gone: the worker is then dead unless it
    was asked to stop). `describe` adds to the reason shown while retrying; `expected`:
    errors logged without their traceback (not bugs, e.g. a full disk). `nice`: the
    thread's own nice value, for work that must keep up with the host (a negative one needs
    root; without it the thread keeps the process's, and `niced` says so)."""

    def __init__(self, name: str, step: Callable[[], Optional[bool]], *, interval: float = 0.0,
                 first_backoff: float = FIRST_BACKOFF, max_backoff: float = MAX_BACKOFF,
                 describe: Optional[Callable[[str], str]] = None,
                 expected: tuple[type[Exception], ...] = (), nice: Optional[int] = None):
        super().__init__(name, describe, expected)
        self._step = step
        self._nice = nice
        self.niced: Optional[bool] = None   # whether `nice` was set (None: none asked)
        self._interval = interval
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"crwatch-{name}", daemon=True)

    def start(self) -> Worker:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the loop to end after its current step (a backoff ends at once)."""
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        if self._nice is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, self._nice)  # Linux: this thread alone
                self.niced = True
            except OSError as error:
                self.niced = False
                log.warning("%s keeps the process's priority: %s", self.name, error)
        try:
            while not self.stopping.is_set():
                try:
                    going_on = self._step()
                except Exception as error:
                    self._failed(error)
                    if self.stopping.wait(backoff(self.failing, self._first_backoff,
                                                  self._max_backoff)):
                        break
                    self.restarts += 1
                    continue
                self._succeeded()
                if going_on is False:
                    break
                if self._interval:
                    self.stopping.wait(self._interval)
        finally:
            self._ended()

    def _ended(self) -> None:
        with self._lock:
            if self.stopping.is_set():
                self._set(STOPPED)
            else:  # the step's source is gone, or something not an Exception escaped
                self._reason = self._reason or "its loop ended"
                self._set(DEAD)
        if self._state == DEAD:
            log.error("%s stopped working: %s", self.name, self._reason)


class Callback(_Supervised):
    """`work(*args)` called on the caller's thread: a failure is counted, logged once per
    cause and shown (`retrying`) until a call succeeds again; it never reaches the caller."""

    def __init__(self, name: str, work: Callable[..., object],
                 describe: Optional[Callable[[str], str]] = None,
                 expected: tuple[type[Exception], ...] = ()):
        super().__init__(name, describe, expected)
        self._work = work

    def __call__(self, *args) -> None:
        try:
            self._work(*args)
        except Exception as error:
            self._failed(error)
            return
        self._succeeded()
