"""The guard around each attempt: circuit breaker, bulkhead and `retry_if_result`.

In the pipeline's order they are three steps around the rate limit (breaker, bulkhead,
then the rate limit and the attempt timeout, then the result check on what came back);
they run here in one frame, because each step is a function call and, for async
functions, a coroutine, and on the success path that is most of their cost. The rate
limit and the attempt timeout are the guarded function, so the order is kept: the result
check acts only after the call returned, when they have nothing left to do.

- **Breaker**: asked before the attempt, told the outcome after, never holding a lock
  during the call. With `arg_fallback`, each fallback value has its own breaker, found
  from the value the attempt is made with; an open one raises `CircuitOpenError`, which
  is never retried, so the fallback step moves to the next value without a call.
  Failures are exceptions of the attempt (a rejected result too) except opero's own
  load shedding and predicate bugs; a cancelled attempt counts as neither.
- **Bulkhead**: a slot is taken before the attempt and given back after it, whatever
  its outcome; no slot within `max_concurrency_wait` is `BulkheadFullError`.
- **Result check**: a result `retry_if_result` accepts becomes `ResultRejectedError`, an
  exception like any other to the breaker and to the retry step (which always retries it).

Without `arg_fallback`, the guard is also the call's wrapper (`WholeCall`): it makes the
first attempt in its own frame and hands a failure to the retry step, which retries the
guarded attempt alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, NamedTuple

from opero._observe import attempts
from opero._policies.breaker import CLOSED
from opero._policies.retry import retry_async, retry_sync
from opero.exceptions import BulkheadFullError, ResultRejectedError, RetryPredicateError

if TYPE_CHECKING:
    from opero._observe.events import Observer
    from opero._pipeline.fallback import FallbackParameter
    from opero._policies.breaker import Breaker, BreakerSet
    from opero._policies.bulkhead import Bulkhead
    from opero._policies.retry import RetryPolicy


# Our own load shedding and a bug in a predicate say nothing about the service.
_NOT_THE_SERVICE = (BulkheadFullError, RetryPredicateError)


def _report(breaker: Breaker, exc: BaseException) -> None:
    """Tell the breaker how the attempt failed: a failure of the service, or neither
    (a cancellation, a BaseException, opero's own load shedding or a predicate bug)."""
    if isinstance(exc, Exception) and not isinstance(exc, _NOT_THE_SERVICE):
        breaker.failure()
    else:
        breaker.release()


class ResultCheck:
    """`retry_if_result`: a result the predicate accepts is a failure to retry."""

    def __init__(self, predicate: Callable[[Any], object], name: str) -> None:
        self.predicate = predicate
        self.name = name

    def bug(self, bug: Exception) -> RetryPredicateError:
        """The error for a predicate that raised `bug` itself."""
        return RetryPredicateError(None, bug, option="retry_if_result")

    def rejection(self, result: Any) -> ResultRejectedError:
        """The error for a result the predicate rejected."""
        return ResultRejectedError(
            f"{self.name}(): retry_if_result rejected the result (a {type(result).__name__})",
            result,
        )


class Guard:
    """Whichever of breaker, bulkhead and result check are configured, in one step."""

    def __init__(
        self,
        breakers: BreakerSet | None,
        fallback: FallbackParameter | None,
        bulkhead: Bulkhead | None,
        check: ResultCheck | None,
    ) -> None:
        self.breakers = breakers
        self.fallback = fallback
        self.bulkhead = bulkhead
        self.check = check

    def breaker_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Breaker:
        """The breaker of the fallback value this attempt is made with."""
        assert self.breakers is not None
        assert self.fallback is not None
        value = self.fallback.current(args, kwargs)
        key: Hashable
        try:
            hash(value)
            key = (type(value), value)
        except TypeError:  # an unhashable value: its text stands for it (never logged)
            key = (type(value), repr(value))
        return self.breakers.get(key)

    def wait_for_slot(self, breaker: Breaker | None) -> None:
        """No free slot: wait for one as the bulkhead allows, or raise BulkheadFullError."""
        assert self.bulkhead is not None
        try:
            acquired = self.bulkhead.slots.acquire_sync(self.bulkhead.wait)
        except BaseException:  # e.g. Ctrl-C while queued: the probe slot goes back
            if breaker is not None:
                breaker.release()
            raise
        if not acquired:
            if breaker is not None:
                breaker.release()
            raise self.bulkhead.full()

    async def wait_for_slot_async(self, breaker: Breaker | None) -> None:
        """The same for a task."""
        assert self.bulkhead is not None
        try:
            acquired = await self.bulkhead.slots.acquire_async(self.bulkhead.wait)
        except BaseException:  # cancelled while queued: the probe slot goes back
            if breaker is not None:
                breaker.release()
            raise
        if not acquired:
            if breaker is not None:
                breaker.release()
            raise self.bulkhead.full()

    def _parts(self) -> tuple[Any, ...]:
        breakers, bulkhead, check = self.breakers, self.bulkhead, self.check
        single = breakers.get(None) if breakers is not None and self.fallback is None else None
        slots = bulkhead.slots if bulkhead is not None else None
        predicate = check.predicate if check is not None else None
        return breakers is not None, single, slots, predicate

    # The two attempts below are the hot path of every guarded call, unrolled on purpose:
    # the bulkhead's token deque and the result predicate are used directly, without a
    # method call each.

    def wrap_sync(
        self, func: Callable[..., Any], call: WholeCall | None = None
    ) -> Callable[..., Any]:
        guarded, single, slots, predicate = self._parts()
        find, wait_for_slot, check = self.breaker_for, self.wait_for_slot, self.check
        take = slots.tokens.pop if slots is not None else None
        put = slots.tokens.append if slots is not None else None
        waiters = slots.waiters if slots is not None else None
        policy, name, divert, again, record = _whole_call(call)

        def attempt(*args: Any, **kwargs: Any) -> Any:  # noqa: PLR0912 - unrolled
            if divert is not None and divert.on:
                return divert.pipeline(*args, **kwargs)
            if record is not None:
                record()
            try:
                breaker = None
                if guarded:
                    breaker = single or find(args, kwargs)
                    if breaker.state_code != CLOSED:  # open or half-open: ask it
                        breaker.before()
                if take is not None:
                    try:
                        take()
                    except IndexError:
                        wait_for_slot(breaker)
                try:
                    result = func(*args, **kwargs)
                    if predicate is not None:
                        assert check is not None
                        try:
                            rejected = predicate(result)
                        except Exception as bug:
                            raise check.bug(bug) from bug
                        if rejected:
                            raise check.rejection(result)
                except BaseException as exc:
                    if breaker is not None:
                        _report(breaker, exc)
                    raise
                finally:
                    if put is not None:
                        put(None)
                        if waiters:
                            slots.hand_over()
                if breaker is not None:
                    breaker.success()
                return result
            except Exception as exc:
                if policy is None:  # an attempt only: the retry step is outside
                    raise
                failure = exc
            return retry_sync(policy, name, again, args, kwargs, failure)

        return attempt

    def wrap_async(
        self, func: Callable[..., Awaitable[Any]], call: WholeCall | None = None
    ) -> Callable[..., Any]:
        guarded, single, slots, predicate = self._parts()
        find, wait_for_slot, check = self.breaker_for, self.wait_for_slot_async, self.check
        take = slots.tokens.pop if slots is not None else None
        put = slots.tokens.append if slots is not None else None
        waiters = slots.waiters if slots is not None else None
        policy, name, divert, again, record = _whole_call(call)

        async def attempt(*args: Any, **kwargs: Any) -> Any:  # noqa: PLR0912 - unrolled
            if divert is not None and divert.on:
                return await divert.pipeline(*args, **kwargs)
            if record is not None:
                record()
            try:
                breaker = None
                if guarded:
                    breaker = single or find(args, kwargs)
                    if breaker.state_code != CLOSED:  # open or half-open: ask it
                        breaker.before()
                if take is not None:
                    try:
                        take()
                    except IndexError:
                        await wait_for_slot(breaker)
                try:
                    result = await func(*args, **kwargs)
                    if predicate is not None:
                        assert check is not None
                        try:
                            rejected = predicate(result)
                        except Exception as bug:
                            raise check.bug(bug) from bug
                        if rejected:
                            raise check.rejection(result)
                except BaseException as exc:  # a cancellation is not the service's failure
                    if breaker is not None:
                        _report(breaker, exc)
                    raise
                finally:
                    if put is not None:
                        put(None)
                        if waiters:
                            slots.hand_over()
                if breaker is not None:
                    breaker.success()
                return result
            except Exception as exc:
                if policy is None:
                    raise
                failure = exc
            return await retry_async(policy, name, again, args, kwargs, failure)

        return attempt


class WholeCall(NamedTuple):
    """What turns the guard's attempt into the whole call when there is no fallback step:
    the observed pipeline's divert check, the retry budget's count, and the retry step
    after a failed first attempt, which retries `again` (the guarded attempt alone).

    The first attempt then runs in the wrapper's own frame: one function call (for async
    functions one coroutine) fewer on every successful call."""

    policy: RetryPolicy
    name: str
    divert: Observer
    again: Callable[..., Any]


def _whole_call(call: WholeCall | None) -> tuple[Any, ...]:
    if call is None:
        return None, None, None, None, None
    budget = call.policy.budget
    record = budget.record_call if budget is not None else None
    return call.policy, call.name, call.divert, call.again, record


attempts.mark_nested(attempts.GUARD, Guard.wrap_sync, "attempt")
attempts.mark_nested(attempts.GUARD, Guard.wrap_async, "attempt")
