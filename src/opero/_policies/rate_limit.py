"""Rate limits: at most `rate` attempts per second, spread evenly, with no burst.

Two steps per attempt. `take()` reserves a start time (the "generic cell rate
algorithm"): ``max(now, next_start)``, moving `next_start` one interval on, so waiters
are scheduled in order and wake when their turn comes. At that time `release()` checks
the attempt against the last one actually released: it goes only if at least one
interval has passed, else it waits the rest. The first attempt goes at once; no two
attempts are released closer than ``1 / rate``, however late a waiter wakes (scheduling,
a stalled event loop), so no one-second window holds more than ``rate + 1``. Threads
wait with `time.sleep`, tasks with `asyncio.sleep`, so one limit serves threads, tasks
and any number of event loops at once.

Why not asynciolimiter for the async side: its limiters keep their timer on the event
loop that first waited and take no lock, so they cannot be shared by threads, and a
second `asyncio.run()` hangs forever in `wait()` (tests/test_rate_limit.py pins this).

Three stores: this process (`LocalRateLimiter`), all processes of one machine through
shared memory (`SharedRateLimiter`, what `@opmap` hands to its worker processes), and
every machine using one Redis (`opero._policies.rate_limit_redis.RedisRateLimiter`,
atomic Lua steps on the server's clock). Each can be paused for all its callers
(backpressure, see `opero._policies.backpressure`).
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from opero._observe.events import (
    RATE_LIMIT_CHANGED,
    RATE_LIMIT_PAUSED,
    RATE_LIMIT_WAIT,
    call_id,
    current_call,
)
from opero._policies.adaptive import RELEASED, RETUNE_AT, W_MAX, Adaptation
from opero._policies.rate_limit_shared import SharedRateLimiter
from opero._policies.rate_limit_wait import wait_async, wait_sync

if TYPE_CHECKING:
    from opero._timeouts.total import TotalTimeout


class RateLimiter(Protocol):
    """`take()` reserves a start (a `time.monotonic()` value); at that time `release()`
    returns 0.0 to go, or the seconds to wait before asking again. A limiter may also
    have `give_back(start)`, for a reservation its waiter will not use (cancelled, or
    past its deadline), and `pause(seconds)`, which releases no one before `seconds`
    from now (backpressure: the server said to slow down) and tells whether that moved
    the end of the pause later."""

    def take(self) -> float: ...

    def release(self) -> float: ...


__all__ = [
    "LocalRateLimiter",
    "RateLimitStep",
    "RateLimiter",
    "SharedRateLimiter",
    "wait_async",
    "wait_sync",
]

# Most given-back starts a local limiter keeps for later takers. Past that, a given-back
# start pulls the end of the schedule back one interval instead: the last two waiters
# may then share a start, and `release` spaces them.
MAX_HOLES = 4096


class LocalRateLimiter:
    """One limit for every thread, task and event loop of this process.

    A reservation given back (its waiter was cancelled, or its start lay past the
    call's deadline) leaves a hole in the schedule: the next taker gets the earliest
    hole still ahead instead of a start after every reservation, so cancelled waiters
    cost the others no throughput.
    """

    def __init__(self, rate: float, adaptation: Adaptation | None = None, burst: int = 1) -> None:
        self.interval = 1.0 / rate
        # A token bucket of `burst`: starts and releases may run that many intervals
        # minus one ahead of the even schedule (the generic cell rate algorithm's
        # tolerance); 1 is the even schedule itself.
        self.burst = burst
        self._extra = float(burst - 1)
        self._next_start = 0.0
        self._release_at = -math.inf  # the even schedule's next release
        self._lock = threading.Lock()
        self._holes: list[float] = []  # a heap of given-back starts
        self._paused_until = -math.inf
        # The rate's curve (see `opero._policies.adaptive`); without one, never retuned.
        self.adaptation = adaptation
        self._curve = (adaptation or Adaptation(rate, found=True)).initial_state()

    def take(self) -> float:
        with self._lock:
            now = time.monotonic()
            if now >= self._curve[RETUNE_AT]:  # the rate moves: recompute it
                assert self.adaptation is not None
                # Binding: someone came for a turn within an interval of it. A caller
                # waking a little after its turn (a sequential one, every time) still
                # waits on the limit: `> now` alone stalled slow start for it.
                binding = self._next_start > now - self.interval
                self._set_rate(self.adaptation.retune(self._curve, now, binding), now)
            holes = self._holes
            if holes:
                while holes and holes[0] < now - self.interval:
                    heapq.heappop(holes)  # its moment passed unused
                if holes:
                    return heapq.heappop(holes)
            start = max(now, self._next_start)
            self._next_start = start + self.interval
            if self._extra:  # a burst: up to `burst` turns early, never inside a pause
                start = max(now, start - self._extra * self.interval, self._paused_until)
        return start

    def give_back(self, start: float) -> None:
        """The waiter of `start` will not use it: the slot goes to the next taker."""
        with self._lock:
            if abs(self._next_start - self.interval - start) < 1e-9:
                self._next_start = start  # it was the last reservation: undo it
            elif start < self._next_start and len(self._holes) < MAX_HOLES:
                heapq.heappush(self._holes, start)
            else:  # one reservation fewer ahead: the schedule ends one interval sooner
                self._next_start = max(self._next_start - self.interval, time.monotonic())

    def release(self) -> float:
        with self._lock:
            now = time.monotonic()
            ready = self._release_at
            if self._extra:
                ready = max(ready - self._extra * self.interval, self._paused_until)
            if now >= ready:
                # Without a burst the schedule is never behind a release that goes.
                at = max(self._release_at, now) if self._extra else now
                self._release_at = at + self.interval
                self._curve[RELEASED] += 1  # the measured rate (see adaptive.measure)
                return 0.0
        return ready - now

    def pause(self, seconds: float) -> bool:
        """Release no one for `seconds`; waiters already scheduled inside the pause are
        held by `release`, later takers are scheduled after it."""
        with self._lock:
            until = time.monotonic() + seconds
            if until <= self._paused_until:
                return False
            self._paused_until = until
            self._next_start = max(self._next_start, until)
            # The first release after the pause may go at its end (and a burst with it).
            self._release_at = max(self._release_at, until)
        return True

    def slow_down(self, start: float) -> float | None:
        """A throttling answer to the attempt released at `start`: cut the rate (after
        the pause, if one runs). Returns the new rate, or None if nothing was cut."""
        adaptation = self.adaptation
        if adaptation is None:
            return None
        with self._lock:
            now = time.monotonic()
            resume = max(now, self._paused_until)
            if not adaptation.cut(self._curve, now, start, resume):
                return None
            rate = adaptation.rate_at(self._curve[W_MAX], 0.0)
            self._set_rate(rate, now)
        return rate

    def _set_rate(self, rate: float, now: float) -> None:
        """A new rate (under the lock): the schedule still ahead is stretched or squeezed
        with it, as its waiters do with their own starts (see `follow`), from the end of
        the pause if one runs (the pause itself stays as the server asked)."""
        interval = 1.0 / rate
        base = max(now, self._paused_until)
        if self._next_start > base:
            self._next_start = base + (self._next_start - base) * interval / self.interval
        self.interval = interval

    @property
    def paused_until(self) -> float:
        return self._paused_until

    @property
    def moving(self) -> bool:
        """Whether the rate moves now (adaptive, below its ceiling or just cut)."""
        return self._curve[RETUNE_AT] != math.inf


class RateLimitStep:
    """The rate-limit step of one decorated function; `limiter` may be swapped (by
    `@opmap`, for one shared by its worker processes).

    With `backpressure`, a failed attempt whose exception is a throttling answer (see
    `opero._policies.backpressure`) pauses `limiter` for every caller, at most
    `max_pause` seconds (the retry step's `max_delay`, the longest it obeys a
    Retry-After), and cuts an adaptive limiter's rate (`opero._policies.adaptive`)."""

    __slots__ = ("backpressure", "limiter", "max_pause", "observer", "reported", "total")

    def __init__(
        self, limiter: RateLimiter, *, backpressure: bool = True, max_pause: float = 30.0
    ) -> None:
        self.limiter = limiter
        self.backpressure = backpressure
        self.max_pause = max_pause
        self.observer: Any = None  # an events.Observer: waits are events while it is on
        self.total: TotalTimeout | None = None  # the call's deadline, when it has one
        self.reported = 0.0  # the interval last reported by a rate_limit_changed event

    def wrap_sync(self, func: Any) -> Any:
        step = self

        def limited(*args: Any, **kwargs: Any) -> Any:
            observer = step.observer
            if observer is not None and observer.on:
                began = time.monotonic()
                start = wait_sync(step.limiter, step.total)
                step.report_wait(time.monotonic() - began)
            else:
                start = wait_sync(step.limiter, step.total)
            try:
                return func(*args, **kwargs)
            except Exception as exc:  # free until raised (zero-cost try)
                if step.backpressure:
                    step.throttled(exc, start)
                raise

        return limited

    def wrap_async(self, func: Any) -> Any:
        step = self

        async def limited(*args: Any, **kwargs: Any) -> Any:
            observer = step.observer
            if observer is not None and observer.on:
                began = time.monotonic()
                start = await wait_async(step.limiter, step.total)
                step.report_wait(time.monotonic() - began)
            else:
                start = await wait_async(step.limiter, step.total)
            try:
                return await func(*args, **kwargs)
            except Exception as exc:
                if step.backpressure:
                    await step.throttled_async(exc, start)
                raise

        return limited

    def throttled(self, exc: BaseException, start: float = math.inf) -> None:
        """A failed attempt, released at `start`: if the server said to slow down, pause
        every caller, and cut an adaptive rate."""
        from opero._policies.backpressure import throttle_pause  # the failure path only

        seconds = throttle_pause(exc, self.max_pause)
        if seconds is None:
            return
        pause = getattr(self.limiter, "pause", None)
        if seconds > 0.0 and pause is not None and pause(seconds):
            self.report_pause(seconds, exc)
        slow_down = getattr(self.limiter, "slow_down", None)
        rate = slow_down(start) if slow_down is not None else None
        if rate is not None:
            from opero._utils.logging import log

            name = self.observer.function if self.observer is not None else "?"
            log().info(
                "{}: a {} answer cut the rate limit to {:.3g}/s [call {}]",
                name,
                type(exc).__name__,
                rate,
                call_id(),
            )
            self.report_rate()

    async def throttled_async(self, exc: BaseException, start: float = math.inf) -> None:
        if getattr(self.limiter, "blocking_io", False):  # Redis: off the event loop
            import asyncio

            await asyncio.to_thread(self.throttled, exc, start)
        else:
            self.throttled(exc, start)

    def report_wait(self, waited: float) -> None:
        """An observed attempt waited `waited` seconds for its turn (reported from 1 ms),
        and the rate it was released at, if that changed since the last report."""
        if waited >= 0.001 and self.observer is not None:
            self.observer.emit(RATE_LIMIT_WAIT, current_call.get(), delay=waited)
        self.report_rate()

    def report_rate(self) -> None:
        """A rate_limit_changed event if the limiter's rate moved since the last one."""
        interval = getattr(self.limiter, "interval", None)
        observer = self.observer
        if interval is None or interval == self.reported or observer is None or not observer.on:
            return
        first = self.reported == 0.0
        self.reported = interval
        if not first or getattr(self.limiter, "adaptation", None) is not None:
            observer.emit(RATE_LIMIT_CHANGED, current_call.get(), rate=1.0 / interval)

    def report_pause(self, seconds: float, exc: BaseException) -> None:
        """The limit was paused (or its pause made longer) by the answer `exc`."""
        from opero._utils.logging import log

        observer = self.observer
        name = observer.function if observer is not None else "?"
        log().info(
            "{}: a {} answer paused the rate limit for {:.3f}s for every caller [call {}]",
            name,
            type(exc).__name__,
            seconds,
            call_id(),
        )
        if observer is not None and observer.on:
            observer.emit(
                RATE_LIMIT_PAUSED, current_call.get(), delay=seconds, error=type(exc).__name__
            )
