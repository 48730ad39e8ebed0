"""Retry policy and its two drivers (sync and async) over tenacity.

The decorated function's first attempt is made by the caller directly; these drivers are
entered only after it failed, so the success path never touches tenacity (which is also
imported only then: it pulls in asyncio, too slow for `import opero`).
"""

from __future__ import annotations

import contextvars
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from opero._observe import attempts as attempts_registry
from opero._observe import events
from opero._observe.events import CallInfo, call_id, current_call
from opero._utils import testing_state
from opero._utils.logging import log
from opero.exceptions import (
    CircuitOpenError,
    DeadlineExceededError,
    ResultRejectedError,
    RetryPredicateError,
)

if TYPE_CHECKING:
    import tenacity

    from opero._observe.events import Observer
    from opero._pipeline.options import OperoOptions
    from opero._policies.budget import BudgetTracker
    from opero._timeouts.total import TotalTimeout

# Never retried whatever `retry_on` says: opero's own verdicts on this call.
_NEVER_RETRIED = (CircuitOpenError, DeadlineExceededError, RetryPredicateError)

R = TypeVar("R")

# Looked up at each failure, so tests (and a later testing mode) can replace them.
sync_sleep: Callable[[float], None] = time.sleep
async_sleep: Callable[[float], Awaitable[None]] | None = None  # asyncio.sleep, bound lazily


class RetryPolicy:
    """When to retry and how long to wait; the same decisions for sync and async calls."""

    __slots__ = (
        "backoff_factor",
        "budget",
        "jitter",
        "max_delay",
        "min_delay",
        "observer",
        "predicate",
        "retries",
        "total",
        "types",
    )

    def __init__(
        self,
        options: OperoOptions,
        total: TotalTimeout | None = None,
        budget: BudgetTracker | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.total = total
        self.budget = budget
        self.observer = observer  # set in the observed pipeline's policy only
        self.retries = options.retries
        self.min_delay = float(options.min_delay)
        self.max_delay = float(options.max_delay)
        self.backoff_factor = float(options.backoff_factor)
        self.jitter = options.jitter
        retry_on = options.retry_on
        self.types: tuple[type[BaseException], ...] | None = None
        self.predicate: Callable[[BaseException], bool] | None = None
        if isinstance(retry_on, type):
            self.types = (retry_on,)
        elif isinstance(retry_on, tuple):
            self.types = retry_on
        else:
            self.predicate = retry_on

    def base_delay(self, retry_number: int) -> float:
        """The un-jittered delay before retry `retry_number` (1 for the first retry)."""
        try:
            grown = self.min_delay * self.backoff_factor ** (retry_number - 1)
        except OverflowError:
            return self.max_delay
        return min(self.max_delay, grown)

    def delay(self, retry_number: int) -> float:
        """The delay before retry `retry_number`, jittered when asked, always within
        ``[min_delay, max_delay]``.

        Jitter draws uniformly from ``[max(min_delay, d/2), min(max_delay, 3d/2)]`` around
        the un-jittered delay ``d``: callers that failed together spread out, also at the
        first retry and at the ceiling, and the bounds still hold.
        """
        base = self.base_delay(retry_number)
        if not self.jitter or base == 0.0:
            return base
        low = max(self.min_delay, base * 0.5)
        high = min(self.max_delay, base * 1.5)
        return random.uniform(low, high)

    def allows_retry(self, exc: BaseException) -> bool:
        """Whether `exc` may be retried. BaseExceptions that are not Exceptions never are."""
        if not isinstance(exc, Exception) or isinstance(exc, _NEVER_RETRIED):
            return False
        if isinstance(exc, ResultRejectedError):
            return True  # retry_if_result asked for exactly this
        if self.types is not None:
            return isinstance(exc, self.types)
        assert self.predicate is not None
        try:
            return bool(self.predicate(exc))
        except Exception as bug:
            raise RetryPredicateError(exc, bug) from bug


class _Stop:
    """Why tenacity stopped one call's retries, when it was not the attempt count."""

    __slots__ = ("budget", "deadline")

    def __init__(self) -> None:
        self.deadline = False
        self.budget = False


def _retrying_options(policy: RetryPolicy, name: str, stopped: _Stop) -> dict[str, Any]:
    """tenacity's options for one failed call: our policy's decisions, as its hooks."""
    hooks = _TenacityHooks(policy, name, stopped)
    return {
        "stop": hooks.stop,
        "wait": hooks.wait,
        "retry": hooks.should_retry,
        "reraise": True,
        "before_sleep": hooks.before_sleep,
    }


class _TenacityHooks:
    """What tenacity asks while it retries one call, answered from the policy."""

    __slots__ = ("name", "policy", "stopped")

    def __init__(self, policy: RetryPolicy, name: str, stopped: _Stop) -> None:
        self.policy = policy
        self.name = name
        self.stopped = stopped

    def wait(self, state: tenacity.RetryCallState) -> float:
        from opero._policies.retry_after import server_delay  # on the failure path only

        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        asked = server_delay(exc) if exc is not None else None
        if asked is not None:  # the server said how long (Retry-After): obey, up to max_delay
            return min(self.policy.max_delay, asked)
        return self.policy.delay(state.attempt_number)

    def stop(self, state: tenacity.RetryCallState) -> bool:
        # tenacity computes the wait first, so the deadline check sees the coming sleep.
        policy = self.policy
        if state.attempt_number > policy.retries:
            return True
        cap = testing_state.state.max_attempts
        if cap is not None and state.attempt_number >= cap:
            return True
        if policy.total is not None:
            remaining = policy.total.remaining()
            if remaining is not None and state.upcoming_sleep >= remaining:
                self.stopped.deadline = True
                return True
        if policy.budget is not None and not policy.budget.try_retry():
            self.stopped.budget = True
            return True
        return False

    def before_sleep(self, state: tenacity.RetryCallState) -> None:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log().info(
            "{}: attempt {} failed with {}; retrying in {:.3f}s [call {}]",
            self.name,
            state.attempt_number,
            type(exc).__name__,
            delay,
            call_id(),
        )
        observer = self.policy.observer
        if observer is not None:
            info = current_call.get()
            observer.emit(events.RETRY_SCHEDULED, info, delay=delay, error=type(exc).__name__)

    def should_retry(self, state: tenacity.RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None or not outcome.failed:
            return False
        # The first failure was judged before tenacity was entered; ask the user's
        # predicate once per exception, never twice.
        if state.attempt_number == 1:
            return True
        exc = outcome.exception()
        return exc is not None and self.policy.allows_retry(exc)


def _gave_up(
    name: str, exc: Exception, attempts: int, policy: RetryPolicy, stopped: _Stop
) -> Exception:
    """What to raise once the retries ended in `exc`, logged and reported."""
    observer = policy.observer
    error_name = type(exc).__name__
    if stopped.deadline:
        assert policy.total is not None
        log().warning(
            "{}: total_timeout reached after {} attempts [call {}]", name, attempts, call_id()
        )
        if observer is not None:
            observer.emit(events.DEADLINE_EXCEEDED, current_call.get(), error=error_name)
        error: Exception = policy.total.error(attempts)
        error.__cause__ = exc
        return error
    if stopped.budget:
        log().warning(
            "{}: retry budget spent; not retrying {} after {} attempts [call {}]",
            name,
            error_name,
            attempts,
            call_id(),
        )
        if observer is not None:
            observer.emit(events.RETRY_BUDGET_EXHAUSTED, current_call.get(), error=error_name)
    elif attempts > policy.retries:
        log().warning(
            "{}: gave up after {} attempts; last error {} [call {}]",
            name,
            policy.retries + 1,
            error_name,
            call_id(),
        )
    if observer is not None:
        observer.emit(events.GAVE_UP, current_call.get(), error=error_name)
    return exc


def own_call(name: str) -> contextvars.Token[CallInfo | None] | None:
    """An unobserved call that fails gets a correlation id for its retries' log lines
    (and for what its later attempts start); an observed one has it already."""
    info = current_call.get()
    if info is not None and info.function == name:
        return None
    return current_call.set(CallInfo(name))


def retry_sync(
    policy: RetryPolicy,
    name: str,
    func: Callable[..., R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    failure: Exception,
) -> R:
    """Carry on after the first attempt of `func` raised `failure`: retry it as the policy
    says, and return its first result or re-raise its last exception itself."""
    if policy.retries == 0 or not policy.allows_retry(failure):
        if policy.observer is not None:
            policy.observer.emit(events.GAVE_UP, current_call.get(), error=type(failure).__name__)
        raise failure
    import tenacity

    stopped = _Stop()
    retrying = tenacity.Retrying(sleep=sync_sleep, **_retrying_options(policy, name, stopped))
    attempts = 0
    token = own_call(name)
    here = sys._getframe()  # current_attempt() finds the count by this loop's frame
    count = attempts_registry.retries_started(here)
    try:
        for attempt in retrying:
            attempts += 1
            count[0] = attempts
            with attempt:
                if attempts == 1:  # tenacity records the attempt already made, then waits
                    raise failure
                return func(*args, **kwargs)
    except Exception as exc:
        error = _gave_up(name, exc, attempts, policy, stopped)
        if error is exc:
            raise
        raise error from exc
    finally:
        attempts_registry.retries_ended(here)
        if token is not None:
            current_call.reset(token)
    raise AssertionError("unreachable: tenacity stops by returning or raising")


async def retry_async(
    policy: RetryPolicy,
    name: str,
    func: Callable[..., Awaitable[R]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    failure: Exception,
) -> R:
    """The async twin of `retry_sync`: waits with asyncio.sleep, so it never blocks the
    event loop and a cancellation stops it at once."""
    if policy.retries == 0 or not policy.allows_retry(failure):
        if policy.observer is not None:
            policy.observer.emit(events.GAVE_UP, current_call.get(), error=type(failure).__name__)
        raise failure
    import asyncio

    import tenacity

    stopped = _Stop()
    retrying = tenacity.AsyncRetrying(
        sleep=async_sleep or asyncio.sleep, **_retrying_options(policy, name, stopped)
    )
    attempts = 0
    token = own_call(name)
    here = sys._getframe()
    count = attempts_registry.retries_started(here)
    try:
        async for attempt in retrying:
            attempts += 1
            count[0] = attempts
            with attempt:
                if attempts == 1:
                    raise failure
                return await func(*args, **kwargs)
    except Exception as exc:
        error = _gave_up(name, exc, attempts, policy, stopped)
        if error is exc:
            raise
        raise error from exc
    finally:
        attempts_registry.retries_ended(here)
        if token is not None:
            current_call.reset(token)
    raise AssertionError("unreachable: tenacity stops by returning or raising")


attempts_registry.mark(attempts_registry.RETRY, retry_sync, retry_async)
