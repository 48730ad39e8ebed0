"""`@opmap`: one resilient function, mapped over many items.

The front end: it validates the map's own options (`opero._maps.settings`) and the
per-item `@opero` options, and hands the function to the map machinery
(`opero._maps.mapper`), which runs the same pipeline per item.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    Unpack,
    overload,
)

from opero._maps.mapper import build_mapper
from opero._maps.settings import MapSettings, map_settings
from opero._pipeline.build import cache_asked_for
from opero._pipeline.options import OperoKwargs, build_options

if TYPE_CHECKING:
    from opero._cache.step import CacheInfo
    from opero._observe.events import Stats
    from opero._results import Err, Ok

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
T_contra = TypeVar("T_contra", contravariant=True)


class OpmapKwargs(OperoKwargs, total=False):
    """`@opmap`'s own options (besides `mode`), next to every `@opero` option."""

    workers: int | None
    ordered: bool
    progress: bool | Literal["always"]
    return_exceptions: bool
    chunksize: int | None
    client: Any
    address: str | None
    start_method: Literal["fork", "forkserver", "spawn"] | None
    resume: str | os.PathLike[str] | None


class Mapper(Protocol[T_contra, P, R]):
    """What `@opmap` makes of a function in process and thread mode."""

    def __call__(self, items: Iterable[T_contra], /, *args: P.args, **kwargs: P.kwargs) -> list[R]:
        """Every item's result, as a list (in input order unless ``ordered=False``)."""
        ...

    def imap(self, items: Iterable[T_contra], /, *args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
        """The results as they finish, with bounded work in flight."""
        ...

    def imap_results(
        self, items: Iterable[T_contra], /, *args: P.args, **kwargs: P.kwargs
    ) -> Iterator[Ok[R] | Err]:
        """As `imap`, each item's outcome as a value: `Ok(result)` or `Err(error)`; never
        raises `OpmapError`."""
        ...

    def cache_clear(self) -> None: ...

    def cache_info(self) -> CacheInfo: ...

    def stats(self) -> Stats:
        """Counts over every map's items (``stats=True``), whichever process ran them."""
        ...

    def reset_stats(self) -> None: ...


class AsyncMapper(Protocol[T_contra, P, R]):
    """What `@opmap(mode="async")` makes of an async function."""

    def __call__(
        self,
        items: Iterable[T_contra] | AsyncIterator[T_contra],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Coroutine[Any, Any, list[R]]: ...

    def imap(
        self,
        items: Iterable[T_contra] | AsyncIterator[T_contra],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> AsyncIterator[R]: ...

    def imap_results(
        self,
        items: Iterable[T_contra] | AsyncIterator[T_contra],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> AsyncIterator[Ok[R] | Err]:
        """``async for outcome in fn.imap_results(items)``: `Ok` or `Err` per item."""
        ...

    def cache_clear(self) -> None: ...

    def cache_info(self) -> CacheInfo: ...

    def stats(self) -> Stats:
        """Counts over every map's items (``stats=True``), whichever process ran them."""
        ...

    def reset_stats(self) -> None: ...


@overload
def opmap(func: Callable[Concatenate[T, P], R], /) -> Mapper[T, P, R]: ...


@overload
def opmap(
    func: None = None, /, *, mode: Literal["async"], **options: Unpack[OpmapKwargs]
) -> Callable[[Callable[Concatenate[T, P], Awaitable[R]]], AsyncMapper[T, P, R]]: ...


@overload
def opmap(
    func: None = None,
    /,
    *,
    mode: Literal["process", "thread", "dask", "ray"] = ...,
    **options: Unpack[OpmapKwargs],
) -> Callable[[Callable[Concatenate[T, P], R]], Mapper[T, P, R]]: ...


def opmap(func: Any = None, /, **options: Any) -> Any:
    """Map a resilient function over many items: ``results = fn(items, *args, **kwargs)``.

    ``mode`` is "process" (default), "thread" or "async" (then ``await fn(items)``);
    ``workers`` items run at once. Process mode runs under ``start_method`` "fork",
    "forkserver" or "spawn" (default: forkserver on Linux, spawn on macOS and Windows,
    or ``OPERO_START_METHOD``). Failed items never lose the others: unless
    ``return_exceptions=True``, `OpmapError` is raised after every item ran, with
    `.results` and `.failures`. Every `@opero` option applies to each item. Bad options
    raise `TypeError`/`ValueError` here, at decoration.
    """
    own = {name: options.pop(name) for name in list(options) if name in MapSettings._fields}
    settings = map_settings(own)
    # A misspelt map option gets its suggestion too (its own were taken out above).
    validated = build_options("opmap", options, also_known=MapSettings._fields)
    cache_given = cache_asked_for(options)
    if func is None:
        return functools.partial(
            build_mapper, settings=settings, options=validated, cache_given=cache_given
        )
    return build_mapper(func, settings, validated, cache_given)
