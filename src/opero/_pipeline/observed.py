"""The observed twin of a pipeline: the call and attempt layers that emit events.

Only an observed call runs these (see `opero._observe.events`); the fast pipeline has none
of them. The call layer makes the call's `CallInfo` (its correlation id) current for
everything inside, tasks the call starts included; the attempt layer numbers attempts
and times them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from opero._observe import attempts, events
from opero._observe.events import CallInfo, Observer, current_call
from opero.exceptions import (
    AttemptTimeoutError,
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
)

# An attempt that failed for one of opero's own reasons gets an event of its own too.
_SPECIFIC = {
    AttemptTimeoutError: events.ATTEMPT_TIMED_OUT,
    CircuitOpenError: events.BREAKER_REJECTED,
    BulkheadFullError: events.BULKHEAD_REJECTED,
    DeadlineExceededError: events.DEADLINE_EXCEEDED,
}


def observed_calls(
    pipeline: Callable[..., Any], observer: Observer, *, is_async: bool
) -> Callable[..., Any]:
    """`pipeline` (fallback and retry steps) as one observed call."""
    emit, name = observer.emit, observer.function
    perf_counter = time.perf_counter

    def started() -> tuple[CallInfo, Any]:
        info = CallInfo(name)
        token = current_call.set(info)
        emit(events.CALL_STARTED, info)
        if observer.cached:
            emit(events.CACHE_MISS, info)
        return info, token

    def failed(info: CallInfo, exc: BaseException) -> None:
        emit(
            events.CALL_FAILED,
            info,
            error=type(exc).__name__,
            elapsed=perf_counter() - info.started,
        )

    if is_async:
        async_pipeline = pipeline

        async def async_call(*args: Any, **kwargs: Any) -> Any:
            info, token = started()
            try:
                result = await async_pipeline(*args, **kwargs)
            except BaseException as exc:
                failed(info, exc)
                raise
            finally:
                current_call.reset(token)
            emit(events.CALL_SUCCEEDED, info, elapsed=perf_counter() - info.started)
            return result

        return async_call

    def call(*args: Any, **kwargs: Any) -> Any:
        info, token = started()
        try:
            result = pipeline(*args, **kwargs)
        except BaseException as exc:
            failed(info, exc)
            raise
        finally:
            current_call.reset(token)
        emit(events.CALL_SUCCEEDED, info, elapsed=perf_counter() - info.started)
        return result

    return call


def observed_attempts(
    attempt: Callable[..., Any], observer: Observer, *, is_async: bool
) -> Callable[..., Any]:
    """`attempt` (the per-attempt steps) numbered, timed and reported."""
    emit = observer.emit
    perf_counter = time.perf_counter

    def started() -> CallInfo | None:
        info = current_call.get()
        if info is not None:
            info.attempt += 1
        emit(events.ATTEMPT_STARTED, info)
        return info

    def failed(info: CallInfo | None, exc: BaseException, began: float) -> None:
        error = type(exc).__name__
        elapsed = perf_counter() - began
        emit(events.ATTEMPT_FAILED, info, error=error, elapsed=elapsed)
        specific = _SPECIFIC.get(type(exc))
        if specific is not None:
            emit(specific, info, error=error, elapsed=elapsed)

    if is_async:
        async_attempt: Callable[..., Awaitable[Any]] = attempt

        async def async_observed(*args: Any, **kwargs: Any) -> Any:
            info = started()
            began = perf_counter()
            try:
                result = await async_attempt(*args, **kwargs)
            except BaseException as exc:
                failed(info, exc, began)
                raise
            emit(events.ATTEMPT_SUCCEEDED, info, elapsed=perf_counter() - began)
            return result

        return async_observed

    def observed(*args: Any, **kwargs: Any) -> Any:
        info = started()
        began = perf_counter()
        try:
            result = attempt(*args, **kwargs)
        except BaseException as exc:
            failed(info, exc, began)
            raise
        emit(events.ATTEMPT_SUCCEEDED, info, elapsed=perf_counter() - began)
        return result

    return observed


# current_attempt(): the observed attempt layer calls attempts (see the guard's rule).
attempts.mark_nested(attempts.CALLER, observed_attempts, "observed")
attempts.mark_nested(attempts.CALLER, observed_attempts, "async_observed")
