"""The validated, frozen option set of `@opero`. Defaults live here and nowhere else.

Everything is checked once, when the decorator is applied; the call path never looks at
an option by name again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

from opero.core.cache import BUILTIN_CACHE_BACKENDS, CacheBackend

if TYPE_CHECKING:  # imported when an option uses them: dataclasses is slow to import
    from opero.core.breaker import CircuitBreakerOptions
    from opero.core.budget import RetryBudget

RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]

RATE_LIMIT_BACKENDS = frozenset({"local", "redis"})


class OperoKwargs(TypedDict, total=False):
    """The keyword-only options of `@opero` (and, applied per item, of `@opmap`)."""

    cache: bool
    cache_ttl: float | None
    cache_backend: str | CacheBackend
    cache_key: Callable[..., object] | None
    cache_namespace: str
    cache_maxsize: int
    retries: int
    backoff_factor: float
    min_delay: float
    max_delay: float
    retry_on: RetryOn
    jitter: bool
    arg_fallback: str | None
    rate_limit: float | None
    rate_limit_backend: str
    rate_limit_key: str | None
    timeout: float | None
    total_timeout: float | None
    circuit_breaker: bool | CircuitBreakerOptions | None
    max_concurrency: int | None
    max_concurrency_wait: float | None
    retry_if_result: Callable[[Any], object] | None
    retry_budget: float | RetryBudget | None
    on_event: Callable[[Any], object] | Sequence[Callable[[Any], object]] | None
    stats: bool


class OperoOptions(NamedTuple):
    """One decorated function's options, validated. Immutable and picklable."""

    cache: bool = True
    cache_ttl: float | None = None
    cache_backend: str | CacheBackend = "memory"
    cache_key: Callable[..., object] | None = None
    cache_namespace: str = "opero"
    cache_maxsize: int = 1024
    retries: int = 3
    backoff_factor: float = 1.5
    min_delay: float = 0.1
    max_delay: float = 30.0
    retry_on: RetryOn = Exception
    jitter: bool = True
    arg_fallback: str | None = None
    rate_limit: float | None = None
    rate_limit_backend: str = "local"
    rate_limit_key: str | None = None
    timeout: float | None = None
    total_timeout: float | None = None
    # After build_options: a CircuitBreakerOptions, or None for no breaker.
    circuit_breaker: bool | CircuitBreakerOptions | None = None
    max_concurrency: int | None = None
    max_concurrency_wait: float | None = None
    retry_if_result: Callable[[Any], object] | None = None
    # After build_options: a RetryBudget, or None for no budget.
    retry_budget: float | RetryBudget | None = None
    on_event: Callable[[Any], object] | Sequence[Callable[[Any], object]] | None = None
    stats: bool = False


def build_options(decorator: str, given: dict[str, Any]) -> OperoOptions:
    """Check every option in `given` and return the frozen set, defaults filled in.

    Raises `TypeError` for an unknown option or a value of the wrong type and `ValueError`
    for a value out of range; the message names the decorator, the option and the value.
    """
    unknown = [name for name in given if name not in OperoOptions._fields]
    if unknown:
        raise TypeError(_unknown_option_message(decorator, unknown[0]))
    options = OperoOptions(**given)
    for name, check in _CHECKS.items():
        check(f"{decorator}(): {name}", getattr(options, name))
    if options.cache_backend == "twat" and options.cache_ttl is not None:
        raise ValueError(
            f"{decorator}(): cache_ttl ({options.cache_ttl!r}) is not supported by "
            "cache_backend='twat' (twat-cache's fcache keeps entries until cleared)"
        )
    if options.rate_limit_key is not None and options.rate_limit_backend != "redis":
        raise ValueError(
            f"{decorator}(): rate_limit_key ({options.rate_limit_key!r}) is only used with "
            "rate_limit_backend='redis'"
        )
    if options.rate_limit_backend == "redis" and options.rate_limit is None:
        raise ValueError(
            f"{decorator}(): rate_limit_backend='redis' needs a rate_limit (attempts per second)"
        )
    if options.max_concurrency_wait is not None and options.max_concurrency is None:
        raise ValueError(
            f"{decorator}(): max_concurrency_wait ({options.max_concurrency_wait!r}) needs "
            "max_concurrency (the most calls in flight at once)"
        )
    if options.max_delay < options.min_delay:
        raise ValueError(
            f"{decorator}(): max_delay ({options.max_delay!r}) must not be less than "
            f"min_delay ({options.min_delay!r}); max_delay defaults to 30.0, raise it too"
        )
    return _normalized(decorator, options)


def _normalized(decorator: str, options: OperoOptions) -> OperoOptions:
    """`circuit_breaker` and `retry_budget` in their one runtime form (or None)."""
    breaker = options.circuit_breaker
    if breaker is True:
        from opero.core.breaker import CircuitBreakerOptions

        breaker = CircuitBreakerOptions()
    elif breaker is False:
        breaker = None
    budget = options.retry_budget
    if isinstance(budget, int | float):
        from opero.core.budget import RetryBudget

        try:
            budget = RetryBudget(ratio=float(budget))
        except ValueError as exc:
            raise ValueError(f"{decorator}(): retry_budget: {exc}") from None
    return options._replace(circuit_breaker=breaker, retry_budget=budget)


def _unknown_option_message(decorator: str, name: str) -> str:
    import difflib

    message = f"{decorator}() got an unknown option {name!r}"
    close = difflib.get_close_matches(name, OperoOptions._fields, n=1)
    return f"{message}; did you mean {close[0]!r}?" if close else message


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


def _arg_fallback(where: str, value: object) -> None:
    # Whether it names a parameter is checked against the function's signature.
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{where} must be a parameter name (str) or None, got {value!r}")


# One attempt a year: lower limits would overflow the waits.
MIN_RATE_LIMIT = 1 / (366 * 24 * 3600)


def _rate_limit(where: str, value: object) -> None:
    if value is None:
        return
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
    from opero.core.breaker import CircuitBreakerOptions

    if isinstance(value, CircuitBreakerOptions):
        return
    raise TypeError(f"{where} must be True, False or a CircuitBreakerOptions(...), got {value!r}")


def _retry_budget(where: str, value: object) -> None:
    if value is None:
        return
    if _is_number(value):
        _number(where, value, low=0, low_inclusive=False)
        return
    from opero.core.budget import RetryBudget

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


def _on_event(where: str, value: object) -> None:
    if value is None or callable(value):
        return
    if isinstance(value, list | tuple) and value and all(callable(hook) for hook in value):
        return
    raise TypeError(
        f"{where} must be a callable taking an Event, or a non-empty list of them, got {value!r}"
    )


_CHECKS: dict[str, Callable[[str, Any], None]] = {
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
    "rate_limit": _rate_limit,
    "rate_limit_backend": _rate_limit_backend,
    "rate_limit_key": _non_empty_str_or_none,
    "timeout": _positive_or_none,
    "total_timeout": _positive_or_none,
    "circuit_breaker": _circuit_breaker,
    "max_concurrency": _int_at_least_or_none(1),
    "max_concurrency_wait": _non_negative_or_none,
    "retry_if_result": _callable_or_none,
    "retry_budget": _retry_budget,
    "on_event": _on_event,
    "stats": _bool,
}
