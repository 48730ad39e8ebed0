"""Random option sets: decoration accepts a set or names the option it refuses, and an
accepted set never breaks at call time because of an option value."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from opero import AttemptTimeoutError, DeadlineExceededError, opero, opmap
from opero._pipeline.options import MAX_SECONDS
from opero._policies.breaker import CircuitBreakerOptions

NUMBERS = st.one_of(  # anything a user might pass, right or wrong
    st.none(),
    st.booleans(),
    st.integers(-5, 10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1e-9, 0.001, 1, 64, 65, MAX_SECONDS, MAX_SECONDS * 1.01, 9223372037.0]),
    st.sampled_from([10**6, 10**9, 10**12, 2**63]),
    st.text(max_size=2),
)


def ignore(*args: Any, **kwargs: Any) -> None:
    return None


CALLABLES = st.sampled_from([None, ignore, lambda *args, **kwargs: 0, 1, "f"])
# Valid-looking values three times as often as anything: a set is accepted only when
# every option in it is, and the accepted sets with extreme values are the point.
DURATIONS = st.one_of(
    st.floats(0.5, 1e10),
    st.sampled_from([1, MAX_SECONDS, MAX_SECONDS * 1.01, 9223372037.0, 1e12, 2**63]),
)
COUNTS = st.one_of(st.integers(0, 10**13), st.sampled_from([1, 64, 65, 10**9, 10**12]))


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(valid, valid, valid, NUMBERS)


def backup(x: int, model: tuple[str, ...] = ("a", "b")) -> int:
    return x


OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "cache": st.one_of(st.booleans(), NUMBERS),
    "cache_ttl": mostly(DURATIONS),
    "cache_backend": st.sampled_from(["memory", "memory", "disk", "bogus", 1, None]),
    "cache_key": CALLABLES,
    "cache_namespace": st.sampled_from(["opero", "fuzz", "fuzz", "", "a/../b", "/abs", 3]),
    "cache_maxsize": mostly(COUNTS),
    "retries": mostly(COUNTS),
    "backoff_factor": mostly(st.floats(1, 1e6)),
    "min_delay": mostly(st.one_of(st.just(0), DURATIONS)),
    "max_delay": mostly(DURATIONS),
    "retry_on": st.sampled_from(
        [Exception, ValueError, (ValueError, KeyError), lambda exc: True, 1, KeyboardInterrupt]
    ),
    "jitter": st.one_of(st.booleans(), NUMBERS),
    "arg_fallback": st.sampled_from([None, "model", "model", "missing", 1, ""]),
    "fallback": st.sampled_from([None, backup, [backup], [], "backup", 1]),
    "hedge_after": st.sampled_from([None, None, 0.5, [0.1, 1], [], -1, "soon"]),
    "rate_limit": mostly(st.one_of(st.floats(1e-8, 1e12), st.just("auto"))),
    "rate_limit_max": mostly(st.floats(1e-8, 1e12)),
    "rate_limit_burst": mostly(st.integers(1, 10**6)),
    "rate_limit_backend": st.sampled_from(["local", "local", "bogus", 1]),
    "rate_limit_key": st.sampled_from([None, None, "key", "", 1]),
    "rate_limit_backpressure": st.one_of(st.booleans(), NUMBERS),
    "timeout": mostly(DURATIONS),
    "total_timeout": mostly(DURATIONS),
    "timeout_mode": st.sampled_from(["abandon", "interrupt", "interrupt", "kill", 1, None]),
    "circuit_breaker": st.sampled_from([None, True, False, 1, CircuitBreakerOptions()]),
    "max_concurrency": mostly(COUNTS),
    "max_concurrency_wait": mostly(st.one_of(st.just(0), DURATIONS)),
    "retry_if_result": st.sampled_from([None, lambda result: False, 1]),
    "retry_budget": mostly(st.floats(0, 1)),
    "on_event": st.sampled_from([None, ignore, [ignore], [], "hook"]),
    "stats": st.one_of(st.booleans(), NUMBERS),
}
MAP_OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "workers": mostly(st.integers(1, 8)),
    "chunksize": mostly(COUNTS),
    "ordered": st.one_of(st.booleans(), NUMBERS),
    "return_exceptions": st.one_of(st.booleans(), NUMBERS),
    "progress": st.sampled_from([False, True, "always", "sometimes", 1]),
}


def option_sets(strategies: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Up to 6 options at once: larger sets hold a bad value almost always."""
    names = st.lists(st.sampled_from(sorted(strategies)), max_size=6, unique=True)
    return names.flatmap(lambda chosen: st.fixed_dictionaries({n: strategies[n] for n in chosen}))


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    saved = os.environ.get("OPERO_CACHE_DIR")
    os.environ["OPERO_CACHE_DIR"] = str(tmp_path_factory.mktemp("fuzz-cache"))
    yield
    if saved is None:
        del os.environ["OPERO_CACHE_DIR"]
    else:
        os.environ["OPERO_CACHE_DIR"] = saved


def echo(x: int, model: tuple[str, ...] = ("a", "b")) -> int:
    return x


def legitimately_too_short(options: dict[str, Any], error: BaseException) -> bool:
    """A tiny timeout may end a call: that is the option doing its job."""
    if isinstance(error, AttemptTimeoutError):
        return options.get("timeout", 1) < 1
    if isinstance(error, DeadlineExceededError):
        return options.get("total_timeout", 1) < 1
    return False


def refused_by_name(options: dict[str, Any], error: Exception) -> bool:
    return any(name in str(error) for name in options)


def attempt(thunk: Any) -> tuple[Any, Exception | None]:
    """What `thunk()` returns, or the exception it raised."""
    try:
        return thunk(), None
    except Exception as error:
        return None, error


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(option_sets(OPTIONS))
@example({"timeout": 9223372037.0})  # the two the issue found
@example({"max_concurrency": 10**12})
@example({"timeout": MAX_SECONDS, "max_concurrency": 10**12, "max_concurrency_wait": 0})
def test_opero_accepts_or_names_the_option_and_accepted_sets_work(options: dict[str, Any]) -> None:
    decorated, refused = attempt(lambda: opero(**options)(echo))
    if refused is not None:
        assert isinstance(refused, TypeError | ValueError), (options, refused)
        assert refused_by_name(options, refused), (options, refused)
        return
    rate = options.get("rate_limit")
    slow = isinstance(rate, int | float) and not isinstance(rate, bool) and rate < 10
    for _ in range(1 if slow else 2):  # the second is a cache hit, where cached (a slow
        # limit would make an uncached second call wait its turn: 1/rate seconds)
        value, failed = attempt(lambda: decorated(7))
        if failed is not None:
            assert legitimately_too_short(options, failed), (options, failed)
        else:
            assert value == 7
    decorated.cache_clear()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(option_sets(OPTIONS), option_sets(MAP_OPTIONS))
def test_opmap_accepts_or_names_the_option_and_accepted_sets_work(
    options: dict[str, Any], own: dict[str, Any]
) -> None:
    given_options = {**options, **own}
    if given_options.get("progress") in {True, "always"}:  # keep the test's output clean
        given_options["progress"] = False
    mapped, refused = attempt(lambda: opmap(mode="thread", **given_options)(echo))
    if refused is not None:
        assert isinstance(refused, TypeError | ValueError), (given_options, refused)
        assert refused_by_name(given_options, refused), (given_options, refused)
        return
    results, failed = attempt(lambda: mapped([7]))
    if failed is not None:  # OpmapError: look at the item's own failure
        failed = getattr(failed, "failures", {}).get(0, failed)
        assert legitimately_too_short(options, failed), (given_options, failed)
        return
    if given_options.get("return_exceptions") is True and isinstance(results[0], Exception):
        assert legitimately_too_short(options, results[0]), (given_options, results[0])
        return
    assert results == [7]


@pytest.mark.parametrize(
    "name",
    ["cache_ttl", "min_delay", "max_delay", "timeout", "total_timeout", "max_concurrency_wait"],
)
def test_durations_above_the_limit_are_refused_naming_the_option(name: str) -> None:
    extra = {"max_concurrency": 1} if name == "max_concurrency_wait" else {}
    if name == "min_delay":
        extra["max_delay"] = MAX_SECONDS
    with pytest.raises(ValueError, match=f"{name} must be at most 1e\\+09 seconds"):
        opero(**{name: MAX_SECONDS * 2}, **extra)


def test_the_longest_timeout_works() -> None:
    assert opero(timeout=MAX_SECONDS, total_timeout=MAX_SECONDS, cache=False)(echo)(3) == 3


def test_a_huge_bulkhead_costs_what_a_small_one_does() -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        decorated = opero(max_concurrency=10**12, cache=False)(echo)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert decorated(5) == 5
    assert grown < 1_000_000  # bytes; one token per slot would be 8 TB


def test_slots_beyond_the_tokens_made_up_front_are_counted_exactly() -> None:
    from opero._policies.bulkhead import Slots

    slots = Slots(100)  # 64 tokens made up front, 36 as they are taken
    assert all(slots.try_acquire() for _ in range(100))
    assert not slots.try_acquire()
    assert not slots.acquire_sync(0)
    slots.release()
    assert slots.acquire_sync(0)
    assert not slots.try_acquire()
    for _ in range(100):
        slots.release()
    assert all(slots.try_acquire() for _ in range(100))
    assert not slots.try_acquire()
