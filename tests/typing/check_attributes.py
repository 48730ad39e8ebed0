"""What `@opero` and `@opmap` add to a function, as mypy --strict and pyright see it.

Run by `dev.py lint` with both checkers; every `assert_type` is a test. Not here, because
the checkers cannot follow it: ``@staticmethod`` combined with ``@opero`` (both checkers
route the static method through the decorated function's ``__get__``, which binds its
first parameter as a method's; the call works at run time).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, assert_type

from opero import Stats, opero, opmap
from opero._cache.step import CacheInfo

T = TypeVar("T")


@opero(cache_ttl=60)
def lookup(key: str, *, fresh: bool = False) -> list[float]:
    return [float(len(key))]


@opero
async def fetch(url: str) -> bytes:
    return url.encode()


def check_attributes() -> None:
    assert_type(lookup("a"), list[float])
    lookup.cache_clear()
    assert_type(lookup.cache_info(), CacheInfo)
    assert_type(lookup.cache_info().hits, int)
    assert_type(lookup.stats(), Stats)
    lookup.reset_stats()
    fetch.cache_clear()
    assert_type(fetch.cache_info(), CacheInfo)
    name: str = lookup.__name__
    del name
    original = lookup.__wrapped__  # functools.wraps keeps it (the contract, API.md)
    del original
    # Still usable wherever the plain function's type is expected.
    plain: Callable[[str], list[float]] = lookup
    del plain
    coro: Callable[[str], Coroutine[Any, Any, bytes]] = fetch
    del coro


class Client:
    @opero(retries=1)
    def get(self, path: str) -> int:
        return len(path)

    @opero
    async def aget(self, path: str) -> str:
        return path

    @classmethod
    @opero
    def build(cls, base: str) -> Client:
        return cls()

    @opero
    @classmethod
    def build_above(cls, base: str) -> Client:  # @opero written above @classmethod
        return cls()


async def check_methods() -> None:
    client = Client()
    assert_type(client.get("/a"), int)
    client.get.cache_clear()
    assert_type(client.get.cache_info(), CacheInfo)
    assert_type(await client.aget("/b"), str)
    assert_type(Client.build("x"), Client)
    assert_type(client.build("x"), Client)
    assert_type(Client.build_above("x"), Client)
    Client.get.cache_clear()  # through the class: the function itself


def identity(value: T) -> T:
    return value


def check_generic_and_partial() -> None:
    generic = opero(identity)
    assert_type(generic(3), int)
    assert_type(generic("s"), str)
    partial = opero(functools.partial(lookup, "k"))
    assert_type(partial(), list[float])
    partial.cache_clear()


@opmap(mode="process", workers=2)
def in_processes(x: int) -> int:
    return x


@opmap(mode="dask")
def on_dask(x: int, scale: float = 1.0) -> float:
    return x * scale


@opmap(mode="ray")
def on_ray(x: int) -> str:
    return str(x)


@opmap
def bare_map(x: int) -> bool:
    return x > 0


@opmap(mode="async")
async def in_tasks(x: int) -> int:
    return x


async def check_modes() -> None:
    assert_type(in_processes([1]), list[int])
    assert_type(on_dask([1], scale=2.0), list[float])
    assert_type(on_ray(range(3)), list[str])
    assert_type(bare_map([1]), list[bool])
    assert_type(await in_tasks([1]), list[int])
    assert_type(on_dask.stats(), Stats)
    on_ray.cache_clear()
    assert_type(in_tasks.cache_info(), CacheInfo)


async def check_results() -> None:
    from opero import Err, Ok

    outcome = lookup.result("k")
    assert_type(outcome, Ok[list[float]] | Err)
    match outcome:
        case Ok(value):
            assert_type(value, list[float])
        case Err(error):
            assert_type(error, Exception)
    if isinstance(outcome, Ok):
        assert_type(outcome.value, list[float])
    fetched = await fetch.result("u")
    assert_type(fetched, Ok[bytes] | Err)


async def check_map_results() -> None:
    from opero import Err, Ok

    for outcome in in_processes.imap_results([1]):
        assert_type(outcome, Ok[int] | Err)
    async for value in in_tasks.imap_results([1]):
        assert_type(value, Ok[int] | Err)
