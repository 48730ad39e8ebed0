"""The checks behind `build_options`: one per option, each raising `TypeError` for a
value of the wrong type and `ValueError` for one out of range, naming the option."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from opero._cache.step import BUILTIN_CACHE_BACKENDS, CacheBackend

RATE_LIMIT_BACKENDS = frozenset({"local", "redis"})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bool(where: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{where} must be True or False, got {value!r}")


# The longest duration any option in seconds may give (about 31.7 years): longer ones
# cannot be scheduled everywhere (a lock wait of 9.3e9 s overflows time_t on Linux).
MAX_SECONDS = 1e9


def _number(where: str, value: object, *, low: float, low_inclusive: bool) -> None:
    if not _is_number(value):
        raise TypeError(f"{where} must be a number, got {value!r}")
    assert isinstance(value, int | float)
    bound_ok = value >= low if low_inclusive else value > low
    if math.isnan(value) or math.isinf(value) or not bound_ok:
        relation = ">=" if low_inclusive else ">"
        raise ValueError(f"{where} must be a finite number {relation} {low:g}, got {value!r}")


def _seconds(where: str, value: object, *, low_inclusive: bool) -> None:
    _number(where, value, low=0, low_inclusive=low_inclusive)
    assert isinstance(value, int | float)
    if value > MAX_SECONDS:
        raise ValueError(
            f"{where} must be at most {MAX_SECONDS:g} seconds (about 31 years), got {value!r}"
        )


def _positive_or_none(where: str, value: object) -> None:
    if value is not None:
        _seconds(where, value, low_inclusive=False)


def _non_negative(where: str, value: object) -> None:
    _seconds(where, value, low_inclusive=True)


def _backoff_factor(where: str, value: object) -> None:
    # A factor below 1 would shrink delays below min_delay, which is their floor.
    _number(where, value, low=1, low_inclusive=True)


def _int_at_least(low: int) -> Callable[[str, object], None]:
    def check(where: str, value: object) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{where} must be an int, got {value!r}")
        if value < low:
            raise ValueError(f"{where} must be >= {low}, got {value!r}")

    return check


def _cache_backend(where: str, value: object) -> None:
    if isinstance(value, str):
        if value not in BUILTIN_CACHE_BACKENDS:
            choices = ", ".join(sorted(BUILTIN_CACHE_BACKENDS))
            raise ValueError(f"{where} must be one of {choices} or a backend object, got {value!r}")
    elif isinstance(value, type):
        raise TypeError(f"{where} must be a backend instance, not the class {value.__name__}")
    elif not isinstance(value, CacheBackend):
        raise TypeError(
            f"{where} must be a backend name or an object with get, set, delete and clear "
            f"methods, got {value!r}"
        )


def _callable_or_none(where: str, value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{where} must be a callable or None, got {value!r}")


def check_cache_namespace(where: str, value: object) -> None:
    """A namespace is one plain folder name: it must never lead out of the cache root."""
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a str, got {value!r}")
    escapes = value in {"", ".", ".."} or any(sep in value for sep in ("/", "\\", "\0"))
    if escapes or value.startswith("~") or (len(value) > 1 and value[1] == ":"):
        raise ValueError(
            f"{where} must be a plain folder name (no '..', '/', '\\' or absolute path), "
            f"got {value!r}"
        )


def _exception_type(where: str, value: object) -> None:
    if not (isinstance(value, type) and issubclass(value, BaseException)):
        raise TypeError(f"{where} must contain exception types, got {value!r}")
    if not issubclass(value, Exception):
        raise ValueError(
            f"{where}: {value.__name__} is a BaseException that is not an Exception; "
            "opero never retries those"
        )


def _retry_on(where: str, value: object) -> None:
    if isinstance(value, tuple):
        if not value:
            raise ValueError(f"{where} must not be an empty tuple")
        for item in value:
            _exception_type(where, item)
    elif isinstance(value, type):
        _exception_type(where, value)
    elif not callable(value):
        raise TypeError(
            f"{where} must be an exception type, a tuple of them, or a predicate "
            f"(exc) -> bool, got {value!r}"
        )


def _fallback_functions(where: str, value: object) -> None:
    # Whether each takes the function's arguments is for the call to tell: sync or async
    # must match, which `decorate` checks.
    if value is None or callable(value):
        return
    if isinstance(value, list | tuple) and value and all(callable(f) for f in value):
        return
    raise TypeError(
        f"{where} must be a function, or a non-empty list of functions to try in order "
        f"after the function itself failed, got {value!r}"
    )


def _hedge_after(where: str, value: object) -> None:
    # Seconds before the next value starts beside a slow one; a list gives one delay per
    # value (the last one for the rest).
    if value is None:
        return
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(f"{where} must not be an empty list")
        for delay in value:
            _seconds(where, delay, low_inclusive=True)
        return
    _seconds(where, value, low_inclusive=True)


def _arg_fallback(where: str, value: object) -> None:
    # Whether it names a parameter is checked against the function's signature.
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{where} must be a parameter name (str) or None, got {value!r}")


# One attempt a year: lower limits would overflow the waits.
MIN_RATE_LIMIT = 1 / (366 * 24 * 3600)


def _rate_limit(where: str, value: object) -> None:
    if value is None or value == "auto":
        return
    if isinstance(value, str):
        raise TypeError(
            f"{where} must be a number (attempts per second), 'auto' or None, got {value!r}"
        )
    _rate(where, value)


def _rate_limit_max(where: str, value: object) -> None:
    if value is not None:
        _rate(where, value)


def _rate(where: str, value: object) -> None:
    _number(where, value, low=0, low_inclusive=False)
    assert isinstance(value, int | float)
    if value < MIN_RATE_LIMIT:
        raise ValueError(f"{where} must be at least one attempt a year (3.2e-08), got {value!r}")


def _non_empty_str_or_none(where: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a str or None, got {value!r}")
    if not value:
        raise ValueError(f"{where} must not be empty, got {value!r}")


def _rate_limit_backend(where: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a str, got {value!r}")
    if value not in RATE_LIMIT_BACKENDS:
        choices = ", ".join(sorted(RATE_LIMIT_BACKENDS))
        raise ValueError(f"{where} must be one of {choices}, got {value!r}")


def _circuit_breaker(where: str, value: object) -> None:
    if value is None or isinstance(value, bool):
        return
    from opero._policies.breaker import CircuitBreakerOptions

    if isinstance(value, CircuitBreakerOptions):
        return
    raise TypeError(f"{where} must be True, False or a CircuitBreakerOptions(...), got {value!r}")


def _retry_budget(where: str, value: object) -> None:
    if value is None:
        return
    if _is_number(value):
        _number(where, value, low=0, low_inclusive=False)
        return
    from opero._policies.budget import RetryBudget

    if not isinstance(value, RetryBudget):
        raise TypeError(
            f"{where} must be a fraction of calls (e.g. 0.2), a RetryBudget(...) or None, "
            f"got {value!r}"
        )


def _int_at_least_or_none(low: int) -> Callable[[str, object], None]:
    check_int = _int_at_least(low)

    def check(where: str, value: object) -> None:
        if value is not None:
            check_int(where, value)

    return check


def _non_negative_or_none(where: str, value: object) -> None:
    if value is not None:
        _non_negative(where, value)


TIMEOUT_MODES = ("abandon", "interrupt")


def _timeout_mode(where: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{where} must be 'abandon' or 'interrupt', got {value!r}")
    if value not in TIMEOUT_MODES:
        raise ValueError(f"{where} must be 'abandon' or 'interrupt', got {value!r}")


def _on_event(where: str, value: object) -> None:
    if value is None or callable(value):
        return
    if isinstance(value, list | tuple) and value and all(callable(hook) for hook in value):
        return
    raise TypeError(
        f"{where} must be a callable taking an Event, or a non-empty list of them, got {value!r}"
    )


CHECKS: dict[str, Callable[[str, Any], None]] = {
    "cache": _bool,
    "cache_ttl": _positive_or_none,
    "cache_backend": _cache_backend,
    "cache_key": _callable_or_none,
    "cache_namespace": check_cache_namespace,
    "cache_maxsize": _int_at_least(1),
    "retries": _int_at_least(0),
    "backoff_factor": _backoff_factor,
    "min_delay": _non_negative,
    "max_delay": _non_negative,
    "retry_on": _retry_on,
    "jitter": _bool,
    "arg_fallback": _arg_fallback,
    "fallback": _fallback_functions,
    "hedge_after": _hedge_after,
    "rate_limit": _rate_limit,
    "rate_limit_max": _rate_limit_max,
    "rate_limit_burst": _int_at_least(1),
    "rate_limit_backend": _rate_limit_backend,
    "rate_limit_key": _non_empty_str_or_none,
    "rate_limit_backpressure": _bool,
    "timeout": _positive_or_none,
    "total_timeout": _positive_or_none,
    "timeout_mode": _timeout_mode,
    "circuit_breaker": _circuit_breaker,
    "max_concurrency": _int_at_least_or_none(1),
    "max_concurrency_wait": _non_negative_or_none,
    "retry_if_result": _callable_or_none,
    "retry_budget": _retry_budget,
    "on_event": _on_event,
    "stats": _bool,
}
