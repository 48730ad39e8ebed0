"""The cache step: keys, semantics, single-flight, per-function controls."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import Flaky
from helpers import run_python
from opero import opero
from opero._cache.keys import KeyBuilder, memory_key, portable_key


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
    def g() -> object:  # (annotated `-> None`, it would be called for its effects: uncached)
        nones.hit()
        return None

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
    info = slow.cache_info()  # type: ignore[attr-defined]
    # The 7 that waited for the one computation were served by it: hits, as a late
    # caller served from the stored value would be.
    assert (info.hits, info.misses) == (7, 1)


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
    info = slow.cache_info()  # type: ignore[attr-defined]
    assert (info.hits, info.misses) == (19, 1)


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
    # A local function's identity carries a digest of its code and captured values.
    identity_f = f"{__name__}:test_backend_objects_get_portable_keys_and_the_ttl.<locals>.f#"
    assert keys[0].startswith(identity_f)
    assert all(re.fullmatch(r"[^:]+:[^:]+#[0-9a-f]{16}:[0-9a-f]{64}", key) for key in keys)
    assert backend.ttls == [30, None]


def test_portable_keys_are_the_same_in_another_process() -> None:
    args = ("text", 1, 2.5, None, True, b"raw", [1, {"k": (2, 3)}], {"s", "t"})
    here = portable_key("mod:f", args)
    result = run_python(
        f"""
        from opero._cache.keys import portable_key
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
    bound = keys.bound((a, b), {})
    assert bound == keys.bound((a,), {"y": b}) == keys.bound((), {"x": a, "y": b})
    frozen = memory_key(bound)
    hash(frozen)
    assert frozen == memory_key(keys.bound((), {"y": b, "x": a}))
    assert portable_key("m:f", bound) == portable_key("m:f", keys.bound((a,), {"y": b}))


@given(a=json_values, b=json_values)
def test_property_different_arguments_different_keys(a: Any, b: Any) -> None:
    def f(x: Any) -> None: ...

    keys = KeyBuilder(f, None)
    # Keys may only coincide when the arguments are equal, compared with their types.
    same = repr(a) == repr(b) and type(a) is type(b)
    assert (
        portable_key("m:f", keys.bound((a,), {})) == portable_key("m:f", keys.bound((b,), {}))
    ) == same


def test_frozen_lists_do_not_collide_with_tuples_that_look_alike() -> None:
    counter = Counter()

    @opero
    def f(x: Any) -> int:
        return counter.hit(x)

    assert f([1, 2]) == 1
    assert f(("<list>", (1, 2))) == 2
    assert f(("list", (1, 2))) == 3
    assert f({"a": 1}) == 4
    assert f((("a", 1),)) == 5
    assert f([1, 2]) == 1


def test_keyword_calls_share_the_positional_key_without_binding() -> None:
    counter = Counter()

    @opero
    def f(a: int, b: int = 2, c: int = 3) -> int:
        return counter.hit(a, b, c)

    assert f(1, c=3) == f(1) == f(a=1, b=2) == f(c=3, a=1) == 1
    assert f(1, c=4) == 2
    keys = KeyBuilder(f.__wrapped__, None)  # type: ignore[attr-defined]
    assert keys.bound((1,), {"c": 3}) == (1, 2, 3)
    with pytest.raises(TypeError):
        keys.bound((1,), {"d": 3})


def test_unkeyable_arguments_are_called_through_with_a_warning(opero_logs: list[str]) -> None:
    counter = Counter()

    class Holder:
        __hash__ = None  # type: ignore[assignment]

        def __init__(self) -> None:
            self.lock = threading.Lock()  # neither hashable nor picklable

    @opero
    def f(h: Holder) -> int:
        return counter.hit(h)

    holder = Holder()
    assert (f(holder), f(holder)) == (1, 2)
    warning = "f(): cache key failed with UnkeyableArgumentsError"  # it names the function
    assert any(warning in line for line in opero_logs)


def test_custom_cache_key_that_raises_propagates() -> None:
    def broken_key(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("bug in cache_key")

    @opero(cache_key=broken_key)
    def f(x: int) -> int:
        return x

    with pytest.raises(RuntimeError, match="bug in cache_key"):
        f(1)


def test_arguments_that_do_not_bind_raise_the_natural_type_error() -> None:
    @opero
    def f(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="unexpected keyword argument 'y'"):
        f(1, y=2)  # type: ignore[call-arg]


def test_the_calls_own_exception_has_no_cache_context() -> None:
    error = ValueError("mine")

    @opero(retries=0)
    def f() -> int:
        raise error

    with pytest.raises(ValueError, match="mine") as info:
        f()
    assert info.value.__context__ is None


def test_a_leader_stopped_by_keyboard_interrupt_hands_over_to_waiters() -> None:
    started = threading.Event()
    release = threading.Event()
    calls: list[str] = []

    @opero
    def f() -> str:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            started.set()
            release.wait(5)
            raise KeyboardInterrupt
        return "computed by a waiter"

    results: list[object] = []

    def leader() -> None:
        try:
            f()
        except KeyboardInterrupt:
            results.append("leader interrupted")

    def waiter() -> None:
        started.wait(5)
        results.append(f())

    threads = [threading.Thread(target=leader), threading.Thread(target=waiter)]
    threads[0].start()
    threads[1].start()
    time.sleep(0.05)  # the waiter is now waiting on the leader's flight
    release.set()
    for thread in threads:
        thread.join(5)
    assert sorted(map(str, results)) == ["computed by a waiter", "leader interrupted"]
    assert len(calls) == 2


async def test_a_waiter_cancelled_with_its_leader_stays_cancelled() -> None:
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
    waiter.cancel()
    results = await asyncio.gather(leader, waiter, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    await asyncio.sleep(0.08)
    assert counter.calls == []
