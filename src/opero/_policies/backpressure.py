"""Backpressure: a server that says "too many requests" pauses the whole rate limit.

Without it, a throttled attempt waits out ``Retry-After`` alone (the retry step obeys
it) while every other caller of the limit keeps sending at the full rate, into the same
exhausted quota. With it, the rate-limit step reads each failed attempt: an answer of
429 (Too Many Requests), or 503 (Service Unavailable) that carries ``Retry-After``,
pauses the limiter itself, so no caller of the limit — threads, tasks, event loops,
`@opmap` worker processes, every process on a Redis limit — is released until the pause
ends. After it, attempts resume evenly spaced at the limit's rate (no burst).

The status is read off the exception as client libraries carry it:
``exc.response.status_code`` (httpx's ``HTTPStatusError``, requests' ``HTTPError``),
``exc.status`` (aiohttp's ``ClientResponseError``) or ``exc.status_code`` (many SDKs and
user exceptions); the delay by `opero._policies.retry_after.server_delay`. A 503 without
``Retry-After`` says the service is down, not that we are too fast: no pause.
"""

from __future__ import annotations

from opero._policies.retry_after import server_delay

__all__ = ["DEFAULT_THROTTLE_PAUSE", "throttle_pause"]

TOO_MANY_REQUESTS = 429
SERVICE_UNAVAILABLE = 503

# A 429 without a usable Retry-After: pause for one second, the window most quotas are
# counted over (a shorter pause would mostly run into the same full window again).
DEFAULT_THROTTLE_PAUSE = 1.0


def throttle_pause(exc: BaseException, ceiling: float) -> float | None:
    """The seconds `exc` asks every caller to hold off (at most `ceiling`), or None when
    it is not a throttling answer. Never raises: it runs while `exc` propagates."""
    status = _status(exc)
    if status == TOO_MANY_REQUESTS:
        asked = server_delay(exc)
        return min(ceiling, DEFAULT_THROTTLE_PAUSE if asked is None else asked)
    if status == SERVICE_UNAVAILABLE:
        asked = server_delay(exc)
        return None if asked is None else min(ceiling, asked)
    return None


def _status(exc: BaseException) -> int | None:
    """The HTTP status `exc` carries, wherever its library keeps it."""
    try:
        response = getattr(exc, "response", None)
        for holder in (response, exc):
            if holder is None:
                continue
            for name in ("status_code", "status"):
                value = getattr(holder, name, None)
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
    except Exception:  # a property that raises: no status we can trust
        return None
    return None
