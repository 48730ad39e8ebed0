"""Async mode: a map's items as tasks on the caller's event loop, `workers` at a time."""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from opero._maps.dispatch import Batch
from opero._maps.journal import MISSING, digest_of

if TYPE_CHECKING:
    from opero._maps.journal import Journal


async def dispatch_async(
    call: Callable[..., Awaitable[Any]],
    items: Iterable[Any] | AsyncIterator[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    workers: int,
    low: Callable[[], int] | None = None,
    journal: Journal | None = None,
    started: Callable[[Sequence[int]], None] | None = None,
) -> AsyncGenerator[Batch]:
    """Every item's outcome, in completion order, from `workers` tasks on this loop.

    `low`, for an ordered stream, is the next index its consumer waits for: no item is
    taken more than 2 per worker ahead of it, so results that finish ahead of a slow
    item (and the pull from the input) stay bounded.

    Closing the generator (or cancelling its consumer) cancels the running items and
    waits for them. A BaseException from an item (not an Exception) stops the map and
    propagates, as it would from a plain call.

    With a `journal` (resume=), items it has done are answered from it, and each success
    is recorded; records are written whenever the consumer has caught up (one write per
    burst of finished items, before it waits for more).
    """
    done: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=2 * workers)
    source = _Numbered(items, low, 2 * workers)
    fatal: list[BaseException] = []

    async def worker() -> None:
        try:
            async for index, item in source:
                digest = None
                if journal is not None:
                    digest = digest_of([item])
                    value = journal.single(index, digest)
                    if value is not MISSING:
                        await done.put(Batch([index], [value], {}))
                        continue
                if started is not None:  # the map's item events
                    started((index,))
                try:
                    value = await call(item, *args, **kwargs)
                except Exception as exc:
                    await done.put(Batch([index], [None], {0: exc}))
                else:
                    if journal is not None:
                        journal.add([index], [digest], [value], {})
                    await done.put(Batch([index], [value], {}))
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the consumer stopped: it is not waiting for this worker's end
            fatal.append(exc)  # an item's own CancelledError: it stops the map
        except BaseException as exc:
            fatal.append(exc)
        await done.put(None)

    tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
    running = workers
    try:
        while running:
            if journal is not None and done.empty():
                journal.flush()  # what finished is on file before this waits for more
            entry = await done.get()
            if entry is None:
                running -= 1
                if fatal:
                    raise fatal[0]
                continue
            yield entry
            source.advanced()  # the consumer asks for more: it may wait for a later index
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def dispatch_resumed(
    opened: AbstractContextManager[Journal | None],
    call: Callable[..., Awaitable[Any]],
    items: Iterable[Any] | AsyncIterator[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    workers: int,
    low: Callable[[], int] | None = None,
    started: Callable[[Sequence[int]], None] | None = None,
) -> AsyncGenerator[Batch]:
    """`dispatch_async` under resume=, with the journal open while it runs."""
    with opened as journal:
        stream = dispatch_async(call, items, args, kwargs, workers, low, journal, started)
        try:
            async for batch in stream:
                yield batch
        finally:
            await stream.aclose()


class _Numbered:
    """(index, item) pairs from a sync or async iterable, shared by the worker tasks;
    with `low`, no index `window` or more past `low()` is handed out until it moves."""

    def __init__(
        self,
        items: Iterable[Any] | AsyncIterator[Any],
        low: Callable[[], int] | None = None,
        window: int = 0,
    ) -> None:
        self._index = 0
        if isinstance(items, AsyncIterator):
            self._async: AsyncIterator[Any] | None = items
            self._sync: Iterator[Any] | None = None
        else:
            self._async = None
            self._sync = iter(items)
        self._lock = asyncio.Lock()
        self._low = low
        self._window = window
        self._moved = asyncio.Event()  # set (and replaced) each time `low` may have moved
        self._waiting = 0

    def __aiter__(self) -> _Numbered:
        return self

    def advanced(self) -> None:
        """Wake the tasks waiting for the consumer to move on; they check again."""
        if self._waiting:
            self._moved.set()
            self._moved = asyncio.Event()

    async def _within_window(self) -> None:
        low = self._low
        while low is not None and self._index - low() >= self._window:
            self._waiting += 1
            try:
                await self._moved.wait()
            finally:
                self._waiting -= 1

    async def __anext__(self) -> tuple[int, Any]:
        if self._sync is not None:
            await self._within_window()  # nothing awaits between this check and `next`
            item = next(self._sync, _END)
        else:
            assert self._async is not None
            async with self._lock:  # an async generator must not be entered twice at once
                await self._within_window()
                item = await anext(self._async, _END)
        if item is _END:
            raise StopAsyncIteration
        index = self._index
        self._index += 1
        return index, item


_END: Any = object()
