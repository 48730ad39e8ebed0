"""The wrappers a call enters first: the hot path of every decorated function.

The first attempt is a plain call, and the retry machinery is entered only after it
raised. Each wrapper first reads `divert.on`: while anyone listens to this function's
events, the call goes to the observed pipeline instead. `current_attempt()` knows these
wrappers' code as the frames of first attempts (see `opero._observe.attempts`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from opero._observe import attempts
from opero._observe.events import Observer
from opero._pipeline.fallback import (
    FallbackParameter,
    call_with_fallback_async,
    call_with_fallback_sync,
)
from opero._policies.retry import RetryPolicy, retry_async, retry_sync


def sync_wrapper(
    func: Callable[..., Any], policy: RetryPolicy, name: str, divert: Observer
) -> Callable[..., Any]:
    # With a retry budget, each call adds to it before its first attempt.
    record = policy.budget.record_call if policy.budget is not None else None

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if divert.on:
            return divert.pipeline(*args, **kwargs)
        if record is not None:
            record()
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            failure = exc
        return retry_sync(policy, name, func, args, kwargs, failure)

    return wrapper


def async_wrapper(
    func: Callable[..., Awaitable[Any]], policy: RetryPolicy, name: str, divert: Observer
) -> Callable[..., Any]:
    record = policy.budget.record_call if policy.budget is not None else None

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if divert.on:
            return await divert.pipeline(*args, **kwargs)
        if record is not None:
            record()
        try:
            return await func(*args, **kwargs)
        except Exception as exc:
            failure = exc
        return await retry_async(policy, name, func, args, kwargs, failure)

    return wrapper


def sync_fallback_wrapper(
    func: Callable[..., Any], policy: RetryPolicy, fallback: FallbackParameter, divert: Observer
) -> Callable[..., Any]:
    loop: Callable[..., Any] = call_with_fallback_sync
    if fallback.hedge is not None:  # chosen here, once: hedging is imported only if used
        from opero._pipeline.hedge import call_hedged_sync

        loop = call_hedged_sync

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if divert.on:
            return divert.pipeline(*args, **kwargs)
        return loop(fallback, policy, func, args, kwargs)

    return wrapper


def async_fallback_wrapper(
    func: Callable[..., Awaitable[Any]],
    policy: RetryPolicy,
    fallback: FallbackParameter,
    divert: Observer,
) -> Callable[..., Any]:
    loop: Callable[..., Awaitable[Any]] = call_with_fallback_async
    if fallback.hedge is not None:
        from opero._pipeline.hedge import call_hedged_async

        loop = call_hedged_async

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if divert.on:
            return await divert.pipeline(*args, **kwargs)
        return await loop(fallback, policy, func, args, kwargs)

    return wrapper


# current_attempt(): these wrappers make first attempts.
attempts.mark_nested(attempts.FIRST, sync_wrapper, "wrapper")
attempts.mark_nested(attempts.FIRST, async_wrapper, "wrapper")
