"""The shared-memory store of a rate limit: every process of one machine that received it.

The same two steps as `opero._policies.rate_limit.LocalRateLimiter` (reserve a start, then
release), its pause, and its adaptive rate (`opero._policies.adaptive`): the current
interval and the rate's curve live in the same shared array as the schedule, so a cut
made by one worker process slows every other at once.
"""

from __future__ import annotations

import math
import time
from typing import Any

from opero._policies import adaptive
from opero._policies.adaptive import Adaptation

# Slots of the shared array.
NEXT_START, RELEASE_AT, PAUSED_UNTIL, INTERVAL, CURVE = 0, 1, 2, 3, 4
RETUNE_AT = CURVE + adaptive.RETUNE_AT  # read on every take
RELEASED = CURVE + adaptive.RELEASED
END = CURVE + adaptive.STATE_SIZE


class SharedRateLimiter:
    """One limit for all processes of this machine that received this object.

    The times live in shared memory behind a process-shared lock; `time.monotonic` is
    the system-wide monotonic clock, the same in every process. Pass the object to worker
    processes when they start (as a `Process` argument or pool initializer) created with
    the same multiprocessing context as `context`.
    """

    def __init__(
        self,
        rate: float,
        context: Any = None,
        adaptation: Adaptation | None = None,
        burst: int = 1,
    ) -> None:
        import multiprocessing

        ctx = context or multiprocessing.get_context()
        self.adaptation = adaptation
        self.burst = burst
        self._extra = float(burst - 1)  # see `LocalRateLimiter`
        curve = (adaptation or Adaptation(rate, found=True)).initial_state()
        # Next start, next release of the even schedule, end of the pause (see
        # `LocalRateLimiter`), the interval, then the rate's curve (`adaptive`).
        initial = [0.0, -math.inf, -math.inf, 1.0 / rate, *curve]
        self._times = ctx.Array("d", initial, lock=True)

    @property
    def interval(self) -> float:
        """The current interval between releases (a read of shared memory, no lock)."""
        return float(self._times[INTERVAL])

    def take(self) -> float:
        times = self._times
        with times.get_lock():
            now = time.monotonic()
            if now >= times[RETUNE_AT]:
                self._retune(now)
            start = max(now, times[NEXT_START])
            times[NEXT_START] = start + times[INTERVAL]
            if self._extra:  # a burst: up to `burst` turns early, never inside a pause
                start = max(now, start - self._extra * times[INTERVAL], times[PAUSED_UNTIL])
        return float(start)

    def _retune(self, now: float) -> None:
        """The rate moves: recompute it (under the lock; the curve copied out and back,
        since a slice of shared memory is a copy)."""
        assert self.adaptation is not None
        times = self._times
        curve = list(times[CURVE:END])
        # Binding: someone came for a turn within an interval of it (see LocalRateLimiter).
        rate = self.adaptation.retune(curve, now, times[NEXT_START] > now - times[INTERVAL])
        times[CURVE:END] = curve
        self._set_rate(rate, now)

    def _set_rate(self, rate: float, now: float) -> None:
        """As `LocalRateLimiter._set_rate` (under the lock)."""
        times = self._times
        interval = 1.0 / rate
        base = max(now, times[PAUSED_UNTIL])
        if times[NEXT_START] > base:
            times[NEXT_START] = base + (times[NEXT_START] - base) * interval / times[INTERVAL]
        times[INTERVAL] = interval

    @property
    def paused_until(self) -> float:
        return float(self._times[PAUSED_UNTIL])

    def give_back(self, start: float) -> None:
        """Undo the reservation of `start` if it is still the last one (holes in the
        middle of the schedule are not kept across processes)."""
        times = self._times
        with times.get_lock():
            if abs(times[NEXT_START] - times[INTERVAL] - start) < 1e-9:
                times[NEXT_START] = start

    def release(self) -> float:
        times = self._times
        with times.get_lock():
            now = time.monotonic()
            ready = times[RELEASE_AT]
            if self._extra:
                ready = max(ready - self._extra * times[INTERVAL], times[PAUSED_UNTIL])
            if now >= ready:
                at = max(times[RELEASE_AT], now) if self._extra else now
                times[RELEASE_AT] = at + times[INTERVAL]
                times[RELEASED] += 1  # the measured rate (see adaptive.measure)
                return 0.0
        return float(ready - now)

    def pause(self, seconds: float) -> bool:
        """As `LocalRateLimiter.pause`, for every process sharing this limit."""
        times = self._times
        with times.get_lock():
            until = time.monotonic() + seconds
            if until <= times[PAUSED_UNTIL]:
                return False
            times[PAUSED_UNTIL] = until
            times[NEXT_START] = max(times[NEXT_START], until)
            times[RELEASE_AT] = max(times[RELEASE_AT], until)
        return True

    def slow_down(self, start: float) -> float | None:
        """As `LocalRateLimiter.slow_down`: one cut for every process sharing this limit."""
        adaptation = self.adaptation
        if adaptation is None:
            return None
        times = self._times
        with times.get_lock():
            curve = list(times[CURVE:END])
            now = time.monotonic()
            resume = max(now, times[PAUSED_UNTIL])
            cut = adaptation.cut(curve, now, start, resume)
            times[CURVE:END] = curve  # the release count changes either way
            if not cut:
                return None
            rate = adaptation.rate_at(curve[0], 0.0)
            self._set_rate(rate, now)
        return rate

    @property
    def moving(self) -> bool:
        """As `LocalRateLimiter.moving`."""
        return bool(self._times[RETUNE_AT] != math.inf)
