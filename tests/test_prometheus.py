"""opero.prometheus: counters and the duration histogram, read back from a real registry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from opero import AllFailedError, opero
from opero.prometheus import instrument


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    """A fresh registry, instrumented for the test (uninstalled after it)."""
    fresh = CollectorRegistry()
    uninstall = instrument(registry=fresh)
    try:
        yield fresh
    finally:
        uninstall()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled child never touched (None in the registry)."""
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def calls(registry: CollectorRegistry, function: str, outcome: str) -> float:
    return value(registry, "opero_calls_total", function=function, outcome=outcome)


def attempts(registry: CollectorRegistry, function: str, outcome: str) -> float:
    return value(registry, "opero_attempts_total", function=function, outcome=outcome)


def flaky(failures: int) -> Callable[[], None]:
    """Raises ValueError `failures` times, then returns."""
    left = [failures]

    def step() -> None:
        if left[0]:
            left[0] -= 1
            raise ValueError("flaky")

    return step


def test_sync_calls_attempts_retries_and_durations(registry: CollectorRegistry) -> None:
    step = flaky(2)

    @opero(cache=False, retries=2, min_delay=0)
    def fetch() -> str:
        time.sleep(0.01)
        step()
        return "ok"

    @opero(cache=False, retries=2, min_delay=0)
    def broken() -> None:
        raise TypeError("no")

    assert fetch() == "ok"
    assert fetch() == "ok"
    with pytest.raises(TypeError):
        broken()
    ok, bad = fetch.__qualname__, broken.__qualname__
    assert calls(registry, ok, "success") == 2
    assert calls(registry, ok, "failure") == 0
    assert calls(registry, bad, "failure") == 1
    assert calls(registry, bad, "success") == 0
    assert attempts(registry, ok, "failure") == 2
    assert attempts(registry, ok, "success") == 2
    assert attempts(registry, bad, "failure") == 3
    assert value(registry, "opero_retries_total", function=ok) == 2
    assert value(registry, "opero_retries_total", function=bad) == 2
    duration = "opero_call_duration_seconds"
    assert value(registry, f"{duration}_count", function=ok, outcome="success") == 2
    assert value(registry, f"{duration}_count", function=bad, outcome="failure") == 1
    # Four attempts of fetch slept 10 ms each (the first call made three of them).
    assert value(registry, f"{duration}_sum", function=ok, outcome="success") >= 0.04
    assert value(registry, f"{duration}_bucket", function=ok, outcome="success", le="+Inf") == 2


async def test_async_calls_and_a_cache_hit(registry: CollectorRegistry) -> None:
    step = flaky(1)

    @opero(retries=1, min_delay=0)  # cached by default
    async def lookup(x: int) -> int:
        await asyncio.sleep(0.01)
        step()
        return x * 2

    @opero(cache=False, retries=1, min_delay=0)
    async def broken() -> None:
        await asyncio.sleep(0)
        raise KeyError("no")

    assert await lookup(1) == 2  # a miss that fails once, then succeeds
    assert await lookup(1) == 2  # a hit
    assert await lookup(1) == 2  # a hit
    with pytest.raises(KeyError):
        await broken()
    name = lookup.__qualname__
    assert calls(registry, name, "success") == 1
    assert calls(registry, name, "cache_hit") == 2
    assert calls(registry, broken.__qualname__, "failure") == 1
    assert attempts(registry, name, "failure") == 1
    assert attempts(registry, name, "success") == 1
    assert attempts(registry, broken.__qualname__, "failure") == 2
    assert value(registry, "opero_retries_total", function=name) == 1
    # Cache hits ran nothing: they are not in the duration histogram.
    duration = "opero_call_duration_seconds"
    assert value(registry, f"{duration}_count", function=name, outcome="success") == 1
    assert value(registry, f"{duration}_sum", function=name, outcome="success") >= 0.02


def test_sync_cache_hit(registry: CollectorRegistry) -> None:
    @opero(retries=0)
    def square(x: int) -> int:
        return x * x

    square(2)
    square(2)
    square(3)
    assert calls(registry, square.__qualname__, "success") == 2
    assert calls(registry, square.__qualname__, "cache_hit") == 1
    assert attempts(registry, square.__qualname__, "success") == 2


def test_fallback_switches_are_counted(registry: CollectorRegistry) -> None:
    @opero(cache=False, retries=0, arg_fallback="model")
    def ask(model: list[str] | str) -> str:
        if model != "c":
            raise ConnectionError(str(model))
        return str(model)

    assert ask(model=["a", "b", "c"]) == "c"
    with pytest.raises(AllFailedError):
        ask(model=["a", "b"])
    name = ask.__qualname__
    assert value(registry, "opero_fallbacks_total", function=name) == 3
    assert value(registry, "opero_retries_total", function=name) == 0
    assert calls(registry, name, "success") == 1
    assert calls(registry, name, "failure") == 1
    assert attempts(registry, name, "failure") == 4


def test_instrumenting_twice_reuses_the_collectors_and_counts_once(
    registry: CollectorRegistry,
) -> None:
    @opero(cache=False, retries=0)
    def ping() -> None:
        return None

    uninstall_again = instrument(registry=registry)  # must not raise "Duplicated timeseries"
    try:
        ping()
        assert calls(registry, ping.__qualname__, "success") == 1
    finally:
        uninstall_again()
        uninstall_again()  # twice is harmless, and does not undo the fixture's instrument
    ping()  # the fixture's instrument still counts
    assert calls(registry, ping.__qualname__, "success") == 2


def test_uninstall_stops_counting() -> None:
    fresh = CollectorRegistry()
    uninstall = instrument(registry=fresh)

    @opero(cache=False, retries=0)
    def ping() -> None:
        return None

    try:
        ping()
    finally:
        uninstall()
    ping()
    assert calls(fresh, ping.__qualname__, "success") == 1
    uninstall_again = instrument(registry=fresh)  # and instrumenting anew works
    try:
        ping()
    finally:
        uninstall_again()
    assert calls(fresh, ping.__qualname__, "success") == 2


def test_namespace_and_separate_registries() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    uninstalls = [instrument(registry=first, namespace="myapp"), instrument(registry=second)]

    @opero(cache=False, retries=0)
    def ping() -> None:
        return None

    try:
        ping()
    finally:
        for uninstall in uninstalls:
            uninstall()
    name = ping.__qualname__
    assert value(first, "myapp_calls_total", function=name, outcome="success") == 1
    assert calls(first, name, "success") == 0  # no opero_ names in that registry
    assert calls(second, name, "success") == 1


def test_the_default_registry_is_prometheus_clients() -> None:
    namespace = "opero_test_default_registry"  # collectors stay registered in REGISTRY
    uninstall = instrument(namespace=namespace)

    @opero(cache=False, retries=0)
    def ping() -> None:
        return None

    try:
        ping()
    finally:
        uninstall()
    labels = {"function": ping.__qualname__, "outcome": "success"}
    assert REGISTRY.get_sample_value(f"{namespace}_calls_total", labels) == 1


def doubled(x: int) -> int:
    if x == 2:
        raise ValueError("two")
    return x * 2


def test_process_mode_items_count_in_the_parents_registry(registry: CollectorRegistry) -> None:
    from opero import OpmapError, opmap

    mapped = opmap(mode="process", workers=2, chunksize=1, cache=False, retries=0, progress=False)
    with pytest.raises(OpmapError):
        mapped(doubled)(range(5))
    name = doubled.__qualname__
    assert calls(registry, name, "success") == 4
    assert calls(registry, name, "failure") == 1
    assert attempts(registry, name, "success") == 4
