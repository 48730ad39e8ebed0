"""The delay a server asked for before the next attempt, read off an exception.

A server that answers 429 (Too Many Requests) or 503 (Service Unavailable) often says
how long to wait in a ``Retry-After`` header (RFC 9110, section 10.2.3): either
delta-seconds (``"120"``) or an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``). Waiting
that long, rather than our own backoff, is both politer and quicker to succeed.

`server_delay` looks in two places, in order:

1. an attribute ``retry_after`` on the exception, as many client libraries and user
   exceptions carry it: seconds (int or float), a `datetime.timedelta`, or a string read
   like the header;
2. ``exc.response.headers["Retry-After"]``, as on httpx's ``HTTPStatusError`` and
   requests' ``HTTPError``, or ``exc.headers["Retry-After"]`` when there is no
   ``response`` (aiohttp's ``ClientResponseError``), when the attribute is missing or
   unusable.

It runs while another exception is being handled, so it never raises: anything
missing, malformed, negative, NaN or infinite gives None, and so does an attribute
that raises on access (an ``Exception``; ``KeyboardInterrupt`` and the like still
propagate). When none of these attributes is there it costs three `getattr` calls.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

__all__ = ["server_delay"]

# delta-seconds is 1*DIGIT; a decimal fraction is accepted too. ASCII digits only:
# `float()` would also take "1e3", "inf", "nan", "1_0" and non-ASCII digits.
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")

_HEADER_NAMES = ("Retry-After", "retry-after")


def server_delay(exc: BaseException, *, now: Callable[[], datetime] | None = None) -> float | None:
    """The seconds `exc` says the server asked to wait, or None if it says nothing usable.

    `now` returns the current time for HTTP-dates (default: `datetime.now(UTC)`); a
    naive result is taken as UTC. A date in the past gives 0.0.
    """
    try:
        value = getattr(exc, "retry_after", None)
        if value is not None:
            delay = _from_value(value, now)
            if delay is not None:
                return delay
    except Exception:
        pass  # an unusable attribute: the header may still say
    try:
        response = getattr(exc, "response", None)
        # aiohttp's ClientResponseError has no response, but the headers themselves.
        holder = exc if response is None else response
        headers = getattr(holder, "headers", None)
        if headers is None:
            return None
        for name in _HEADER_NAMES:
            header = headers.get(name)
            if header is not None:
                return _from_header(header, now)
    except Exception:
        return None
    return None


def _from_value(value: object, now: Callable[[], datetime] | None) -> float | None:
    """Seconds from a ``retry_after`` attribute: a number, a timedelta or a header string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _finite_non_negative(float(value))
    if isinstance(value, timedelta):
        return _finite_non_negative(value.total_seconds())
    if isinstance(value, str | bytes):
        return _from_header(value, now)
    return None


def _from_header(value: object, now: Callable[[], datetime] | None) -> float | None:
    """Seconds from a ``Retry-After`` value: delta-seconds or an HTTP-date."""
    from email.utils import parsedate_to_datetime  # only for an HTTP date

    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return _finite_non_negative(float(text))
    # Not digits: an HTTP-date, or garbage (ValueError/TypeError, caught by the caller).
    when = parsedate_to_datetime(text)
    if when.tzinfo is None:  # "-0000" means UTC with no offset information
        when = when.replace(tzinfo=UTC)
    current = now() if now is not None else datetime.now(UTC)
    if current.tzinfo is None:
        current = current.replace(tzinfo=UTC)
    seconds = (when - current).total_seconds()
    return _finite_non_negative(max(seconds, 0.0))


def _finite_non_negative(seconds: float) -> float | None:
    if math.isfinite(seconds) and seconds >= 0.0:
        return seconds
    return None
