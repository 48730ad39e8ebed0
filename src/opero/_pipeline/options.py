"""The validated, frozen option set of `@opero`. Defaults live here and nowhere else.

Everything is checked once, when the decorator is applied; the call path never looks at
an option by name again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypedDict

from opero._cache.step import CacheBackend
from opero._pipeline.option_checks import CHECKS, MAX_SECONDS, check_cache_namespace

if TYPE_CHECKING:  # imported when an option uses them: dataclasses is slow to import
    from opero._policies.breaker import CircuitBreakerOptions
    from opero._policies.budget import RetryBudget

RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


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
    fallback: Callable[..., Any] | Sequence[Callable[..., Any]] | None
    hedge_after: float | Sequence[float] | None
    rate_limit: float | str | None
    rate_limit_max: float | None
    rate_limit_burst: int
    rate_limit_backend: str
    rate_limit_key: str | None
    rate_limit_backpressure: bool
    timeout: float | None
    total_timeout: float | None
    timeout_mode: Literal["abandon", "interrupt"]
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
    # After build_options: a tuple of functions, or None.
    fallback: Callable[..., Any] | Sequence[Callable[..., Any]] | None = None
    # After build_options: seconds, a tuple of them, or None.
    hedge_after: float | Sequence[float] | None = None
    # A number of attempts per second, or "auto": found from the server's answers.
    rate_limit: float | str | None = None
    rate_limit_max: float | None = None  # the ceiling of rate_limit="auto"
    rate_limit_burst: int = 1  # attempts that may go at once (a token bucket); 1: none
    rate_limit_backend: str = "local"
    rate_limit_key: str | None = None
    # A 429 (or 503 with Retry-After) pauses the limit for every caller.
    rate_limit_backpressure: bool = True
    timeout: float | None = None
    total_timeout: float | None = None
    # How a sync attempt is cut at its timeout: "abandon" (hand it to a helper thread,
    # left running) or "interrupt" (run it in place, raise inside it where SIGALRM can).
    timeout_mode: Literal["abandon", "interrupt"] = "abandon"
    # After build_options: a CircuitBreakerOptions, or None for no breaker.
    circuit_breaker: bool | CircuitBreakerOptions | None = None
    max_concurrency: int | None = None
    max_concurrency_wait: float | None = None
    retry_if_result: Callable[[Any], object] | None = None
    # After build_options: a RetryBudget, or None for no budget.
    retry_budget: float | RetryBudget | None = None
    on_event: Callable[[Any], object] | Sequence[Callable[[Any], object]] | None = None
    stats: bool = False


def build_options(
    decorator: str, given: dict[str, Any], also_known: Sequence[str] = ()
) -> OperoOptions:
    """Check every option in `given` and return the frozen set, defaults filled in.

    Raises `TypeError` for an unknown option or a value of the wrong type and `ValueError`
    for a value out of range; the message names the decorator, the option and the value.
    """
    unknown = [name for name in given if name not in OperoOptions._fields]
    if unknown:
        raise TypeError(_unknown_option_message(decorator, unknown[0], also_known))
    options = OperoOptions(**given)
    for name, check in CHECKS.items():
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
    if "rate_limit_backpressure" in given and options.rate_limit is None:
        raise ValueError(
            f"{decorator}(): rate_limit_backpressure "
            f"({options.rate_limit_backpressure!r}) needs a rate_limit (attempts per second): "
            "it pauses that limit"
        )
    _check_adaptive(decorator, options)
    _check_burst(decorator, options, given)
    if options.rate_limit_backend == "redis" and options.rate_limit is None:
        raise ValueError(
            f"{decorator}(): rate_limit_backend='redis' needs a rate_limit (attempts per second)"
        )
    if "timeout_mode" in given and options.timeout is None and options.total_timeout is None:
        raise ValueError(
            f"{decorator}(): timeout_mode ({options.timeout_mode!r}) says how a timed-out "
            "attempt is cut: it needs timeout or total_timeout"
        )
    if options.max_concurrency_wait is not None and options.max_concurrency is None:
        raise ValueError(
            f"{decorator}(): max_concurrency_wait ({options.max_concurrency_wait!r}) needs "
            "max_concurrency (the most calls in flight at once)"
        )
    if options.hedge_after is not None and options.arg_fallback is None:
        raise ValueError(
            f"{decorator}(): hedge_after ({options.hedge_after!r}) starts the next "
            "arg_fallback value beside a slow one: it needs arg_fallback"
        )
    if options.max_delay < options.min_delay:
        raise ValueError(
            f"{decorator}(): max_delay ({options.max_delay!r}) must not be less than "
            f"min_delay ({options.min_delay!r}); max_delay defaults to 30.0, raise it too"
        )
    return _normalized(decorator, options)


def _check_adaptive(decorator: str, options: OperoOptions) -> None:
    """`rate_limit="auto"` learns from throttling answers: it needs backpressure on, and
    only it has a ceiling apart from its rate."""
    if options.rate_limit_max is not None and options.rate_limit != "auto":
        raise ValueError(
            f"{decorator}(): rate_limit_max ({options.rate_limit_max!r}) is the ceiling of "
            f"rate_limit='auto', got rate_limit={options.rate_limit!r} (a fixed rate_limit "
            "is its own ceiling)"
        )
    if options.rate_limit == "auto" and not options.rate_limit_backpressure:
        raise ValueError(
            f"{decorator}(): rate_limit='auto' finds the rate from throttling answers, "
            "which rate_limit_backpressure=False ignores"
        )


def _check_burst(decorator: str, options: OperoOptions, given: dict[str, Any]) -> None:
    if "rate_limit_burst" in given and options.rate_limit is None:
        raise ValueError(
            f"{decorator}(): rate_limit_burst ({options.rate_limit_burst!r}) needs a "
            "rate_limit (attempts per second): it is that limit's bucket"
        )


def _normalized(decorator: str, options: OperoOptions) -> OperoOptions:
    """`circuit_breaker` and `retry_budget` in their one runtime form (or None)."""
    breaker = options.circuit_breaker
    if breaker is True:
        from opero._policies.breaker import CircuitBreakerOptions

        breaker = CircuitBreakerOptions()
    elif breaker is False:
        breaker = None
    budget = options.retry_budget
    if isinstance(budget, int | float):
        from opero._policies.budget import RetryBudget

        try:
            budget = RetryBudget(ratio=float(budget))
        except ValueError as exc:
            raise ValueError(f"{decorator}(): retry_budget: {exc}") from None
    alternates = options.fallback
    if callable(alternates):
        alternates = (alternates,)
    elif alternates is not None:
        alternates = tuple(alternates)
    hedge = options.hedge_after
    if hedge is not None and not isinstance(hedge, int | float):
        hedge = tuple(float(delay) for delay in hedge)
    return options._replace(
        circuit_breaker=breaker, retry_budget=budget, fallback=alternates, hedge_after=hedge
    )


def _unknown_option_message(decorator: str, name: str, also_known: Sequence[str]) -> str:
    import difflib

    message = f"{decorator}() got an unknown option {name!r}"
    close = difflib.get_close_matches(name, [*OperoOptions._fields, *also_known], n=1)
    return f"{message}; did you mean {close[0]!r}?" if close else message


__all__ = ["MAX_SECONDS", "OperoKwargs", "OperoOptions", "build_options", "check_cache_namespace"]
