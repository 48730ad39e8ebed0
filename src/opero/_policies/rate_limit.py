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

from opero._observe.events import RATE_LIMIT_PAUSED, RATE_LIMIT_WAIT, call_id, current_call
from opero._utils import testing_state

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

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next_start = 0.0
        self._last_release = -math.inf
        self._lock = threading.Lock()
        self._holes: list[float] = []  # a heap of given-back starts
        self._paused_until = -math.inf

    def take(self) -> float:
        with self._lock:
            now = time.monotonic()
            holes = self._holes
            if holes:
                while holes and holes[0] < now - self.interval:
                    heapq.heappop(holes)  # its moment passed unused
                if holes:
                    return heapq.heappop(holes)
            start = max(now, self._next_start)
            self._next_start = start + self.interval
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
            ready = self._last_release + self.interval
            if now >= ready:
                self._last_release = now
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
            # The first release after the pause may go at its end, the next one interval on.
            self._last_release = max(self._last_release, until - self.interval)
        return True


class SharedRateLimiter:
    """One limit for all processes of this machine that received this object.

    The times live in shared memory behind a process-shared lock; `time.monotonic` is
    the system-wide monotonic clock, the same in every process. Pass the object to worker
    processes when they start (as a `Process` argument or pool initializer) created with
    the same multiprocessing context as `context`.
    """

    def __init__(self, rate: float, context: Any = None) -> None:
        import multiprocessing

        ctx = context or multiprocessing.get_context()
        self.interval = 1.0 / rate
        # Next start, last release, end of the pause (see `LocalRateLimiter.pause`).
        self._times = ctx.Array("d", [0.0, -math.inf, -math.inf], lock=True)

    def take(self) -> float:
        with self._times.get_lock():
            start = max(time.monotonic(), self._times[0])
            self._times[0] = start + self.interval
        return float(start)

    def give_back(self, start: float) -> None:
        """Undo the reservation of `start` if it is still the last one (holes in the
        middle of the schedule are not kept across processes)."""
        with self._times.get_lock():
            if abs(self._times[0] - self.interval - start) < 1e-9:
                self._times[0] = start

    def release(self) -> float:
        with self._times.get_lock():
            now = time.monotonic()
            ready = self._times[1] + self.interval
            if now >= ready:
                self._times[1] = now
                return 0.0
        return float(ready - now)

    def pause(self, seconds: float) -> bool:
        """As `LocalRateLimiter.pause`, for every process sharing this limit."""
        times = self._times
        with times.get_lock():
            until = time.monotonic() + seconds
            if until <= times[2]:
                return False
            times[2] = until
            times[0] = max(times[0], until)
            times[1] = max(times[1], until - self.interval)
        return True


# How early a waiter wakes before its turn, to finish the wait by yielding: time.sleep
# overshoots by ~0.1 ms, asyncio timers by up to 1 ms (epoll's resolution). Sleeping
# right up to each turn would make every release late by that much, and since releases
# are kept one interval apart, the lateness would add up and cost throughput.
THREAD_EARLY = 0.0003
TASK_EARLY = 0.0015
# Waits shorter than this are polled without yielding (a high limit, e.g. 10^6/s, must
# add only about its own interval to a call, and a yield costs microseconds).
BUSY_BELOW = 0.00005


def wait_sync(limiter: RateLimiter, total: TotalTimeout | None = None) -> None:
    """Block the calling thread until its reserved start, then until it is released.

    A start past the call's deadline (`total`) fails at once; a reservation its waiter
    does not use (the deadline, Ctrl-C) is given back."""
    if testing_state.state.active:
        return
    start = limiter.take()
    coarse = start - time.monotonic() - THREAD_EARLY
    if coarse > 0.0:
        _check_deadline(limiter, start, total)
        try:
            time.sleep(coarse)
        except BaseException:
            _give_back(limiter, start)
            raise
    while (extra := limiter.release()) > 0.0:
        if extra > BUSY_BELOW:  # else poll at once: a syscall costs more than the wait
            _check_release(extra, total)
            # time.sleep(0) yields the GIL: other threads run while this one polls.
            time.sleep(extra - THREAD_EARLY if extra > 2 * THREAD_EARLY else 0)


async def wait_async(limiter: RateLimiter, total: TotalTimeout | None = None) -> None:
    """Wait, without blocking the event loop, for the reserved start and the release;
    as `wait_sync` for deadlines, and a cancelled waiter gives its start back."""
    if testing_state.state.active:
        return
    import asyncio

    blocking = getattr(limiter, "blocking_io", False)
    start = await asyncio.to_thread(limiter.take) if blocking else limiter.take()
    coarse = start - time.monotonic() - TASK_EARLY
    if coarse > 0.0:
        _check_deadline(limiter, start, total)
        try:
            await asyncio.sleep(coarse)
        except BaseException:  # cancelled while waiting for its turn
            _give_back(limiter, start)
            raise
    release = limiter.release
    while (extra := (await asyncio.to_thread(release) if blocking else release())) > 0.0:
        if extra > BUSY_BELOW:
            _check_release(extra, total)
            # A wait for a point in time, not an event; sleep(0) lets other tasks run.
            await asyncio.sleep(extra - TASK_EARLY if extra > 2 * TASK_EARLY else 0)


def _check_deadline(limiter: RateLimiter, start: float, total: TotalTimeout | None) -> None:
    """A reserved start past the call's deadline: give it back and fail now."""
    if total is None:
        return
    deadline = total.deadline()
    if deadline is not None and start > deadline:
        _give_back(limiter, start)
        raise total.error(None)


def _check_release(extra: float, total: TotalTimeout | None) -> None:
    """A release held past the call's deadline (a long pause): fail now, not after it."""
    if total is not None:
        deadline = total.deadline()
        if deadline is not None and time.monotonic() + extra > deadline:
            raise total.error(None)


def _give_back(limiter: RateLimiter, start: float) -> None:
    give_back = getattr(limiter, "give_back", None)
    if give_back is not None:
        give_back(start)


class RateLimitStep:
    """The rate-limit step of one decorated function; `limiter` may be swapped (by
    `@opmap`, for one shared by its worker processes).

    With `backpressure`, a failed attempt whose exception is a throttling answer (see
    `opero._policies.backpressure`) pauses `limiter` for every caller, at most
    `max_pause` seconds (the retry step's `max_delay`, the longest it obeys a
    Retry-After)."""

    __slots__ = ("backpressure", "limiter", "max_pause", "observer", "total")

    def __init__(
        self, limiter: RateLimiter, *, backpressure: bool = True, max_pause: float = 30.0
    ) -> None:
        self.limiter = limiter
        self.backpressure = backpressure
        self.max_pause = max_pause
        self.observer: Any = None  # an events.Observer: waits are events while it is on
        self.total: TotalTimeout | None = None  # the call's deadline, when it has one

    def wrap_sync(self, func: Any) -> Any:
        step = self

        def limited(*args: Any, **kwargs: Any) -> Any:
            observer = step.observer
            if observer is not None and observer.on:
                began = time.monotonic()
                wait_sync(step.limiter, step.total)
                step.report_wait(time.monotonic() - began)
            else:
                wait_sync(step.limiter, step.total)
            try:
                return func(*args, **kwargs)
            except Exception as exc:  # free until raised (zero-cost try)
                if step.backpressure:
                    step.throttled(exc)
                raise

        return limited

    def wrap_async(self, func: Any) -> Any:
        step = self

        async def limited(*args: Any, **kwargs: Any) -> Any:
            observer = step.observer
            if observer is not None and observer.on:
                began = time.monotonic()
                await wait_async(step.limiter, step.total)
                step.report_wait(time.monotonic() - began)
            else:
                await wait_async(step.limiter, step.total)
            try:
                return await func(*args, **kwargs)
            except Exception as exc:
                if step.backpressure:
                    await step.throttled_async(exc)
                raise

        return limited

    def throttled(self, exc: BaseException) -> None:
        """A failed attempt: if the server said to slow down, pause every caller."""
        from opero._policies.backpressure import throttle_pause  # the failure path only

        seconds = throttle_pause(exc, self.max_pause)
        pause = getattr(self.limiter, "pause", None)
        if seconds is not None and seconds > 0.0 and pause is not None and pause(seconds):
            self.report_pause(seconds, exc)

    async def throttled_async(self, exc: BaseException) -> None:
        if getattr(self.limiter, "blocking_io", False):  # Redis: off the event loop
            import asyncio

            await asyncio.to_thread(self.throttled, exc)
        else:
            self.throttled(exc)

    def report_wait(self, waited: float) -> None:
        """An observed attempt waited `waited` seconds for its turn (reported from 1 ms)."""
        if waited >= 0.001 and self.observer is not None:
            self.observer.emit(RATE_LIMIT_WAIT, current_call.get(), delay=waited)

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
