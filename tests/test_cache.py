"""The cache step: keys, semantics, single-flight, per-function controls."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import Flaky
from helpers import run_python
from opero import opero
from opero.core.cache_keys import KeyBuilder, portable_key


class Counter:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def hit(self, *args: Any) -> int:
        self.calls.append(args)
        return len(self.calls)


def test_positional_keyword_and_default_share_one_key() -> None:
    counter = Counter()

    @opero
    def f(x: int, y: int = 2) -> int:
        return counter.hit(x, y)

    assert f(1) == f(1, 2) == f(1, y=2) == f(x=1) == f(y=2, x=1) == 1
    assert f(1, 3) == 2
    assert counter.calls == [(1, 2), (1, 3)]
    assert f.cache_info() == (4, 2, 2)  # type: ignore[attr-defined]


def test_keyword_only_and_var_arguments_bind_too() -> None:
    counter = Counter()

    @opero
    def f(a: int, *rest: int, scale: int = 1, **extra: int) -> int:
        return counter.hit(a, rest, scale, extra)

    assert f(1, 2, 3, scale=1, z=4) == f(1, 2, 3, z=4) == 1
    assert f(1, 2, 3, scale=2, z=4) == 2
    assert f(1, 2, 3, z=5) == 3
    assert len(counter.calls) == 3


def test_lists_and_dicts_as_arguments() -> None:
    counter = Counter()

    @opero
    def f(items: list[int], options: dict[str, int] | None = None) -> int:
        return counter.hit(tuple(items), options)

    assert f([1, 2], {"a": 1, "b": 2}) == f([1, 2], {"b": 2, "a": 1}) == 1
    assert f([1, 3], {"a": 1, "b": 2}) == 2
    assert f([1, 2], {"a": 1, "b": 3}) == 3
    assert f([[1], {2}], None) == 4  # type: ignore[list-item]
    assert f([[1], {2}], None) == 4  # type: ignore[list-item]


def test_exceptions_are_never_cached_but_none_is() -> None:
    flaky = Flaky(ValueError("no"))

    @opero(retries=0)
    def f(x: int) -> object:
        return flaky(x)

    with pytest.raises(ValueError, match="no"):
        f(1)
    assert f(1) == 1
    assert f(1) == 1
    assert len(flaky.calls) == 2

    nones = Counter()

    @opero
    def g() -> None:
        nones.hit()

    assert g() is None
    assert g() is None
    assert len(nones.calls) == 1


def test_a_hit_runs_no_retry_and_no_call(sleeps: list[float]) -> None:
    flaky = Flaky(OSError("once"))
    f = opero(retries=2)(flaky)
    assert f(5) == 5
    assert len(flaky.calls) == 2
    assert len(sleeps) == 1
    assert f(5) == 5
    assert len(flaky.calls) == 2
    assert len(sleeps) == 1


def test_fallback_result_is_cached_under_the_arguments_as_passed(sleeps: list[float]) -> None:
    models: list[str] = []

    @opero(retries=0, arg_fallback="model")
    def ask(prompt: str, model: Any = ("a", "b")) -> str:
        models.append(model)
        if model == "a":
            raise ConnectionError
        return f"{prompt}:{model}"

    assert ask("hi") == ask("hi") == ask("hi", ("a", "b")) == "hi:b"
    assert models == ["a", "b"]


def test_custom_cache_key() -> None:
    counter = Counter()

    @opero(cache_key=lambda prompt, **_: prompt.lower())
    def f(prompt: str, request_id: int = 0) -> int:
        return counter.hit(prompt)

    assert f("Hello", request_id=1) == f("HELLO", request_id=2) == 1
    assert f("bye") == 2


def test_ttl_expires_entries() -> None:
    counter = Counter()

    @opero(cache_ttl=0.05)
    def f() -> int:
        return counter.hit()

    assert f() == f() == 1
    time.sleep(0.08)
    assert f() == 2
    assert f.cache_info().size == 1  # type: ignore[attr-defined]


def test_maxsize_evicts_the_least_recently_used() -> None:
    counter = Counter()

    @opero(cache_maxsize=2)
    def f(x: str) -> int:
        return counter.hit(x)

    f("a")
    f("b")
    f("a")  # "a" is now more recent than "b"
    f("c")  # evicts "b"
    f("a")
    f("b")
    assert [c[0] for c in counter.calls] == ["a", "b", "c", "b"]
    assert f.cache_info().size == 2  # type: ignore[attr-defined]


def test_cache_clear_and_info() -> None:
    counter = Counter()

    @opero
    def f(x: int) -> int:
        return counter.hit(x)

    f(1)
    f(1)
    f(2)
    assert f.cache_info() == (1, 2, 2)  # type: ignore[attr-defined]
    f.cache_clear()  # type: ignore[attr-defined]
    assert f.cache_info() == (0, 0, 0)  # type: ignore[attr-defined]
    f(1)
    assert len(counter.calls) == 3


def test_without_cache_every_call_runs() -> None:
    counter = Counter()

    @opero(cache=False)
    def f() -> int:
        return counter.hit()

    assert (f(), f()) == (1, 2)
    assert f.cache_info() == (0, 0, 0)  # type: ignore[attr-defined]


def test_methods_are_cached_per_instance() -> None:
    class Model:
        def __init__(self, name: str) -> None:
            self.name = name
            self.calls = 0

        @opero
        def ask(self, prompt: str) -> str:
            self.calls += 1
            return f"{self.name}:{prompt}"

    a, b = Model("a"), Model("b")
    assert a.ask("x") == a.ask("x") == "a:x"
    assert b.ask("x") == "b:x"
    assert (a.calls, b.calls) == (1, 1)


def test_single_flight_threads() -> None:
    counter = Counter()
    barrier = threading.Barrier(8)

    @opero
    def slow(x: int) -> int:
        time.sleep(0.05)
        return counter.hit(x) * 100

    results: list[int] = []

    def worker() -> None:
        barrier.wait()
        results.append(slow(1))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [100] * 8
    assert len(counter.calls) == 1
    assert slow.cache_info().misses == 1  # type: ignore[attr-defined]


def test_single_flight_threads_share_a_failure_and_cache_nothing() -> None:
    counter = Counter()
    barrier = threading.Barrier(4)

    @opero(retries=0)
    def slow() -> int:
        counter.hit()
        time.sleep(0.05)
        raise ConnectionError("down")

    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            slow()
        except ConnectionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 4
    assert len(counter.calls) == 1
    with pytest.raises(ConnectionError):
        slow()
    assert len(counter.calls) == 2


async def test_async_caches_the_awaited_value() -> None:
    counter = Counter()

    @opero
    async def f(x: int) -> int:
        await asyncio.sleep(0)
        return counter.hit(x)

    assert await f(1) == 1
    assert await f(1) == 1
    assert await f(x=1) == 1
    assert len(counter.calls) == 1


async def test_single_flight_tasks() -> None:
    counter = Counter()

    @opero
    async def slow(x: int) -> int:
        await asyncio.sleep(0.05)
        return counter.hit(x)

    results = await asyncio.gather(*(slow(7) for _ in range(20)))
    assert results == [1] * 20
    assert len(counter.calls) == 1


async def test_single_flight_tasks_share_a_failure() -> None:
    counter = Counter()

    @opero(retries=0)
    async def slow() -> int:
        counter.hit()
        await asyncio.sleep(0.02)
        raise ConnectionError("down")

    results = await asyncio.gather(*(slow() for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert len(counter.calls) == 1


async def test_cancelled_leader_hands_over_to_a_waiter() -> None:
    counter = Counter()

    @opero
    async def slow() -> int:
        await asyncio.sleep(0.05)
        return counter.hit()

    leader = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    leader.cancel()
    assert await waiter == 1
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_works_on_two_event_loops_in_turn() -> None:
    counter = Counter()

    @opero
    async def f() -> int:
        await asyncio.sleep(0)
        return counter.hit()

    def in_new_loop() -> int:
        return asyncio.run(f())

    first = await asyncio.to_thread(in_new_loop)
    second = await asyncio.to_thread(in_new_loop)
    assert first == second == 1


class RecordingBackend:
    def __init__(self) -> None:
        self.entries: dict[str, object] = {}
        self.ttls: list[float | None] = []

    def get(self, key: str) -> object:
        return self.entries[key]

    def set(self, key: str, value: object, ttl: float | None) -> None:
        self.ttls.append(ttl)
        self.entries[key] = value

    def delete(self, key: str) -> None:
        self.entries.pop(key, None)

    def clear(self) -> None:
        self.entries.clear()


def test_backend_objects_get_portable_keys_and_the_ttl() -> None:
    backend = RecordingBackend()

    @opero(cache_backend=backend, cache_ttl=30)
    def f(x: int) -> int:
        return x * 2

    @opero(cache_backend=backend)
    def g(x: int) -> int:
        return x * 3

    assert f(1) == f(x=1) == 2
    assert g(1) == 3
    keys = list(backend.entries)
    assert len(keys) == 2
    identity_f = f"{__name__}:test_backend_objects_get_portable_keys_and_the_ttl.<locals>.f:"
    assert keys[0].startswith(identity_f)
    assert all(len(key.rsplit(":", 1)[1]) == 64 for key in keys)
    assert backend.ttls == [30, None]


def test_portable_keys_are_the_same_in_another_process() -> None:
    args = ("text", 1, 2.5, None, True, b"raw", [1, {"k": (2, 3)}], {"s", "t"})
    here = portable_key("mod:f", args)
    result = run_python(
        f"""
        from opero.core.cache_keys import portable_key
        print(portable_key("mod:f", {args!r}))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == here
    assert portable_key("mod:g", args) != here


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


@given(a=json_values, b=json_values)
def test_property_equal_arguments_equal_keys(a: Any, b: Any) -> None:
    def f(x: Any, y: Any = None) -> None: ...

    keys = KeyBuilder(f, None)
    key_positional = keys.build((a, b), {})
    assert key_positional == keys.build((a,), {"y": b})
    assert key_positional == keys.build((), {"x": a, "y": b})
    hash(key_positional)
    assert portable_key("m:f", key_positional) == portable_key("m:f", keys.build((a, b), {}))
