"""The Redis store of a rate limit: every process on every machine using one key.

The same two steps as `opero._policies.rate_limit` (reserve a start, then release),
plus the pause of backpressure, each an atomic Lua script on Redis's own clock.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from opero._policies import adaptive
from opero._policies.rate_limit import LocalRateLimiter

if TYPE_CHECKING:
    from opero._policies.adaptive import Adaptation

# The opening of every script: writes replicated by effect (the time is read inside),
# `interval` from ARGV[1] (µs), and `now` from the server's clock (µs), so clients need
# not agree on the time.
NOW_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
"""
INTERVAL_NOW_LUA = NOW_LUA + "local interval = tonumber(ARGV[1])\n"

# The cut's recovery times and how near w_max a cut confirms it (see adaptive.SAME).
_RECOVERY = [repr(adaptive.RECOVERY_SHORT), repr(adaptive.RECOVERY), repr(adaptive.SAME)]

# A token bucket (`rate_limit_burst`): the last ARGV is how many turns beyond one may
# go early (0: none), the last key the pause's end, which no early turn goes before.
TAKE_BURST_LUA = """
local extra = tonumber(ARGV[#ARGV])
if extra > 0 then
  local paused = tonumber(redis.call('GET', KEYS[#KEYS]) or '0')
  start = math.max(now, start - extra * interval, paused)
end
"""
# The release step: `last` is the last release's turn, `ready` the next one's; with a
# burst it may go `extra` turns early (as `LocalRateLimiter.release`).
RELEASE_READY_LUA = """
local last = tonumber(redis.call('GET', KEYS[1]) or '-1e18')
local extra = tonumber(ARGV[#ARGV])
local ready = last + interval
local early = ready
if extra > 0 then
  early = math.max(ready - extra * interval, tonumber(redis.call('GET', KEYS[#KEYS]) or '0'))
end
if now >= early then
  local at = math.max(ready, now)
  redis.call('SET', KEYS[1], string.format('%.0f', at), 'PX',
    math.ceil((at - now + interval) / 1000) + 1000)
"""

_TAKE_LUA = (
    INTERVAL_NOW_LUA
    + """
local next_start = tonumber(redis.call('GET', KEYS[1]) or '0')
local start = math.max(now, next_start)
local after = start + interval
local idle_ms = math.ceil((after - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX', idle_ms)
"""
    + TAKE_BURST_LUA
    + "return start - now\n"
)

_RELEASE_LUA = (
    INTERVAL_NOW_LUA
    + RELEASE_READY_LUA
    + """
  return 0
end
return early - now
"""
)


# Both keys of one limit: no start before the pause ends, no release before it either;
# and the pause's end, for a burst (which must not go early into it).
_PAUSE_LUA = (
    INTERVAL_NOW_LUA
    + """
local ends = now + tonumber(ARGV[2])
local idle_ms = math.ceil((ends + interval - now) / 1000) + 1000
local paused = tonumber(redis.call('GET', KEYS[3]) or '0')
if paused < ends then
  redis.call('SET', KEYS[3], string.format('%.0f', ends), 'PX', idle_ms)
end
local next_start = tonumber(redis.call('GET', KEYS[1]) or '0')
if next_start < ends then
  redis.call('SET', KEYS[1], string.format('%.0f', ends), 'PX', idle_ms)
end
local last = tonumber(redis.call('GET', KEYS[2]) or '-1e18')
if last >= ends - interval then return 0 end
redis.call('SET', KEYS[2], string.format('%.0f', ends - interval), 'PX', idle_ms)
return 1
"""
)


class RedisRateLimiter:
    """One limit for every process on every machine that uses the same Redis key.

    Both steps are atomic Lua scripts on Redis's own clock (machines' clocks need not
    agree), on the keys ``<key>`` and ``<key>:last``, which expire once idle. Releases are
    at least one interval apart as Redis sees them; what a service sees also varies by
    each client's network latency. Resolution 1 µs, intervals rounded up. If Redis cannot
    be reached, a local limiter of the same rate takes over and a warning is logged once
    per outage. With an `adaptation`, the rate's curve is shared through Redis too (see
    `opero._policies.rate_limit_redis_adaptive`).
    """

    blocking_io = True  # async callers talk to Redis from a worker thread

    def __init__(
        self,
        rate: float,
        key: str,
        url: str | None = None,
        adaptation: Adaptation | None = None,
        burst: int = 1,
    ) -> None:
        import os

        from opero._utils.redis import DEFAULT_REDIS_URL, redis_client

        url = url or os.environ.get("OPERO_REDIS_URL") or DEFAULT_REDIS_URL
        self._client = redis_client(url)
        self.interval = 1.0 / rate
        self.adaptation = adaptation
        paused = f"{key}:paused"
        if adaptation is None:
            self.keys = [key, paused], [f"{key}:last", paused]
            take, release = _TAKE_LUA, _RELEASE_LUA
        else:
            from opero._policies import rate_limit_redis_adaptive as lua

            self.keys = [key, f"{key}:curve", paused], [f"{key}:last", f"{key}:n", paused]
            self.curve_keys = [f"{key}:curve", f"{key}:n"]
            take, release = lua.TAKE_LUA, lua.RELEASE_LUA
            self._cut = self._client.register_script(lua.CUT_LUA)
        self.pause_keys = [key, f"{key}:last", paused]
        self.extra = [burst - 1]  # the last argument of take and release
        self.args = [max(1, math.ceil(1_000_000 / rate))]
        self._take = self._client.register_script(take)
        self._release = self._client.register_script(release)
        self._pause = self._client.register_script(_PAUSE_LUA)
        self._fallback = LocalRateLimiter(rate, adaptation, burst)
        self._down = False

    def take(self) -> float:
        try:
            answer = self._take(keys=self.keys[0], args=self._take_args())
        except Exception as exc:
            self._note_outage(exc)
            return self._fallback.take()
        self._down = False
        if self.adaptation is None:
            wait_us = answer
        else:  # the curve as Redis keeps it: this client computes the rate from it
            wait_us, w_max, since_us, recovery = (float(value) for value in answer)
            self._set_rate(self.adaptation.rate_at(w_max, since_us / 1_000_000, recovery))
        # Redis answers with a wait on its own clock; the release step enforces spacing.
        return time.monotonic() + float(wait_us) / 1_000_000

    def _take_args(self) -> list[Any]:
        adaptation = self.adaptation
        if adaptation is None:
            return self.args + self.extra
        found = "1" if adaptation.found else "0"
        ceiling = repr(adaptation.ceiling if adaptation.found else 0.0)
        return [*self.args, ceiling, found, repr(adaptive.RECOVERY_SHORT), *self.extra]

    def _set_rate(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.args = [max(1, math.ceil(1_000_000 / rate))]

    @property
    def moving(self) -> bool:
        """Whether the rate moves (adaptive, below its ceiling): waiters follow it."""
        adaptation = self.adaptation
        return adaptation is not None and 1.0 / self.interval < adaptation.ceiling

    @property
    def paused_until(self) -> float:
        return self._fallback.paused_until  # the pause this process set, as it sees it

    def release(self) -> float:
        if self._down:
            return self._fallback.release()
        try:
            wait_us = self._release(keys=self.keys[1], args=self.args + self.extra)
        except Exception as exc:
            self._note_outage(exc)
            return self._fallback.release()
        return float(wait_us) / 1_000_000

    def pause(self, seconds: float) -> bool:
        """As `LocalRateLimiter.pause`, for every process using this key (the next start
        doubles as the pause's end: the take step never schedules before it)."""
        self._fallback.pause(seconds)  # holds this process if Redis goes away meanwhile
        try:
            args = [*self.args, math.ceil(seconds * 1e6)]
            return bool(self._pause(keys=self.pause_keys, args=args))
        except Exception as exc:
            self._note_outage(exc)
            return True

    def slow_down(self, start: float) -> float | None:
        """As `LocalRateLimiter.slow_down`, once for every process using this key."""
        adaptation = self.adaptation
        if adaptation is None:
            return None
        fallback = self._fallback.slow_down(start)  # kept in step for an outage
        now = time.monotonic()
        ago = math.ceil(max(0.0, now - start) * 1e6)
        pause = math.ceil(max(0.0, self.paused_until - now) * 1e6)
        try:
            w_max = self._cut(
                keys=self.curve_keys, args=[ago, pause, repr(1.0 / self.interval), *_RECOVERY]
            )
        except Exception as exc:
            self._note_outage(exc)
            return fallback
        if w_max is None:
            return None
        rate = adaptation.rate_at(max(adaptation.floor, float(w_max)), 0.0)
        self._set_rate(rate)
        return rate

    def _note_outage(self, exc: Exception) -> None:
        if not self._down:
            from opero._utils.logging import log

            log().warning(
                "rate limit: Redis failed with {}; limiting this process only",
                type(exc).__name__,
            )
        self._down = True
