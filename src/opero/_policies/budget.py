"""Retry budgets: retries may be at most a fraction of recent calls, plus a small floor.

Per-call retry limits (``retries=3``) do not stop a retry storm: when a dependency goes
down, every call retries, and the load on it multiplies just when it can least take it.
A retry budget caps retries for a whole decorated function instead (after
Finagle's RetryBudget): over the last `window` seconds, retries may number at most
``min_retries_per_second * window + ratio * calls``. The floor lets a quiet function
still retry its rare failures; the ratio bounds the extra load a busy one can cause
(``ratio=0.2``: at most 20% more requests than the callers made).

`RetryBudget` is the immutable configuration; `BudgetTracker` is its runtime state for
one function. The tracker counts calls and retries in 10 time buckets of
``window / 10`` seconds each, the current one included, and drops buckets as they age
out, so its memory is fixed whatever the call rate, and an event counts for between
0.9 and 1.0 `window` seconds. `record_call` runs on the success path of every call, so
it does one clock read, one comparison and one increment under a lock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BudgetTracker", "RetryBudget"]

_BUCKETS = 10

# A retry is granted while ``retries < allowed``. `allowed` is computed in floating
# point (1.1 * 100 is 110.00000000000001, which would grant a 111th retry), so it is
# shrunk by a relative 1e-12 (far above rounding error, far below any meaningful
# fraction): whole-number allowances stay exact.
_SHRINK = 1.0 - 1e-12


def _check(name: str, value: object, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"RetryBudget: {name} must be a number, got {value!r}")
    bound = ">= 0" if allow_zero else "> 0"
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"RetryBudget: {name} must be a finite number {bound}, got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """How many retries a function may make: at most ``ratio`` of its calls over the last
    ``window`` seconds, plus ``min_retries_per_second * window`` whatever the calls.

    ``ratio`` must be finite and > 0 (it may exceed 1); ``min_retries_per_second``
    finite and >= 0; ``window`` (seconds) finite and > 0. A bad type raises TypeError
    (``bool`` is not a number), a bad value ValueError.
    """

    ratio: float = 0.2
    min_retries_per_second: float = 1.0
    window: float = 10.0

    def __post_init__(self) -> None:
        """Validate the fields."""
        _check("ratio", self.ratio, allow_zero=False)
        _check("min_retries_per_second", self.min_retries_per_second, allow_zero=True)
        _check("window", self.window, allow_zero=False)


class BudgetTracker:
    """The runtime state of one RetryBudget for one decorated function.

    Thread-safe (a threading.Lock held only inside the methods). `clock` returns
    seconds and should not go backwards; if it does, events count in the newest bucket.
    """

    __slots__ = (
        "_bucket_end",
        "_calls",
        "_clock",
        "_cur_calls",
        "_cur_retries",
        "_floor",
        "_lock",
        "_ratio",
        "_retries",
        "_slot",
        "_tick",
        "_width",
        "budget",
    )

    def __init__(self, budget: RetryBudget, clock: Callable[[], float] = time.monotonic) -> None:
        """Track `budget`, reading the time from `clock` (seconds)."""
        self.budget = budget
        self._clock = clock
        self._width = budget.window / _BUCKETS
        self._floor = budget.min_retries_per_second * budget.window
        self._ratio = budget.ratio
        self._lock = threading.Lock()
        # Counts of the past buckets, a ring indexed by `_slot` (the current bucket,
        # whose entry stays 0: its counts live in `_cur_calls` and `_cur_retries`,
        # cheaper to bump, and move into the ring when the bucket ends).
        self._calls = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._slot = 0
        self._cur_calls = 0
        self._cur_retries = 0
        self._tick = -math.inf  # the current bucket: clock() // width
        self._bucket_end = -math.inf  # when it ends: (tick + 1) * width

    def record_call(self) -> None:
        """Count a call that started (its first attempt; retries are not calls)."""
        now = self._clock()
        if now < self._bucket_end:
            # The common case, without the lock: two threads counting at once may count
            # one call instead of two, which only makes the budget stricter.
            self._cur_calls += 1
            return
        lock = self._lock
        lock.acquire()  # not `with`: cheaper on CPython 3.11
        try:
            if now >= self._bucket_end:
                self._advance(now)
            self._cur_calls += 1
        finally:
            lock.release()

    def try_retry(self) -> bool:
        """May one retry happen now? If so it is counted and True returned, else False."""
        now = self._clock()
        with self._lock:
            if now >= self._bucket_end:
                self._advance(now)
            calls = self._cur_calls + sum(self._calls)
            retries = self._cur_retries + sum(self._retries)
            if retries < (self._floor + self._ratio * calls) * _SHRINK:
                self._cur_retries += 1
                return True
            return False

    def _advance(self, now: float) -> None:
        """Close the current bucket and open the one holding `now`, dropping aged-out ones.

        Called with the lock held, once `now` has reached the end of the current bucket.
        """
        # At least one bucket on, even if `now // width` rounds the other way.
        tick = max(now // self._width, self._tick + 1)
        calls, retries = self._calls, self._retries
        slot = self._slot
        calls[slot] = self._cur_calls
        retries[slot] = self._cur_retries
        self._cur_calls = self._cur_retries = 0
        steps = tick - self._tick
        if steps >= _BUCKETS:
            for i in range(_BUCKETS):
                calls[i] = retries[i] = 0
        else:
            for _ in range(int(steps)):
                slot = (slot + 1) % _BUCKETS
                calls[slot] = retries[slot] = 0
            self._slot = slot
        self._tick = tick
        self._bucket_end = (tick + 1) * self._width
