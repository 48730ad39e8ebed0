"""Waiting for a turn of a rate limit (`opero._policies.rate_limit`): threads with
`time.sleep`, tasks with `asyncio.sleep`, so one limit serves both; while an adaptive
rate moves, waiters follow it (see `follow`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opero._policies.adaptive import RETUNE
from opero._utils import testing_state

if TYPE_CHECKING:
    from opero._policies.rate_limit import RateLimiter
    from opero._timeouts.total import TotalTimeout

# How early a waiter wakes before its turn, to finish the wait by yielding: time.sleep
# overshoots by ~0.1 ms, asyncio timers by up to 1 ms (epoll's resolution). Sleeping
# right up to each turn would make every release late by that much, and since releases
# are kept one interval apart, the lateness would add up and cost throughput.
THREAD_EARLY = 0.0003
TASK_EARLY = 0.0015
# Waits shorter than this are polled without yielding (a high limit, e.g. 10^6/s, must
# add only about its own interval to a call, and a yield costs microseconds).
BUSY_BELOW = 0.00005


def wait_sync(limiter: RateLimiter, total: TotalTimeout | None = None) -> float:
    """Block the calling thread until its reserved start, then until it is released;
    returns when it was released (an adaptive limit tells answers to attempts sent
    before its last cut by it, and counts what went in the second before it: the
    reserved start can be half a second earlier, 16 waiters ahead at 33/s).

    A start past the call's deadline (`total`) fails at once; a reservation its waiter
    does not use (the deadline, Ctrl-C) is given back."""
    if testing_state.state.active:
        return 0.0
    start = limiter.take()
    coarse = start - time.monotonic() - THREAD_EARLY
    if coarse > 0.0:
        _check_deadline(limiter, start, total)
        try:
            if getattr(limiter, "moving", False):
                start = _follow_sync(limiter, start)
            else:
                time.sleep(coarse)
        except BaseException:
            _give_back(limiter, start)
            raise
    while (extra := limiter.release()) > 0.0:
        if extra > BUSY_BELOW:  # else poll at once: a syscall costs more than the wait
            _check_release(extra, total)
            # time.sleep(0) yields the GIL: other threads run while this one polls.
            time.sleep(extra - THREAD_EARLY if extra > 2 * THREAD_EARLY else 0)
    return time.monotonic()


async def wait_async(limiter: RateLimiter, total: TotalTimeout | None = None) -> float:
    """Wait, without blocking the event loop, for the reserved start and the release;
    as `wait_sync` for deadlines and the time returned, and a cancelled waiter gives
    its start back."""
    if testing_state.state.active:
        return 0.0
    import asyncio

    blocking = getattr(limiter, "blocking_io", False)
    start = await asyncio.to_thread(limiter.take) if blocking else limiter.take()
    coarse = start - time.monotonic() - TASK_EARLY
    if coarse > 0.0:
        _check_deadline(limiter, start, total)
        try:
            if getattr(limiter, "moving", False):
                start = await _follow_async(limiter, start)
            else:
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
    return time.monotonic()


def _follow_sync(limiter: Any, start: float) -> float:
    """Sleep toward `start` in steps of `RETUNE` while the rate moves, moving `start`
    with it: a turn taken at 5/s must not be waited for at that pace once the rate is
    40/s (nor one taken before a cut be released early). Returns the start reached."""
    interval = limiter.interval
    while (coarse := start - time.monotonic() - THREAD_EARLY) > 0.0:
        time.sleep(min(coarse, RETUNE))
        start, interval = follow(limiter, start, interval)
    return start


async def _follow_async(limiter: Any, start: float) -> float:
    """As `_follow_sync`, for a task."""
    import asyncio

    interval = limiter.interval
    while (coarse := start - time.monotonic() - TASK_EARLY) > 0.0:
        await asyncio.sleep(min(coarse, RETUNE))
        start, interval = follow(limiter, start, interval)
    return start


def follow(limiter: Any, start: float, interval: float) -> tuple[float, float]:
    """A start taken at `interval`, scaled to the limiter's interval now (from now or the
    end of the pause, as the limiter scales the rest of its schedule)."""
    current = limiter.interval
    if current == interval:
        return start, interval
    base = max(time.monotonic(), limiter.paused_until)
    return base + max(0.0, start - base) * current / interval, current


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
