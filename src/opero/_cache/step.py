"""The cache step: look a call up before anything else, store its result after.

Backends implement `CacheBackend`. The in-process memory backend takes hashable tuples as
keys; every other backend gets portable string keys (`cache_keys.portable_key`).
Concurrent callers of one missing key (threads, or asyncio tasks) wait for a single
computation and share its outcome. Exceptions are never cached; `None` is a result.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from opero._cache.exact import exact_parameters
from opero._cache.hits import backend_async, backend_sync, maybe_await, memory_async, memory_sync
from opero._cache.keys import (
    NO_KEY,
    KeyBuilder,
    UnkeyableArgumentsError,
    function_identity,
    memory_key,
    portable_key,
)
from opero._observe.events import CACHE_HIT, NEVER_OBSERVED, CallInfo, Observer

if TYPE_CHECKING:
    from opero._pipeline.options import OperoOptions

Args = tuple[Any, ...]
Kwargs = dict[str, Any]

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


_UNBOUND: Any = NO_KEY  # no key (arguments did not bind), or no value found
MISSING: Any = _UNBOUND  # the same marker, for callers of `CacheStep.key` and `.get`


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


_ABANDONED: Any = object()  # the leader stopped on a BaseException: waiters start over


class CacheStep:
    """One decorated function's cache: lookups, single-flight misses, statistics.

    `key_of(args, kwargs)` gives the backend key; `freeze` (memory backend only) turns an
    unhashable key into a hashable one when the first lookup says it is unhashable;
    `arity` (memory backend only, -1: none) is how many positional arguments, and no
    keywords, make a call whose argument tuple is its key (`KeyBuilder.arity`);
    `in_memory` says the backend is a `MemoryBackend`, whose mirror the hit paths read;
    `parameters` (memory backend only) are the function's, when its hit path may take
    them as its own (`opero._cache.exact`).
    """

    def __init__(
        self,
        backend: Any,
        ttl: float | None,
        key_of: Callable[..., Any],
        *,
        freeze: Callable[[Any], Any] | None = None,
        custom_key: bool = False,
        arity: int = -1,
        in_memory: bool = False,
        parameters: tuple[inspect.Parameter, ...] | None = None,
    ) -> None:
        self.backend = backend
        self.arity = arity
        self.parameters = parameters
        self.in_memory = in_memory
        self.ttl = ttl
        self.key_of = key_of
        self.freeze = freeze
        self.custom_key = custom_key
        self.hits = 0
        self.misses = 0
        self.observer: Observer = NEVER_OBSERVED  # hits are events while it is on
        self.name = ""  # the function's, for log lines (set by build_cache_step)
        self._lock = threading.Lock()
        self._flights: dict[Any, _Flight] = {}
        self._async_flights: dict[Any, Any] = {}  # key -> asyncio.Future

    def wrap_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """`func` behind this cache; the hit path, which every call runs, is in hits.py."""
        if self.in_memory:
            return memory_sync(self, func)
        return backend_sync(self, func)

    def wrap_async(self, func: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        """The async twin of `wrap_sync`; backends with `aget`/`aset` are awaited."""
        if self.in_memory:
            return memory_async(self, func)
        return backend_async(self, func)

    def after_lookup_sync(
        self, func: Callable[..., Any], args: Args, kwargs: Kwargs, key: Any, problem: Exception
    ) -> Any:
        """A call whose inlined lookup found nothing: computed once, or called through."""
        key = self.after_failed_lookup(key, problem)
        if key is _UNBOUND:
            return func(*args, **kwargs)
        return self.miss_sync(func, args, kwargs, key)

    async def after_lookup_async(
        self,
        func: Callable[..., Awaitable[Any]],
        args: Args,
        kwargs: Kwargs,
        key: Any,
        problem: Exception,
    ) -> Any:
        key = self.after_failed_lookup(key, problem)
        if key is _UNBOUND:
            return await func(*args, **kwargs)
        return await self.miss_async(func, args, kwargs, key)

    def after_failed_lookup(self, key: Any, problem: Exception) -> Any:
        """The key to compute and store under, or `_UNBOUND` to call through uncached.

        A plain miss keeps its key; an unhashable memory key is frozen (and may turn
        out to be a hit after all, which `miss_*` finds). Arguments that do not bind
        (TypeError) are called through so the call reports them; a custom `cache_key`
        that raises is a bug and propagates; keys that cannot be built and backend
        outages are logged and called through.
        """
        if key is _UNBOUND:
            if isinstance(problem, TypeError):
                return _UNBOUND
            if self.custom_key:
                raise problem
            _log_cache_problem(self.name, "key", problem)
            return _UNBOUND
        if isinstance(problem, KeyError):
            return key
        if isinstance(problem, TypeError) and self.freeze is not None:
            try:
                return self.freeze(key)
            except UnkeyableArgumentsError as exc:
                _log_cache_problem(self.name, "key", exc)
                return _UNBOUND
        _log_cache_problem(self.name, "read", problem)
        return _UNBOUND

    def miss_sync(self, func: Callable[..., Any], args: Args, kwargs: Kwargs, key: Any) -> Any:
        while True:
            with self._lock:
                flight = self._flights.get(key)
                leader = flight is None
                if flight is None:
                    flight = self._flights[key] = _Flight()
            if leader:
                break
            outcome = flight.outcome()  # raises the leader's exception, if it failed
            if outcome is not _ABANDONED:
                self.count_hit()  # served by the leader's computation: a hit, not a call
                return outcome
        try:
            flight.value = self._compute_sync(func, args, kwargs, key)
        except Exception as exc:
            flight.error = exc
            raise
        except BaseException:
            flight.value = _ABANDONED  # e.g. KeyboardInterrupt: only the leader's to see
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return flight.value

    def _compute_sync(self, func: Callable[..., Any], args: Args, kwargs: Kwargs, key: Any) -> Any:
        value = self.get(key)  # stored meanwhile by another leader, or a frozen key's hit
        if value is not MISSING:
            return value
        value = func(*args, **kwargs)
        self.store(key, value)
        return value

    async def miss_async(
        self, func: Callable[..., Awaitable[Any]], args: Args, kwargs: Kwargs, key: Any
    ) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        shared_value = await self._follow_async(key, loop)
        if shared_value is not _UNBOUND:
            return shared_value
        future = loop.create_future()
        self._async_flights[key] = future
        try:
            value = await maybe_await(self.backend, "aget", "get", key)
        except Exception:
            value = _UNBOUND
        if value is not _UNBOUND:  # a frozen key that is a hit after all
            del self._async_flights[key]
            future.set_result(value)
            self.count_found()
            return value
        try:
            self.misses += 1
            value = await func(*args, **kwargs)
            try:
                await maybe_await(self.backend, "aset", "set", key, value, self.ttl)
            except Exception as exc:
                _log_cache_problem(self.name, "write", exc)
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

    async def _follow_async(self, key: Any, loop: Any) -> Any:
        """The value a task of this loop already computes for `key` (a hit), or
        `_UNBOUND` when this caller is to compute it."""
        import asyncio

        while True:
            shared = self._async_flights.get(key)
            if shared is None or shared.get_loop() is not loop:
                return _UNBOUND
            try:
                value = await asyncio.shield(shared)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not shared.cancelled() or (current is not None and current.cancelling()):
                    raise  # this waiter was cancelled (too), not only the computation
                # Only the leader was cancelled: the next waiter computes.
            else:
                self.count_hit()  # served by the leader's computation: a hit, not a call
                return value

    # Lookups by callers that run the function elsewhere (`@opmap`'s parent process);
    # the wrappers above inline the same decisions on their hot path.

    def key(self, args: Args, kwargs: Kwargs) -> Any:
        """The hashable key of a call, or `MISSING` when the call is to run uncached."""
        key = _UNBOUND
        try:
            key = self.key_of(args, kwargs)
            hash(key)
        except Exception as exc:
            return self.after_failed_lookup(key, exc)
        return key

    def get(self, key: Any) -> Any:
        """The cached value, or `MISSING`; counted as a hit or a miss."""
        try:
            value = self.backend.get(key)
        except Exception as exc:
            if not isinstance(exc, KeyError):
                _log_cache_problem(self.name, "read", exc)
            self.misses += 1
            return MISSING
        self.count_found()
        return value

    def count_hit(self, counted: bool = False) -> None:
        """A hit no backend lookup served (a follower of a single flight), or one
        `counted` by the backend already (see `count_found`)."""
        if not counted:
            self.hits += 1
        if self.observer.on:
            self.observer.emit(CACHE_HIT, CallInfo(self.observer.function))

    def count_found(self) -> None:
        """A hit the backend's `get` found off the inlined path (a frozen key, a
        re-check); the memory backend has counted it already (`MemoryBackend.hits`)."""
        self.count_hit(counted=self.in_memory)

    def store(self, key: Any, value: object) -> None:
        try:
            self.backend.set(key, value, self.ttl)
        except Exception as exc:
            _log_cache_problem(self.name, "write", exc)

    def clear(self) -> None:
        self.backend.clear()
        self.hits = self.misses = 0

    def info(self) -> CacheInfo:
        hits = self.hits + (self.backend.hits if self.in_memory else 0)
        size: int | None = None
        if hasattr(self.backend, "__len__"):
            try:
                size = len(self.backend)
            except Exception as exc:  # statistics must not fail when the backend is down
                _log_cache_problem(self.name, "size", exc, "size unknown")
        return CacheInfo(hits, self.misses, size)


def _log_cache_problem(
    name: str, action: str, exc: Exception, outcome: str = "calling without the cache"
) -> None:
    from opero._utils.logging import log

    log().warning(
        "{}(): cache {} failed with {}; {}", name or "?", action, type(exc).__name__, outcome
    )


def build_cache_step(func: Callable[..., Any], options: OperoOptions) -> CacheStep:
    """The cache step `options` ask for, for `func` (at decoration)."""
    step = _cache_step(func, options)
    step.name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return step


def _cache_step(func: Callable[..., Any], options: OperoOptions) -> CacheStep:
    keys = KeyBuilder(func, options.cache_key)
    custom = options.cache_key is not None
    backend = options.cache_backend
    if backend == "memory":
        from opero._cache.memory import MemoryBackend  # cachetools loads here, not at import

        memory = MemoryBackend(options.cache_maxsize, options.cache_ttl)
        return CacheStep(
            memory,
            options.cache_ttl,
            keys.bound,
            freeze=memory_key,
            custom_key=custom,
            arity=keys.arity,
            in_memory=True,
            parameters=None if custom else exact_parameters(func, keys.signature),
        )
    identity = function_identity(func)
    if backend == "disk":
        from opero._cache.backends import DiskBackend

        backend = DiskBackend(options.cache_namespace, identity)
    elif backend == "redis":
        from opero._cache.backends import RedisBackend

        backend = RedisBackend(options.cache_namespace, identity)
    elif backend == "twat":
        from opero._cache.twat import TwatBackend

        backend = TwatBackend(options.cache_namespace)

    def portable(args: Args, kwargs: Kwargs) -> str:
        return portable_key(identity, keys.bound(args, kwargs))

    return CacheStep(backend, options.cache_ttl, portable, custom_key=custom)
