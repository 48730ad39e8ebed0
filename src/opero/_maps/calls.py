"""What a mapped function does when called: ``fn(items)`` (a list) and ``fn.imap(items)``
(a stream), sync and async, over the map machinery of `opero._maps.mapper`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opero._maps.dispatch import Batch
    from opero._maps.mapper import _Map


class _Reorder:
    """Entries back in input order, for `ordered=True` streams."""

    def __init__(self) -> None:
        self.waiting: dict[int, tuple[int, bool, Any]] = {}
        self.following = 0

    def push(self, entries: list[tuple[int, bool, Any]]) -> list[tuple[int, bool, Any]]:
        waiting = self.waiting
        for entry in entries:
            waiting[entry[0]] = entry
        ready = []
        while self.following in waiting:
            ready.append(waiting.pop(self.following))
            self.following += 1
        return ready


def sync_wrappers(state: _Map) -> Callable[..., Any]:
    def mapped(items: Iterable[Any], /, *args: Any, **kwargs: Any) -> list[Any]:
        progress = state.begin(items)
        batches: list[Batch] = []
        try:
            for batch in state.outcomes(items, args, kwargs):
                batches.append(batch)
                progress.update(len(batch.indices), len(batch.failures))
        finally:
            progress.close()
        return state.collect(batches)

    def streamer(as_results: bool) -> Callable[..., Iterator[Any]]:
        def imap(items: Iterable[Any], /, *args: Any, **kwargs: Any) -> Iterator[Any]:
            progress = state.begin(items)
            failures: dict[int, Any] = {}
            reorder = _Reorder() if state.settings.ordered else None
            low = (lambda: reorder.following) if reorder is not None else None
            stream = state.outcomes(items, args, kwargs, low)
            try:
                for batch in stream:
                    progress.update(len(batch.indices), len(batch.failures))
                    entries = state.entries(batch)
                    if reorder is not None:
                        entries = reorder.push(entries)
                    if as_results:
                        yield from as_values(entries)
                    else:
                        yield from state.streamed(entries, failures)
            finally:
                stream.close()  # an early break stops the pool now, not at collection
                progress.close()
            state.finish_stream(failures)

        return imap

    wrappers: Any = mapped
    wrappers.imap = streamer(as_results=False)
    wrappers.imap_results = streamer(as_results=True)
    return mapped


def as_values(entries: Iterable[tuple[int, bool, Any]]) -> list[Any]:
    """Entries as `Ok(value)` / `Err(error)` (``fn.imap_results``)."""
    from opero._results import Err, Ok

    return [Ok(value) if ok else Err(value) for _, ok, value in entries]


def async_wrappers(state: _Map) -> Callable[..., Any]:
    async def mapped(items: Any, /, *args: Any, **kwargs: Any) -> list[Any]:
        progress = state.begin(items)
        batches: list[Batch] = []
        stream = state.aoutcomes(items, args, kwargs)
        try:
            async for batch in stream:
                batches.append(batch)
                progress.update(len(batch.indices), len(batch.failures))
        finally:
            await stream.aclose()
            progress.close()
        return state.collect(batches)

    def streamer(as_results: bool) -> Callable[..., AsyncIterator[Any]]:
        async def imap(items: Any, /, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            progress = state.begin(items)
            failures: dict[int, Any] = {}
            reorder = _Reorder() if state.settings.ordered else None
            low = (lambda: reorder.following) if reorder is not None else None
            stream = state.aoutcomes(items, args, kwargs, low)
            try:
                async for batch in stream:
                    progress.update(len(batch.indices), len(batch.failures))
                    entries = state.entries(batch)
                    if reorder is not None:
                        entries = reorder.push(entries)
                    keep = as_values if as_results else None
                    values = keep(entries) if keep else state.streamed(entries, failures)
                    for value in values:
                        yield value
            finally:
                await stream.aclose()
                progress.close()
            state.finish_stream(failures)

        return imap

    wrappers: Any = mapped
    wrappers.imap = streamer(as_results=False)
    wrappers.imap_results = streamer(as_results=True)
    return mapped
