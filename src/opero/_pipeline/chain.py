"""Fallback functions (``fallback=[other, default]``): tried in order, each with the same
policies, after the function itself (all its attempts and `arg_fallback` values) failed.

Each alternate is decorated with the function's options (no cache of its own: the
call's cache, outermost, keeps whichever answer came; no deadline of its own: the call's
`total_timeout` covers the chain, and its retries see that deadline). When every one
failed, `AllFailedError` holds every error in order: the function's (one per fallback
value with `arg_fallback`), then each alternate's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from opero._observe import events
from opero._observe.events import Observer, current_call
from opero._pipeline.fallback import check_deadline, error_to_keep
from opero._utils.logging import log
from opero.exceptions import AllFailedError

if TYPE_CHECKING:
    from opero._pipeline.options import OperoOptions
    from opero._timeouts.total import TotalTimeout


def build_chain(
    func: Callable[..., Any],
    options: OperoOptions,
    total: TotalTimeout | None,
    observer: Observer,
    *,
    is_async: bool,
) -> Chain:
    """The fallback functions, each decorated with the function's options (by the
    builder, which builds this chain too: imported here, not at module level)."""
    from opero._pipeline.build import decorate, display_name, is_async_callable

    own = options._replace(fallback=None, cache=False, total_timeout=None)
    name = observer.function
    alternates = []
    for alternate in cast(tuple[Callable[..., Any], ...], options.fallback):
        if is_async_callable(alternate) != is_async:
            kind = "an async" if is_async else "a sync"
            raise TypeError(
                f"opero(): fallback function {display_name(alternate)} must be {kind} "
                f"function, like {name}"
            )
        alternates.append(decorate(alternate, own, deadline=total))
    return Chain(name, alternates, total, observer)


class Chain:
    """The function's pipeline and its alternates, and what to do between them."""

    def __init__(
        self,
        name: str,
        alternates: Sequence[Callable[..., Any]],
        total: TotalTimeout | None,
        observer: Observer,
    ) -> None:
        self.name = name
        self.alternates = tuple(alternates)
        self.total = total
        self.observer = observer

    def failed(self, index: int, exc: Exception, errors: list[Exception]) -> None:
        """Link `index` of the chain failed with `exc`: keep its errors, and go on to the
        next one unless it was the last or the call's time is up (then raise)."""
        last = index == len(self.alternates)
        exc = error_to_keep(exc, self.total, more=not last)
        errors.extend(exc.errors if isinstance(exc, AllFailedError) else [exc])
        if last:
            count = len(self.alternates)
            raise AllFailedError(
                f"{self.name}(): the function and its {count} fallback "
                f"function{'' if count == 1 else 's'} failed",
                errors,
            )
        log().info(
            "{}: failed with {}; trying fallback function {} of {}",
            self.name,
            type(exc).__name__,
            index + 1,
            len(self.alternates),
        )
        if self.observer.on:
            self.observer.emit(
                events.FALLBACK_SWITCHED, current_call.get(), error=type(exc).__name__
            )
        check_deadline(self.total, errors)

    def wrap_sync(self, primary: Callable[..., Any]) -> Callable[..., Any]:
        links = (primary, *self.alternates)

        def call(*args: Any, **kwargs: Any) -> Any:
            errors: list[Exception] = []
            for index, link in enumerate(links):
                try:
                    return link(*args, **kwargs)
                except Exception as exc:
                    failure = exc
                self.failed(index, failure, errors)
            raise AssertionError("unreachable: the last link raises")

        return call

    def wrap_async(self, primary: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        links = (primary, *self.alternates)

        async def call(*args: Any, **kwargs: Any) -> Any:
            errors: list[Exception] = []
            for index, link in enumerate(links):
                try:
                    return await link(*args, **kwargs)
                except Exception as exc:
                    failure = exc
                self.failed(index, failure, errors)
            raise AssertionError("unreachable: the last link raises")

        return call
