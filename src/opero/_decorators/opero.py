"""`@opero`: the front end. It validates the options once and hands the function to the
pipeline builder (`opero._pipeline.build`); see there for the order of the steps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar, Unpack, overload

from opero._pipeline.build import cache_asked_for, decorate, options_for
from opero._pipeline.options import OperoKwargs, OperoOptions, build_options

if TYPE_CHECKING:
    from typing import Self

    from opero._cache.step import CacheInfo
    from opero._observe.events import Stats
    from opero._results import Err, Ok

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
S = TypeVar("S")
T = TypeVar("T")


class BoundOperoFunction(Protocol[P, R_co]):
    """A decorated method reached through an instance (``client.get``): the call without
    ``self``, and the function's cache and stats. Not `result` (a bound method passes its
    attribute lookups to the function, which never sees ``self``): use
    ``Client.get.result(client, ...)``."""

    __name__: str
    __qualname__: str
    __wrapped__: Callable[..., Any]  # the function as written

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def cache_clear(self) -> None:
        """Empty this function's cache (every backend, this namespace and function)."""
        ...

    def cache_info(self) -> CacheInfo:
        """Hits, misses and current size of this function's cache."""
        ...

    def stats(self) -> Stats:
        """Counts over this function's calls (``stats=True``), else `RuntimeError`."""
        ...

    def reset_stats(self) -> None: ...


class OperoFunction(BoundOperoFunction[P, R_co], Protocol[P, R_co]):
    """What `@opero` makes of a function: the same call signature, and what it adds.

    Methods bind as functions do (``Client().get(path)``), also under ``@classmethod``
    written above ``@opero``: `__get__` drops the first parameter when the function is
    reached through an instance (or, for a first parameter typed ``type[...]``, through
    the class).
    """

    @overload
    def result(  # type: ignore[overload-overlap]  # first match wins: async is awaited
        self: OperoFunction[P2, Coroutine[Any, Any, T]], *args: P2.args, **kwargs: P2.kwargs
    ) -> Coroutine[Any, Any, Ok[T] | Err]: ...

    @overload
    def result(self, *args: P.args, **kwargs: P.kwargs) -> Ok[R_co] | Err: ...

    def result(self, *args: Any, **kwargs: Any) -> Any:
        """The call, as a value: `Ok(result)`, or `Err(exception)` where the call would
        raise it (BaseExceptions such as KeyboardInterrupt still propagate). For an async
        function, ``await fn.result(...)``."""
        ...

    @overload
    def __get__(
        self: OperoFunction[Concatenate[type[S], P2], R_co], instance: None, owner: type[S], /
    ) -> BoundOperoFunction[P2, R_co]: ...

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None, /) -> Self: ...

    @overload
    def __get__(
        self: OperoFunction[Concatenate[type[S], P2], R_co],
        instance: S,
        owner: type[Any] | None = None,
        /,
    ) -> BoundOperoFunction[P2, R_co]: ...

    @overload
    def __get__(
        self: OperoFunction[Concatenate[S, P2], R_co],
        instance: S,
        owner: type[Any] | None = None,
        /,
    ) -> BoundOperoFunction[P2, R_co]: ...


class OperoDecorator(Protocol):
    """What ``@opero(...)`` with options returns: it decorates one function."""

    @overload
    def __call__(self, func: classmethod[T, P, R], /) -> classmethod[T, P, R]: ...

    @overload
    def __call__(  # type: ignore[overload-overlap]  # first match wins: a staticmethod stays one
        self, func: staticmethod[P, R], /
    ) -> staticmethod[P, R]: ...

    @overload
    def __call__(self, func: Callable[P, R], /) -> OperoFunction[P, R]: ...


@overload
def opero(func: classmethod[T, P, R], /) -> classmethod[T, P, R]: ...


@overload
def opero(  # type: ignore[overload-overlap]  # first match wins: a staticmethod stays one
    func: staticmethod[P, R], /
) -> staticmethod[P, R]: ...


@overload
def opero(func: Callable[P, R], /) -> OperoFunction[P, R]: ...


@overload
def opero(func: None = None, /, **options: Unpack[OperoKwargs]) -> OperoDecorator: ...


def opero(func: Any = None, /, **options: Unpack[OperoKwargs]) -> Any:
    """Make calls of `func` resilient: cache, parameter fallback (`arg_fallback`),
    retries with backoff, attempt and total timeouts, circuit breaker, bulkhead, retry
    budget, `retry_if_result` and rate limit, each only when its option asks for it.

    Use bare (``@opero``) or with keyword-only options (``@opero(retries=5)``); see the
    README for every option and its default. Bad options raise `TypeError`/`ValueError`
    here, at decoration, never at call time. The result keeps `func`'s signature and
    adds ``cache_clear()``, ``cache_info()``, ``stats()`` and ``reset_stats()``.
    """
    validated = build_options("opero", dict(options))
    cache_given = cache_asked_for(options)
    if func is None:
        return functools.partial(decorate_for_user, options=validated, cache_given=cache_given)
    return decorate_for_user(func, validated, cache_given)


def decorate_for_user(func: Any, options: OperoOptions, cache_given: bool) -> Any:
    """`decorate`, after `options_for` has looked at the function itself."""
    return decorate(func, options_for("opero", func, options, cache_given))
