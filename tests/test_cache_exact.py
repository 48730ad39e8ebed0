"""Memory hit paths compiled with the function's own parameters (`opero._cache.exact`),
and the `*args, **kwargs` paths (`opero._cache.hits`) that functions whose signature may
not be their own keep: both must share entries between spellings of a call, count,
expire and fail exactly alike."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from helpers import FakeClock
from opero import opero
from opero._cache import memory


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(memory, "clock", fake)
    return fake


def exact(fn: Any) -> bool:
    return str(fn.__code__.co_filename).startswith("<opero cache hit of ")


def passthrough(func: Callable[..., Any]) -> Callable[..., Any]:
    """A user's decorator: its signature as reported is the function's, not its own."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def as_is(func: Callable[..., Any]) -> Callable[..., Any]:
    return func


@pytest.fixture(params=[as_is, passthrough], ids=["exact", "generic"])
def shape(request: pytest.FixtureRequest) -> Callable[..., Any]:
    return request.param  # type: ignore[no-any-return]


def test_each_path_is_the_one_the_function_gets(shape: Callable[..., Any]) -> None:
    @opero
    @shape
    def f(x: int) -> int:
        return x

    assert exact(f) is (shape is as_is)
    assert f.__name__ == "f"
    assert f(3) == 3


@pytest.mark.parametrize("ttl", [None, 60.0])
def test_every_spelling_shares_one_entry_on_both_paths(
    shape: Callable[..., Any], ttl: float | None
) -> None:
    calls: list[tuple[int, int, int]] = []

    @opero(cache_ttl=ttl)
    @shape
    def f(x: int, y: int = 2, z: int = 3) -> int:
        calls.append((x, y, z))
        return x + y + z

    spellings = [f(1), f(1, 2), f(1, 2, 3), f(x=1), f(1, z=3), f(z=3, y=2, x=1), f(1, y=2)]
    assert spellings == [6] * 7
    assert calls == [(1, 2, 3)]
    assert f.cache_info()[:2] == (6, 1)  # type: ignore[attr-defined]
    assert f(1, 5) == 9
    assert f(1, y=5) == 9
    assert calls == [(1, 2, 3), (1, 5, 3)]


def test_calls_that_do_not_bind_raise_what_the_function_would(shape: Callable[..., Any]) -> None:
    calls: list[int] = []

    @opero(retries=2)
    @shape
    def f(x: int, y: int = 2) -> int:
        calls.append(x)
        return x

    def plain(x: int, y: int = 2) -> int:
        return x

    for bad in [lambda g: g(1, 2, 3), lambda g: g(), lambda g: g(1, z=3), lambda g: g(1, x=1)]:
        with pytest.raises(TypeError) as ours:
            bad(f)
        with pytest.raises(TypeError) as natural:
            bad(plain)
        assert str(ours.value).startswith(f"{f.__qualname__}(")
        named = str(natural.value).replace(plain.__qualname__, f.__qualname__)
        assert str(ours.value) == named
    assert calls == []  # never called, never retried


def test_positional_only_parameters_stay_positional() -> None:
    calls: list[tuple[int, int]] = []

    @opero
    def f(a: int, b: int = 1, /, c: int = 2) -> int:
        calls.append((a, b))
        return a + b + c

    assert exact(f)
    assert f(1) == f(1, 1) == f(1, 1, 2) == f(1, c=2) == 4
    assert calls == [(1, 1)]
    with pytest.raises(TypeError, match="positional-only"):
        f(a=1)  # type: ignore[call-arg]


def test_defaults_are_the_function_s_own_objects() -> None:
    marker = object()
    seen: list[object] = []

    @opero
    def f(x: int, default: object = marker) -> object:
        seen.append(default)
        return default

    assert f(1) is marker
    assert f(1, marker) is marker
    assert f(1, default=marker) is marker
    assert seen == [marker]


def test_a_parameter_with_opero_s_own_prefix_keeps_the_generic_path() -> None:
    @opero
    def f(_opero_hot: int, _opero_key: int = 1) -> int:
        return _opero_hot + _opero_key

    assert not exact(f)
    assert f(1) == f(1, 1) == f(_opero_hot=1) == 2
    assert f.cache_info()[:2] == (2, 1)  # type: ignore[attr-defined]


def test_parameters_named_like_builtins_or_the_wrapper_are_the_caller_s() -> None:
    @opero(cache_ttl=60)
    def f(len: int, Exception: int = 1, KeyError: int = 2, cached: int = 3) -> int:
        return len + Exception + KeyError + cached

    assert exact(f)
    assert f(1) == f(len=1) == f(1, 1, 2, 3) == 7
    assert f(1, cached=4) == 8
    assert f.cache_info()[:2] == (2, 2)  # type: ignore[attr-defined]


def test_keyword_only_and_variadic_signatures_keep_the_generic_path() -> None:
    @opero
    def f(x: int, *, y: int = 2) -> int:
        return x + y

    @opero
    def g(*items: int) -> int:
        return sum(items)

    assert not exact(f)
    assert not exact(g)
    assert f(1) == f(1, y=2) == f(x=1) == 3
    assert f.cache_info()[:2] == (2, 1)  # type: ignore[attr-defined]
    assert g(1, 2) == g(1, 2) == 3
    assert g.cache_info()[:2] == (1, 1)  # type: ignore[attr-defined]


def test_a_wrapper_that_takes_more_than_it_reports_keeps_working() -> None:
    # A user's decorator that reports the function's signature but takes an extra
    # keyword: the generic path calls it through with that keyword, as before.
    def with_scale(func: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(func)
        def wrapper(*args: Any, scale: int = 1, **kwargs: Any) -> int:
            return func(*args, **kwargs) * scale

        return wrapper

    @opero
    @with_scale
    def f(x: int) -> int:
        return x

    assert not exact(f)
    assert f(2) == 2
    assert f(2, scale=3) == 6


def test_unhashable_arguments_hit_through_their_frozen_key(shape: Callable[..., Any]) -> None:
    calls: list[Any] = []

    @opero
    @shape
    def f(items: list[int], scale: int = 1) -> int:
        calls.append(items)
        return sum(items) * scale

    assert f([1, 2]) == f([1, 2], 1) == f(items=[1, 2]) == f([1, 2], scale=1) == 3
    assert len(calls) == 1
    assert f.cache_info().hits == 3  # type: ignore[attr-defined]


def test_ttl_expiry_is_a_miss_on_both_paths(shape: Callable[..., Any], clock: FakeClock) -> None:
    calls: list[int] = []

    @opero(cache_ttl=10)
    @shape
    def f(x: int, y: int = 0) -> int:
        calls.append(x)
        return len(calls)

    assert f(1) == 1
    clock.now += 9.999
    assert f(1) == f(x=1) == f(1, 0) == 1
    clock.now += 0.001  # the entry's time: expired, as in cachetools
    assert f(x=1) == 2
    assert f(1) == 2
    assert f.cache_info()[:2] == (4, 2)  # type: ignore[attr-defined]


def async_passthrough(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await func(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("async_shape", [as_is, async_passthrough], ids=["exact", "generic"])
async def test_async_hits_on_both_paths(async_shape: Callable[..., Any]) -> None:
    calls: list[Any] = []

    @opero
    @async_shape
    async def f(x: Any, y: int = 0) -> Any:
        calls.append(x)
        return x

    assert exact(f) is (async_shape is as_is)
    assert await f(1) == await f(1, 0) == await f(x=1) == await f(y=0, x=1) == 1
    assert await f([1]) == await f(x=[1]) == [1]
    assert calls == [1, [1]]
    assert f.cache_info()[:2] == (4, 2)  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="unexpected keyword"):
        await f(1, z=2)


def test_an_error_of_the_function_carries_no_cache_context() -> None:
    @opero
    def f(x: int) -> int:
        raise ValueError(x)

    with pytest.raises(ValueError, match="1") as caught:
        f(1)
    assert caught.value.__context__ is None
