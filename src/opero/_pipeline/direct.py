"""The bare first attempt of a pipeline that puts no step around it.

A tiny item costs less than the pipeline's wrapper frame around it (0.1 against 0.4 us
here), so `@opmap`'s workers call the function directly when `decorate` says that is
all the first attempt is (`direct_of`), and hand a failure to the same retries. Anything
else the pipeline would do (cache, timeouts, rate limit, breaker, bulkhead, result
check, budget, fallback, async) keeps the pipeline; so do hooks and stats, through the
observer, read per item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from opero._observe import attempts

if TYPE_CHECKING:
    from opero._observe.events import Observer


class Direct(NamedTuple):
    """A sync pipeline's bare first attempt, its retries after a failed one
    (``resume(args, kwargs, failure)``), and its observer (``.on`` while anyone
    listens: items then go through the pipeline, which emits events)."""

    first: Callable[..., Any]
    resume: Callable[[tuple[Any, ...], dict[str, Any], Exception], Any]
    observer: Observer


def direct_of(pipeline: Callable[..., Any]) -> Direct | None:
    """The `Direct` form of a pipeline `decorate` built, or None if it has none."""
    return getattr(pipeline, "__opero_direct__", None)


def run_direct(
    direct: Direct,
    pipeline: Callable[..., Any],
    remaining: Iterator[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    append: Callable[[Any], None],
) -> Exception | None:
    """Items of a `Direct` pipeline, each as the pipeline would run it, without its frame.

    Unless anyone listens to the pipeline's events, its first attempt is the bare call
    and a failure goes on to its retries (outside the `except`, as in the pipeline, so
    that a later exception is not chained to it). Returns the exception of the first
    item that failed (the caller records it and calls again for the rest), or None.
    `current_attempt()` reads this function's frame as a first attempt's, as it reads
    the pipeline's wrapper.
    """
    first, resume, observer = direct.first, direct.resume, direct.observer
    if args or kwargs:
        for item in remaining:
            try:
                if observer.on:
                    append(pipeline(item, *args, **kwargs))
                    continue
                try:
                    append(first(item, *args, **kwargs))
                    continue
                except Exception as exc:
                    failure = exc
                append(resume((item, *args), kwargs, failure))
                del failure  # its traceback holds the failed frame: not for the chunk
            except Exception as exc:
                return exc
        return None
    for item in remaining:
        try:
            if observer.on:
                append(pipeline(item))
                continue
            try:
                append(first(item))
                continue
            except Exception as exc:
                failure = exc
            append(resume((item,), kwargs, failure))
            del failure
        except Exception as exc:
            return exc
    return None


attempts.mark(attempts.FIRST, run_direct)  # @opmap items, called directly
