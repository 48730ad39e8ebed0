"""Build the call pipeline the validated options describe, around one function.

The pipeline of one call, outermost first: cache -> total timeout deadline -> (retry
budget deposit) -> fallback -> retry -> circuit breaker -> bulkhead -> rate limit ->
retry_if_result check -> attempt timeout -> the function. Each step exists only when its
option asks for it. This module only composes; each step's decisions live in its own
package (`opero._cache`, `opero._policies`, `opero._timeouts`). Both decorators and the
map workers (which build the pipeline again in a spawned process) call `decorate`.
"""

from __future__ import annotations

import functools
import inspect
import math
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from opero._cache.step import CacheInfo, build_cache_step
from opero._observe.events import NEVER_OBSERVED, Hook, Observer
from opero._pipeline.direct import Direct
from opero._pipeline.fallback import FallbackParameter
from opero._pipeline.observed import observed_attempts, observed_calls
from opero._pipeline.options import OperoOptions
from opero._pipeline.wrappers import (
    async_fallback_wrapper,
    async_wrapper,
    sync_fallback_wrapper,
    sync_wrapper,
)
from opero._policies.retry import RetryPolicy, retry_sync

if TYPE_CHECKING:
    from opero._policies.adaptive import Adaptation
    from opero._policies.budget import BudgetTracker
    from opero._policies.rate_limit import RateLimitStep
    from opero._results import Err, Ok
    from opero._timeouts.total import TotalTimeout

P = ParamSpec("P")
R = TypeVar("R")


# Options that ask for the cache as plainly as `cache=True`: they keep it on for a
# function annotated `-> None` too.
CACHE_OPTIONS = ("cache", "cache_ttl", "cache_key", "cache_backend", "cache_namespace")


def cache_asked_for(options: Any) -> bool:
    return any(name in options for name in CACHE_OPTIONS)


def options_for(
    decorator: str, func: Any, options: OperoOptions, cache_given: bool
) -> OperoOptions:
    """What only the function itself can tell, at decoration: a generator function is
    refused, and one annotated ``-> None`` (called for its side effects) is cached only
    when the user asked for the cache."""
    inner = _innermost(getattr(func, "__func__", func))
    if inspect.isgeneratorfunction(inner) or inspect.isasyncgenfunction(inner):
        raise TypeError(
            f"{decorator}() cannot wrap the generator function {display_name(inner)}: "
            "retries and the cache would see the generator object, not the items it "
            "yields (a failure while iterating would never be retried, and a cached "
            "generator is empty once consumed); decorate a function that returns the "
            "items as a list"
        )
    if options.cache and not cache_given and returns_none(inner):
        return options._replace(cache=False)
    return options


def returns_none(func: Any) -> bool:
    """Annotated ``-> None``: called for what it does, so a cache hit would skip that."""
    annotations = getattr(func, "__annotations__", None)
    if not isinstance(annotations, dict) or "return" not in annotations:
        return False
    annotation = annotations["return"]
    return annotation is None or annotation is type(None) or annotation == "None"


def decorate(
    func: Callable[P, R], options: OperoOptions, *, deadline: TotalTimeout | None = None
) -> Callable[P, R]:
    """Wrap `func` in the pipeline `options` describe (options already validated).

    `deadline`: a fallback function's, the call's own deadline (it is set as the call
    enters, so this pipeline only obeys it)."""
    if isinstance(func, classmethod | staticmethod):
        # `@opero` written above `@classmethod`/`@staticmethod`: wrap the function inside.
        inner = cast(Callable[P, R], func.__func__)
        return cast(Callable[P, R], type(func)(decorate(inner, options, deadline=deadline)))
    if not callable(func):
        raise TypeError(f"opero() decorates a function, got {func!r}")
    name = display_name(func)
    is_async = is_async_callable(func)
    total, budget = _call_policies(options, name)
    if deadline is not None:
        total = deadline
    fallback = None
    if options.arg_fallback:
        fallback = FallbackParameter(func, options.arg_fallback, name, options.hedge_after)
    observer = Observer(name, _hooks(options.on_event), stats=options.stats)
    attempt, extras = _attempt_steps(func, options, name, fallback, total, observer)
    # Two pipelines share every step and its state: the fast one, and the observed one
    # it diverts to (one attribute read per call) while anyone listens to its events.
    observed_policy = RetryPolicy(options, total, budget, observer)
    observed_attempt = observed_attempts(attempt, observer, is_async=is_async)
    observed = _retrying(observed_attempt, observed_policy, fallback, name, is_async=is_async)
    observer.pipeline = observed_calls(observed, observer, is_async=is_async)
    policy = RetryPolicy(options, total, budget)
    wrapper = _first_attempt(attempt, extras, policy, fallback, observer, is_async=is_async)
    if options.fallback:
        from opero._pipeline.chain import build_chain

        chain = build_chain(func, options, total, observer, is_async=is_async)
        wrapper = chain.wrap_async(wrapper) if is_async else chain.wrap_sync(wrapper)
    if total is not None and deadline is None:
        # The deadline is set as the call enters, before the first fallback value.
        wrapper = total.wrap_async(wrapper) if is_async else total.wrap_sync(wrapper)
    step = build_cache_step(func, options) if options.cache else None
    if step is not None:
        step.observer = observer
        observer.cached = True
        # The outermost step: a hit returns before fallback, retry or rate limit.
        wrapper = step.wrap_async(wrapper) if is_async else step.wrap_sync(wrapper)
    functools.update_wrapper(wrapper, func)
    # Nothing around a sync first attempt but the retries: @opmap may call `func` itself.
    alternates = options.fallback
    bare = attempt is func and not (is_async or fallback or budget or total or step or alternates)
    direct = Direct(func, functools.partial(retry_sync, policy, name, func), observer)
    extras["total"] = total
    _attach(wrapper, options, observer, step, extras, direct if bare else None)
    return cast(Callable[P, R], wrapper)


def _call_policies(
    options: OperoOptions, name: str
) -> tuple[TotalTimeout | None, BudgetTracker | None]:
    """The per-call policies: the deadline and the retry budget, if asked for. Their
    modules are imported only for the options that use them."""
    total = budget = None
    if options.total_timeout:
        from opero._timeouts.total import TotalTimeout

        total = TotalTimeout(options.total_timeout, name)
    if options.retry_budget:
        from opero._policies.budget import BudgetTracker, RetryBudget

        # build_options turned every budget into a RetryBudget.
        budget = BudgetTracker(cast(RetryBudget, options.retry_budget))
    return total, budget


def _first_attempt(
    attempt: Callable[..., Any],
    extras: dict[str, Any],
    policy: RetryPolicy,
    fallback: FallbackParameter | None,
    observer: Observer,
    *,
    is_async: bool,
) -> Callable[..., Any]:
    """The wrapper a call enters (under the deadline and the cache): the guard itself
    when there is one and no fallback step (one frame fewer), else the retry step."""
    guard = extras.get("guard")
    if guard is not None and fallback is None:
        from opero._pipeline.attempt_steps import WholeCall

        call = WholeCall(policy, observer.function, observer, attempt)
        guarded = extras["guarded"]
        wrap = guard.wrap_async if is_async else guard.wrap_sync
        return cast(Callable[..., Any], wrap(guarded, call))
    name = observer.function
    return _retrying(attempt, policy, fallback, name, is_async=is_async, divert=observer)


# What `_attach` sets on a decorated function (and `functools.wraps` copies onto a
# user's wrapper around one; opero._maps.start leaves those behind).
ATTACHED = (
    "__opero_direct__",
    "__opero_rate_limit__",
    "__opero_breakers__",
    "__opero_total__",
    "cache_clear",
    "cache_info",
    "stats",
    "reset_stats",
    "result",
    "__opero_observer__",
    "__opero_options__",
)


def _attach(
    wrapper: Any,
    options: OperoOptions,
    observer: Observer,
    step: Any,
    extras: dict[str, Any],
    direct: Direct | None,
) -> None:
    """The decorated function's public attributes, and what @opmap and tests look at."""
    wrapper.__opero_direct__ = direct
    wrapper.__opero_rate_limit__ = extras.get("rate_limit")
    wrapper.__opero_breakers__ = extras.get("breakers")
    wrapper.__opero_total__ = extras.get("total")  # the TotalTimeout, for tests
    wrapper.cache_clear = step.clear if step else _no_cache_clear
    wrapper.cache_info = step.info if step else _no_cache_info
    wrapper.stats = observer.stats
    wrapper.reset_stats = observer.reset_stats
    wrapper.result = as_result(wrapper)
    wrapper.__opero_observer__ = observer
    # How to build it again in a worker process that cannot import it (spawn, clusters).
    wrapper.__opero_options__ = options
    _WRAPPERS.add(wrapper)


# Every pipeline `decorate` made: `functools.wraps` copies their attributes onto a user's
# own wrapper, so only this tells one of ours (see opero._maps.start).
_WRAPPERS: weakref.WeakSet[Any] = weakref.WeakSet()


def made_by_decorate(obj: Any) -> bool:
    try:
        return obj in _WRAPPERS
    except TypeError:  # not weak-referenceable: not ours
        return False


def _attempt_steps(
    func: Callable[..., Any],
    options: OperoOptions,
    name: str,
    fallback: FallbackParameter | None,
    total: TotalTimeout | None,
    observer: Observer,
) -> tuple[Callable[..., Any], dict[str, Any]]:
    """One attempt, innermost step first: attempt timeout, rate limit, then the guard
    (circuit breaker, bulkhead, retry_if_result check in one frame, see
    `opero._pipeline.attempt_steps`). Returns it with the steps tests may look at."""
    is_async = is_async_callable(func)
    attempt: Callable[..., Any] = func
    extras: dict[str, Any] = {}
    steps: list[Any] = []
    if options.timeout is not None or total is not None:
        from opero._timeouts.attempt import AttemptTimeout

        steps.append(AttemptTimeout(options.timeout, total, name, options.timeout_mode))
    if options.rate_limit is not None:
        # Every real attempt (retries, fallback values) takes a token.
        extras["rate_limit"] = build_rate_limit_step(func, options)
        extras["rate_limit"].total = total  # a start past the deadline fails at once
        extras["rate_limit"].observer = observer
        steps.append(extras["rate_limit"])
    breakers = bulkhead = check = None
    if options.circuit_breaker:  # a CircuitBreakerOptions once validated
        from opero._policies.breaker import BreakerSet, CircuitBreakerOptions

        breakers = extras["breakers"] = BreakerSet(
            cast(CircuitBreakerOptions, options.circuit_breaker), name
        )
        breakers.listener = observer.breaker_changed
    if options.max_concurrency is not None:
        from opero._policies.bulkhead import Bulkhead

        bulkhead = Bulkhead(options.max_concurrency, options.max_concurrency_wait, name)
    if options.retry_if_result is not None:
        from opero._pipeline.attempt_steps import ResultCheck

        check = ResultCheck(options.retry_if_result, name)
    for step in steps:
        attempt = step.wrap_async(attempt) if is_async else step.wrap_sync(attempt)
    if breakers is not None or bulkhead is not None or check is not None:
        from opero._pipeline.attempt_steps import Guard

        # Outermost, and kept with the attempt it guards: without a fallback step,
        # `decorate` makes it the call's wrapper (`WholeCall`).
        extras["guard"] = guard = Guard(breakers, fallback, bulkhead, check)
        extras["guarded"] = attempt
        attempt = guard.wrap_async(attempt) if is_async else guard.wrap_sync(attempt)
    return attempt, extras


def _retrying(
    attempt: Callable[..., Any],
    policy: RetryPolicy,
    fallback: FallbackParameter | None,
    name: str,
    *,
    is_async: bool,
    divert: Observer = NEVER_OBSERVED,
) -> Callable[..., Any]:
    """The fallback and retry steps around one attempt, in the sync or async form.

    Always present, so the check whether the call is observed lives here: while
    `divert.on`, the call goes to `divert.pipeline`, which emits events."""
    if is_async:
        async_attempt = cast(Callable[..., Awaitable[Any]], attempt)
        if fallback is None:
            return async_wrapper(async_attempt, policy, name, divert)
        return async_fallback_wrapper(async_attempt, policy, fallback, divert)
    if fallback is None:
        return sync_wrapper(attempt, policy, name, divert)
    return sync_fallback_wrapper(attempt, policy, fallback, divert)


def _innermost(func: Callable[..., Any]) -> Callable[..., Any]:
    while isinstance(func, functools.partial):
        func = func.func
    return func


def display_name(func: Callable[..., Any]) -> str:
    # For logs and error messages. Never repr(): a partial's or a dataclass's repr shows
    # the arguments it holds, and those are often API keys.
    inner = _innermost(func)
    return getattr(inner, "__qualname__", None) or type(inner).__qualname__


def is_async_callable(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    # A callable object whose __call__ is `async def`, possibly inside partials.
    inner = _innermost(func)
    call = getattr(type(inner), "__call__", None)  # noqa: B004 - the class's, not callable()
    return not inspect.isroutine(inner) and inspect.iscoroutinefunction(call)


def _no_cache_clear() -> None:
    """Empty this function's cache (it has none: ``cache=False``)."""


def _no_cache_info() -> CacheInfo:
    """This function's cache statistics (it has none: ``cache=False``)."""
    return CacheInfo(0, 0, 0)


def _hooks(on_event: object) -> tuple[Hook, ...]:
    if on_event is None:
        return ()
    if callable(on_event):
        return (cast(Hook, on_event),)
    return tuple(cast(Any, on_event))


def build_rate_limit_step(func: Any, options: OperoOptions) -> RateLimitStep:
    """The step `options.rate_limit` asks for (at decoration)."""
    from opero._policies.rate_limit import LocalRateLimiter, RateLimiter, RateLimitStep

    adaptation = _adaptation(options)
    rate = adaptation.initial_rate() if adaptation else float(cast(float, options.rate_limit))
    limiter: RateLimiter
    if options.rate_limit_backend == "redis":
        key = options.rate_limit_key
        if key is None:  # the same name in every process: the function's identity
            from opero._cache.keys import function_identity

            key = f"opero:{options.cache_namespace}:ratelimit:{function_identity(func)}"
        from opero._policies.rate_limit_redis import RedisRateLimiter

        limiter = RedisRateLimiter(rate, key, adaptation=adaptation, burst=options.rate_limit_burst)
    else:
        limiter = LocalRateLimiter(rate, adaptation, options.rate_limit_burst)
    # A pause lasts at most as long as the retry step obeys a Retry-After.
    backpressure = options.rate_limit_backpressure
    return RateLimitStep(limiter, backpressure=backpressure, max_pause=options.max_delay)


def as_result(call: Callable[..., Any]) -> Callable[..., Any]:
    """`call` returning `Ok(result)` or `Err(exception)` instead of raising (``fn.result``).
    Only Exceptions become values: a KeyboardInterrupt or a cancellation propagates."""
    from opero._results import Err, Ok

    if is_async_callable(call):

        async def async_result(*args: Any, **kwargs: Any) -> Ok[Any] | Err:
            try:
                return Ok(await call(*args, **kwargs))
            except Exception as exc:
                return Err(exc)

        return async_result

    def result(*args: Any, **kwargs: Any) -> Ok[Any] | Err:
        try:
            return Ok(call(*args, **kwargs))
        except Exception as exc:
            return Err(exc)

    return result


def _adaptation(options: OperoOptions) -> Adaptation | None:
    """How the limit adapts: "auto" from slow start up to `rate_limit_max`; a fixed rate
    cut by throttling answers and growing back to itself, while backpressure is on."""
    if not options.rate_limit_backpressure:
        return None
    from opero._policies.adaptive import Adaptation

    if options.rate_limit == "auto":
        ceiling = options.rate_limit_max
        return Adaptation(math.inf if ceiling is None else float(ceiling))
    return Adaptation(float(cast(float, options.rate_limit)), found=True)
