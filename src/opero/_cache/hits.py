"""The hit paths: what every call of a cached function runs first.

`backend_sync`/`backend_async` serve any backend through its `get`. The memory backend's
are inlined on purpose (issue 20: a hit should cost at most 0.3 us positionally, 0.5 us
by keyword, where a `functools.lru_cache` hit costs 0.05 us): the key of a call that
passes exactly the plain signature's parameters, positionally, is its argument tuple
(what `KeyBuilder.bound` would return), and the lookup is `MemoryBackend.get` written
out, without the call. Other calls (keywords, defaults left out) get their key from
`key_of`; unhashable arguments and misses go on to `CacheStep.after_lookup_sync`.
Functions whose signature a wrapper may take as its own get the compiled hit paths of
`opero._cache.exact` instead, which bind keywords in C.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from opero._cache.exact import memory_async_exact, memory_sync_exact
from opero._cache.keys import NO_KEY
from opero._observe.events import CACHE_HIT, CallInfo

if TYPE_CHECKING:
    from opero._cache.memory import MemoryBackend
    from opero._cache.step import CacheStep


def memory_sync(step: CacheStep, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` behind `step`, whose backend is a `MemoryBackend`."""
    if step.parameters is not None:
        return memory_sync_exact(step, func)
    backend: MemoryBackend = step.backend
    if backend.ttl is not None:
        return _memory_ttl_sync(step, func)
    key_of, arity, observer, slow = step.key_of, step.arity, step.observer, step.after_lookup_sync
    hot, log, limit, compact = backend.hot, backend.log, backend.limit, backend.compact_hits

    def cached(*args: Any, **kwargs: Any) -> Any:
        key = NO_KEY
        try:
            key = args if len(args) == arity and not kwargs else key_of(args, kwargs)
            entry = hot[key]
        except Exception as exc:
            problem = exc
        else:
            log.append(entry)  # the LRU order and the hit count (see `opero._cache.memory`)
            if len(log) > limit:
                compact()
            if observer.on:
                observer.emit(CACHE_HIT, CallInfo(observer.function))
            return entry.value
        # Outside the except block, so the call's own errors get no cache context.
        return slow(func, args, kwargs, key, problem)

    return cached


def _memory_ttl_sync(step: CacheStep, func: Callable[..., Any]) -> Callable[..., Any]:
    # The same, with the entry's expiry checked against the backend's clock.
    backend: MemoryBackend = step.backend
    key_of, arity, observer, slow = step.key_of, step.arity, step.observer, step.after_lookup_sync
    hot, log, due, compact = backend.hot, backend.log, backend.due, backend.compact_hits
    timer = backend.timer

    def cached(*args: Any, **kwargs: Any) -> Any:
        key = NO_KEY
        try:
            key = args if len(args) == arity and not kwargs else key_of(args, kwargs)
            entry = hot[key]
        except Exception as exc:
            problem = exc
        else:
            now = timer()
            if now < entry.expires:
                log.append(entry)
                if now > due[0]:
                    compact()
                if observer.on:
                    observer.emit(CACHE_HIT, CallInfo(observer.function))
                return entry.value
            problem = KeyError(key)  # expired: a miss; the write that follows purges it
        return slow(func, args, kwargs, key, problem)

    return cached


def memory_async(step: CacheStep, func: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """The async twin of `memory_sync` (one call to `MemoryBackend.get`, which counts the
    hit: an awaited call costs more than that call already)."""
    if step.parameters is not None:
        return memory_async_exact(step, func)
    get = step.backend.get
    key_of, arity, observer, slow = step.key_of, step.arity, step.observer, step.after_lookup_async

    async def cached(*args: Any, **kwargs: Any) -> Any:
        key = NO_KEY
        try:
            key = args if len(args) == arity and not kwargs else key_of(args, kwargs)
            value = get(key)
        except Exception as exc:
            problem = exc
        else:
            if observer.on:
                observer.emit(CACHE_HIT, CallInfo(observer.function))
            return value
        return await slow(func, args, kwargs, key, problem)

    return cached


def backend_sync(step: CacheStep, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` behind `step`, whose backend is any `CacheBackend` (portable keys)."""
    key_of, get, observer = step.key_of, step.backend.get, step.observer

    def cached(*args: Any, **kwargs: Any) -> Any:
        key = NO_KEY
        try:
            key = key_of(args, kwargs)
            value = get(key)
        except Exception as exc:
            problem = exc
        else:
            step.hits += 1
            if observer.on:
                observer.emit(CACHE_HIT, CallInfo(observer.function))
            return value
        return step.after_lookup_sync(func, args, kwargs, key, problem)

    return cached


def backend_async(step: CacheStep, func: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """The async twin of `backend_sync`; backends with `aget`/`aset` are awaited."""
    key_of, backend, observer = step.key_of, step.backend, step.observer

    async def cached(*args: Any, **kwargs: Any) -> Any:
        key = NO_KEY
        try:
            key = key_of(args, kwargs)
            value = await maybe_await(backend, "aget", "get", key)
        except Exception as exc:
            problem = exc
        else:
            step.hits += 1
            if observer.on:
                observer.emit(CACHE_HIT, CallInfo(observer.function))
            return value
        return await step.after_lookup_async(func, args, kwargs, key, problem)

    return cached


async def maybe_await(backend: Any, async_name: str, sync_name: str, *args: Any) -> Any:
    method = getattr(backend, async_name, None)
    if method is not None:
        return await method(*args)
    return getattr(backend, sync_name)(*args)
