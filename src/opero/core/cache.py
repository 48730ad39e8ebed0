"""The cache step: look a call up before anything else, store its result after.

Backends implement `CacheBackend`. The in-process memory backend takes hashable tuples as
keys; every other backend gets portable string keys (`cache_keys.portable_key`).
Concurrent callers of one missing key (threads, or asyncio tasks) wait for a single
computation and share its outcome. Exceptions are never cached; `None` is a result.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from opero.core.options import OperoOptions

BUILTIN_CACHE_BACKENDS = frozenset({"memory", "disk", "redis", "twat"})


@runtime_checkable
class CacheBackend(Protocol):
    """What an object passed as ``cache_backend=`` must offer.

    `get` raises `KeyError` for a missing (or expired) key; `set` stores with a time to
    live in seconds (`None`: until evicted).
    """

    def get(self, key: str) -> object: ...

    def set(self, key: str, value: object, ttl: float | None) -> None: ...

    def delete(self, key: str) -> None: ...

    def clear(self) -> None: ...


class CacheInfo(NamedTuple):
    """What `fn.cache_info()` returns, in the spirit of `functools.lru_cache`."""

    hits: int
    misses: int
    size: int | None


class MemoryBackend:
    """A bounded LRU (with TTL when given) from cachetools, made safe for threads."""

    def __init__(self, maxsize: int, ttl: float | None) -> None:
        from cachetools import Cache, LRUCache, TTLCache

        self._entries: Cache[Any, Any] = (
            TTLCache(maxsize, ttl) if ttl is not None else LRUCache(maxsize)
        )
        self._lock = threading.Lock()

    def get(self, key: Any) -> object:
        with self._lock:
            return self._entries[key]

    def set(self, key: Any, value: object, ttl: float | None = None) -> None:
        with self._lock:
            self._entries[key] = value

    def delete(self, key: Any) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            expire = getattr(self._entries, "expire", None)
            if expire is not None:
                expire()  # TTLCache counts expired entries until they are purged
            return len(self._entries)


_UNBOUND: Any = object()  # no key (arguments did not bind), or no value found


class _Flight:
    """One computation of a missing key that other threads wait for."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: object = None
        self.error: BaseException | None = None

    def outcome(self) -> object:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value


class CacheStep:
    """One decorated function's cache: lookups, single-flight misses, statistics."""

    def __init__(self, backend: Any, ttl: float | None, key_of: Callable[..., Any]) -> None:
        self.backend = backend
        self.ttl = ttl
        self.key_of = key_of  # (args, kwargs) -> backend key
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._flights: dict[Any, _Flight] = {}
        self._async_flights: dict[Any, Any] = {}  # key -> asyncio.Future

    def wrap_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """`func` behind this cache. The hit path is inlined: it runs on every call."""
        key_of, get, step = self.key_of, self.backend.get, self

        def cached(*args: Any, **kwargs: Any) -> Any:
            key = _UNBOUND
            try:
                key = key_of(args, kwargs)
                value = get(key)
            except Exception as exc:
                problem = exc
            else:
                step.hits += 1
                return value
            # Outside the except block, so the call's own errors get no KeyError context.
            if step.usable_miss(key, problem):
                return step.miss_sync(func, args, kwargs, key)
            return func(*args, **kwargs)

        return cached

    def usable_miss(self, key: Any, problem: Exception) -> bool:
        """After a failed lookup: is it a plain miss to compute and store?

        Arguments that do not bind (TypeError) and cache outages are called through,
        uncached, so the call itself reports or succeeds; a custom `cache_key` that
        raises anything else is a bug and propagates.
        """
        if key is _UNBOUND:
            if isinstance(problem, TypeError):
                return False
            raise problem
        if isinstance(problem, KeyError):
            return True
        _log_backend_error("read", problem)
        return False

    def miss_sync(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], key: Any
    ) -> Any:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            return flight.outcome()
        try:
            flight.value = self._compute_sync(func, args, kwargs, key)
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return flight.value

    def _compute_sync(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], key: Any
    ) -> Any:
        try:  # another leader may have stored it between our lookup and our flight
            value = self.backend.get(key)
        except Exception:
            value = _UNBOUND
        if value is not _UNBOUND:
            self.hits += 1
            return value
        self.misses += 1
        value = func(*args, **kwargs)
        self._store(key, value)
        return value

    def wrap_async(self, func: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        """The async twin of `wrap_sync`; backends with `aget`/`aset` are awaited."""
        key_of, step, backend = self.key_of, self, self.backend

        async def cached(*args: Any, **kwargs: Any) -> Any:
            key = _UNBOUND
            try:
                key = key_of(args, kwargs)
                value = await _maybe_await(backend, "aget", "get", key)
            except Exception as exc:
                problem = exc
            else:
                step.hits += 1
                return value
            if step.usable_miss(key, problem):
                return await step.miss_async(func, args, kwargs, key)
            return await func(*args, **kwargs)

        return cached

    async def miss_async(
        self,
        func: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        key: Any,
    ) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        while True:
            shared = self._async_flights.get(key)
            if shared is None or shared.get_loop() is not loop:
                break
            try:
                return await asyncio.shield(shared)
            except asyncio.CancelledError:
                if not shared.cancelled():
                    raise  # this waiter was cancelled, not the computation
                # The leader was cancelled: the next waiter computes.
        future = loop.create_future()
        self._async_flights[key] = future
        try:
            self.misses += 1
            value = await func(*args, **kwargs)
            try:
                await _maybe_await(self.backend, "aset", "set", key, value, self.ttl)
            except Exception as exc:
                _log_backend_error("write", exc)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marks it retrieved: no "never retrieved" warning
            raise
        else:
            future.set_result(value)
            return value
        finally:
            if self._async_flights.get(key) is future:
                del self._async_flights[key]

    def _store(self, key: Any, value: object) -> None:
        try:
            self.backend.set(key, value, self.ttl)
        except Exception as exc:
            _log_backend_error("write", exc)

    def clear(self) -> None:
        self.backend.clear()
        self.hits = self.misses = 0

    def info(self) -> CacheInfo:
        size = len(self.backend) if hasattr(self.backend, "__len__") else None
        return CacheInfo(self.hits, self.misses, size)


def _log_backend_error(action: str, exc: Exception) -> None:
    from opero.utils.logging import log

    log().warning("cache {} failed with {}; calling without the cache", action, type(exc).__name__)


async def _maybe_await(backend: Any, async_name: str, sync_name: str, *args: Any) -> Any:
    method = getattr(backend, async_name, None)
    if method is not None:
        return await method(*args)
    return getattr(backend, sync_name)(*args)


def build_cache_step(func: Callable[..., Any], options: OperoOptions) -> CacheStep:
    """The cache step `options` ask for, for `func` (at decoration)."""
    from opero.core.cache_keys import KeyBuilder, function_identity, portable_key

    keys = KeyBuilder(func, options.cache_key)
    backend = options.cache_backend
    if backend == "memory":
        memory = MemoryBackend(options.cache_maxsize, options.cache_ttl)
        return CacheStep(memory, options.cache_ttl, keys.build)
    identity = function_identity(func)
    if backend == "disk":
        from opero.core.cache_backends import DiskBackend

        backend = DiskBackend(options.cache_namespace, identity)
    elif backend == "redis":
        from opero.core.cache_backends import RedisBackend

        backend = RedisBackend(options.cache_namespace, identity)
    elif backend == "twat":
        from opero.core.cache_twat import TwatBackend

        backend = TwatBackend(options.cache_namespace)
    prefix = identity + ":"

    def portable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        return prefix + portable_key(identity, keys.build(args, kwargs))

    return CacheStep(backend, options.cache_ttl, portable)
