"""Rate limits: at most `rate` attempts per second, spread evenly, with no burst.

Every limiter here hands out *start times* (a reservation scheme, the "generic cell rate
algorithm"): the next attempt may start at ``max(now, next_start)`` and moves
`next_start` one interval on. The first attempt goes at once; no two starts are closer
than ``1 / rate``; a caller that waits longer than asked (coarse sleeps, scheduling)
never lets a later one go early, so no one-second window ever holds more than
``rate + 1`` starts. Callers then wait in their own way: `time.sleep` for threads,
`asyncio.sleep` for tasks, so one limit serves threads, tasks and any number of event
loops at once.

Why not asynciolimiter for the async side: its limiters keep their timer on the event
loop that first waited and take no lock, so they cannot be shared by threads, and a
second `asyncio.run()` hangs forever in `wait()` (tests/test_rate_limit.py pins this).

Three stores for `next_start`: this process (`LocalRateLimiter`), all processes of one
machine through shared memory (`SharedRateLimiter`, what `@opmap` hands to its worker
processes), and every machine using one Redis (`RedisRateLimiter`, one atomic Lua step
with the server's clock).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Protocol

# Below this, a wait is spun rather than slept: sleeping 1 µs costs ~60 µs, and a high
# limit (10^6/s) must add only about its own interval to a call.
SPIN_BELOW = 0.0002


class RateLimiter(Protocol):
    """Hands out start times: `take()` returns the `time.monotonic()` at which the
    caller may start its attempt."""

    def take(self) -> float: ...


# Up to this rate, releases are also checked against a log of the last `rate + 1` ones.
WINDOW_MAX_RATE = 10_000


def window_size(rate: float) -> int:
    """How many releases a closed one-second window may hold: ``floor(rate) + 1``."""
    return math.floor(rate) + 1 if rate <= WINDOW_MAX_RATE else 0


def _check_window(log: Any, index: int, now: float) -> tuple[float, int]:
    # Reserved starts are spaced, but a caller that wakes late can end up next to the
    # following one; if `now` would put one start too many into a window, wait.
    oldest = log[index]
    if now - oldest > 1.0:
        log[index] = now
        return 0.0, (index + 1) % len(log)
    return oldest + 1.0 - now + 1e-6, index


class LocalRateLimiter:
    """One limit for every thread, task and event loop of this process."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next_start = 0.0
        self._lock = threading.Lock()
        self._log = [-math.inf] * window_size(rate)
        self._index = 0

    def take(self) -> float:
        with self._lock:
            start = max(time.monotonic(), self._next_start)
            self._next_start = start + self.interval
        return start

    def release(self) -> float:
        """At the start time: 0.0 to go now, else seconds to wait before asking again."""
        if not self._log:
            return 0.0
        with self._lock:
            wait, self._index = _check_window(self._log, self._index, time.monotonic())
        return wait


class SharedRateLimiter:
    """One limit for all processes of this machine that received this object.

    `next_start` lives in shared memory behind a process-shared lock; `time.monotonic`
    is the system-wide monotonic clock, the same in every process. Pass the object to
    worker processes when they start (as a `Process` argument or pool initializer).
    """

    def __init__(self, rate: float, context: Any = None) -> None:
        import multiprocessing

        ctx = context or multiprocessing.get_context()
        self.interval = 1.0 / rate
        self._next_start = ctx.Value("d", 0.0, lock=True)
        size = window_size(rate)
        self._log = ctx.Array("d", [-math.inf] * size, lock=False) if size else None
        self._index = ctx.Value("i", 0, lock=False)

    def take(self) -> float:
        with self._next_start.get_lock():
            start = max(time.monotonic(), self._next_start.value)
            self._next_start.value = start + self.interval
        return float(start)

    def release(self) -> float:
        """At the start time: 0.0 to go now, else seconds to wait before asking again."""
        if self._log is None:
            return 0.0
        with self._next_start.get_lock():
            wait, self._index.value = _check_window(self._log, self._index.value, time.monotonic())
        return wait


_GCRA_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local next_start = tonumber(redis.call('GET', KEYS[1]) or '0')
local start = math.max(now, next_start)
local after = start + interval
local idle_ms = math.ceil((after - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX', idle_ms)
return start - now
"""


class RedisRateLimiter:
    """One limit for every process on every machine that uses the same Redis key.

    One atomic Lua step per attempt reads Redis's own clock (so machines' clocks need not
    agree), takes the next start time and moves it on; the key expires once idle.
    Resolution: 1 µs. If Redis cannot be reached, the attempt is limited by a local
    limiter of the same rate instead and a warning is logged.
    """

    blocking_io = True  # async callers reserve from a worker thread

    def __init__(self, rate: float, key: str, url: str | None = None) -> None:
        import os

        import redis

        from opero.core.cache_backends import DEFAULT_REDIS_URL

        self.key = key
        self.interval_us = max(1, round(1_000_000 / rate))
        url = url or os.environ.get("OPERO_REDIS_URL") or DEFAULT_REDIS_URL
        self._client = redis.Redis.from_url(url)
        self._script = self._client.register_script(_GCRA_LUA)
        self._fallback = LocalRateLimiter(rate)

    def take(self) -> float:
        try:
            wait_us = self._script(keys=[self.key], args=[self.interval_us])
        except Exception as exc:
            from opero.utils.logging import log

            log().warning(
                "rate limit: Redis failed with {}; limiting this process only",
                type(exc).__name__,
            )
            return self._fallback.take()
        # Redis answers with a wait on its own clock; turn it into a start on ours.
        return time.monotonic() + float(wait_us) / 1_000_000


def wait_sync(limiter: RateLimiter) -> None:
    """Block the calling thread until its reserved start time (and its window allows)."""
    start = limiter.take()
    delay = start - time.monotonic()
    if delay >= SPIN_BELOW:
        time.sleep(delay)
    elif delay > 0.0:
        _spin(start_of=start)
    release = getattr(limiter, "release", None)
    while release is not None and (extra := release()) > 0.0:
        time.sleep(extra)


async def wait_async(limiter: RateLimiter) -> None:
    """Wait, without blocking the event loop, until the reserved start time."""
    import asyncio

    if getattr(limiter, "blocking_io", False):
        start = await asyncio.to_thread(limiter.take)
    else:
        start = limiter.take()
    delay = start - time.monotonic()
    if delay >= SPIN_BELOW:
        await asyncio.sleep(delay)
    elif delay > 0.0:
        _spin(start_of=start)  # shorter than one turn of the loop
    release = getattr(limiter, "release", None)
    # A wait until a point in time, not for an event: sleeping is the right tool.
    while release is not None and (extra := release()) > 0.0:  # noqa: ASYNC110
        await asyncio.sleep(extra)


def _spin(start_of: float) -> None:
    while time.monotonic() < start_of:
        pass


class RateLimitStep:
    """The rate-limit step of one decorated function; `limiter` may be swapped (by
    `@opmap`, for one shared by its worker processes)."""

    __slots__ = ("limiter",)

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def wrap_sync(self, func: Any) -> Any:
        step = self

        def limited(*args: Any, **kwargs: Any) -> Any:
            wait_sync(step.limiter)
            return func(*args, **kwargs)

        return limited

    def wrap_async(self, func: Any) -> Any:
        step = self

        async def limited(*args: Any, **kwargs: Any) -> Any:
            await wait_async(step.limiter)
            return await func(*args, **kwargs)

        return limited


def build_rate_limit_step(func: Any, options: Any) -> RateLimitStep:
    """The step `options.rate_limit` asks for (at decoration)."""
    rate = float(options.rate_limit)
    if options.rate_limit_backend == "redis":
        key = options.rate_limit_key
        if key is None:  # the same name in every process: the function's identity
            from opero.core.cache_keys import function_identity

            key = f"opero:{options.cache_namespace}:ratelimit:{function_identity(func)}"
        return RateLimitStep(RedisRateLimiter(rate, key))
    return RateLimitStep(LocalRateLimiter(rate))
