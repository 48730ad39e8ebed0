"""The adaptive rate of a Redis-backed limit (see `opero._policies.adaptive`), in Lua.

The curve's two numbers (``w``: w_max, ``t``: its origin, on Redis's clock in µs) live
in the hash ``<key>:curve``, shared by every process on the key. The take step reads
them and answers with the time since the origin, so each client computes the rate
itself (the curve is a pure function of them) and passes the interval to its next step;
while no reservation is ahead, it moves the origin on (an idle limit does not grow).
The release step counts releases per second of Redis's clock in ``<key>:n``; the cut
reads what the last second released from it, atomically with the one-cut-per-round
check, so two processes throttled at once cut once.
"""

from __future__ import annotations

from opero._policies.rate_limit_redis import (
    INTERVAL_NOW_LUA,
    NOW_LUA,
    RELEASE_READY_LUA,
    TAKE_BURST_LUA,
)

TAKE_LUA = (
    INTERVAL_NOW_LUA
    + """
local next_start = tonumber(redis.call('GET', KEYS[1]) or '0')
local curve = redis.call('HMGET', KEYS[2], 'w', 't', 's', 'k')
local w, t = tonumber(curve[1]), tonumber(curve[2])
if t == nil then
  w = tonumber(ARGV[2])
  if ARGV[3] == '1' then t = now - 1e12 else t = now end
elseif next_start < now - interval and curve[3] then
  t = t + (now - tonumber(curve[3]))
end
redis.call('HSET', KEYS[2], 'w', string.format('%.17g', w), 't', string.format('%.0f', t),
  's', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[2], 86400000)
local start = math.max(now, next_start)
local after = start + interval
local idle_ms = math.ceil((after - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX', idle_ms)
"""
    + TAKE_BURST_LUA
    + """
return {string.format('%.0f', start - now), string.format('%.17g', w),
  string.format('%.0f', now - t), curve[4] or ARGV[4]}
"""
)

RELEASE_LUA = (
    INTERVAL_NOW_LUA
    + RELEASE_READY_LUA
    + """
  local second = math.floor(now / 1000000)
  redis.call('HINCRBY', KEYS[2], second, 1)
  redis.call('HDEL', KEYS[2], second - 2)
  redis.call('PEXPIRE', KEYS[2], 5000)
  return 0
end
return early - now
"""
)

# ARGV: how long ago (µs) the throttled attempt was released, how long (µs) until the
# pause this client just set ends, the rate this client saw, the short and the long
# recovery (s) and how near w_max a cut confirms it (see adaptive.SAME). Returns the new
# w_max (the recovery is read back by the take step).
CUT_LUA = (
    NOW_LUA
    + """
local t = tonumber(redis.call('HGET', KEYS[1], 't') or '-1e18')
-- The throttled attempt is no longer counted as released (see adaptive.Adaptation.cut).
local sent = math.floor((now - tonumber(ARGV[1])) / 1000000)
if redis.call('HEXISTS', KEYS[2], sent) == 1 then redis.call('HINCRBY', KEYS[2], sent, -1) end
if now - tonumber(ARGV[1]) < t then return false end
local second = math.floor(now / 1000000)
local part = (now % 1000000) / 1000000
local this = tonumber(redis.call('HGET', KEYS[2], second) or '0')
local before = tonumber(redis.call('HGET', KEYS[2], second - 1) or '0')
local released = this + before * (1 - part)
local w = tonumber(ARGV[3])
if released > 0 then w = released end
local before = tonumber(redis.call('HGET', KEYS[1], 'w') or '0')
local k = ARGV[4]
if released > 0 and before > 0 and math.abs(w - before) <= tonumber(ARGV[6]) * before then
  k = ARGV[5]
end
redis.call('HSET', KEYS[1], 'w', string.format('%.17g', w),
  't', string.format('%.0f', now + tonumber(ARGV[2])), 's', string.format('%.0f', now), 'k', k)
redis.call('PEXPIRE', KEYS[1], 86400000)
return string.format('%.17g', w)
"""
)
