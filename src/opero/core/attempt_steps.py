"""Two steps around each attempt: the circuit breaker, and the `retry_if_result` check.

The breaker step asks the breaker before the attempt and tells it the outcome after,
holding no lock during the call. With `arg_fallback`, each fallback value has its own
breaker, found from the value the attempt is made with; an open one raises
`CircuitOpenError`, which is never retried, so the fallback step moves to the next value
without calling the function.

The result check turns a result the predicate rejects into `ResultRejectedError`, an
exception like any other to the breaker (it counts as a failure) and to the retry step
(which always retries it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any

from opero.exceptions import BulkheadFullError, ResultRejectedError, RetryPredicateError

if TYPE_CHECKING:
    from opero.core.breaker import Breaker, BreakerSet
    from opero.core.fallback import FallbackParameter


# Our own load shedding and a bug in a predicate say nothing about the service.
_NOT_THE_SERVICE = (BulkheadFullError, RetryPredicateError)


class BreakerStep:
    """One breaker per function, or one per fallback value."""

    def __init__(self, breakers: BreakerSet, fallback: FallbackParameter | None) -> None:
        self.breakers = breakers
        self.fallback = fallback

    def breaker(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Breaker:
        """The breaker of the fallback value this attempt is made with."""
        assert self.fallback is not None
        value = self.fallback.current(args, kwargs)
        key: Hashable
        try:
            hash(value)
            key = (type(value), value)
        except TypeError:  # an unhashable value: its text stands for it (never logged)
            key = (type(value), repr(value))
        return self.breakers.get(key)

    def wrap_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        single = self.breakers.get(None) if self.fallback is None else None
        find = self.breaker

        def attempt(*args: Any, **kwargs: Any) -> Any:
            breaker = single or find(args, kwargs)
            breaker.before()
            try:
                result = func(*args, **kwargs)
            except _NOT_THE_SERVICE:
                breaker.release()
                raise
            except Exception:
                breaker.failure()
                raise
            except BaseException:
                breaker.release()
                raise
            breaker.success()
            return result

        return attempt

    def wrap_async(self, func: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        single = self.breakers.get(None) if self.fallback is None else None
        find = self.breaker

        async def attempt(*args: Any, **kwargs: Any) -> Any:
            breaker = single or find(args, kwargs)
            breaker.before()
            try:
                result = await func(*args, **kwargs)
            except _NOT_THE_SERVICE:
                breaker.release()
                raise
            except Exception:
                breaker.failure()
                raise
            except BaseException:  # cancellation is not the service's failure
                breaker.release()
                raise
            breaker.success()
            return result

        return attempt


class ResultCheck:
    """`retry_if_result`: a result the predicate accepts is a failure to retry."""

    def __init__(self, predicate: Callable[[Any], object], name: str) -> None:
        self.predicate = predicate
        self.name = name

    def judge(self, result: Any) -> Any:
        try:
            rejected = self.predicate(result)
        except Exception as bug:
            raise RetryPredicateError(None, bug, option="retry_if_result") from bug
        if rejected:
            raise ResultRejectedError(
                f"{self.name}(): retry_if_result rejected the result (a {type(result).__name__})",
                result,
            )
        return result

    def wrap_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        judge = self.judge

        def attempt(*args: Any, **kwargs: Any) -> Any:
            return judge(func(*args, **kwargs))

        return attempt

    def wrap_async(self, func: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        judge = self.judge

        async def attempt(*args: Any, **kwargs: Any) -> Any:
            return judge(await func(*args, **kwargs))

        return attempt
