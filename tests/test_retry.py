"""Retries: counts, which exceptions, delays, what is never retried, sync and async."""

from __future__ import annotations

import asyncio
import functools
import inspect
import pickle
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import Flaky
from helpers import LoopTicks, run_python
from opero import OperoError, RetryPredicateError, opero
from opero._pipeline.options import build_options
from opero._policies.retry import RetryPolicy

# Each test on the fast pipeline and on its observed twin (see conftest.both_pipelines).
pytestmark = pytest.mark.usefixtures("both_pipelines")


def test_success_needs_one_call(sleeps: list[float]) -> None:
    flaky = Flaky()
    assert opero(cache=False)(flaky)(7) == 7
    assert len(flaky.calls) == 1
    assert sleeps == []


def test_recovers_after_failures_with_the_same_arguments(sleeps: list[float]) -> None:
    flaky = Flaky(ConnectionError("1"), ConnectionError("2"))
    assert opero(cache=False, retries=3)(flaky)(5, key="v") == 5
    assert flaky.calls == [((5,), {"key": "v"})] * 3
    assert len(sleeps) == 2


@pytest.mark.parametrize("retries", [0, 1, 4])
def test_exhausted_retries_reraise_the_last_exception_itself(
    sleeps: list[float], retries: int
) -> None:
    errors = [ValueError(f"failure {i}") for i in range(retries + 1)]
    flaky = Flaky(*errors, ValueError("never reached"))
    with pytest.raises(ValueError, match=f"failure {retries}$") as info:
        opero(cache=False, retries=retries)(flaky)(1)
    assert info.value is errors[-1]
    assert len(flaky.calls) == retries + 1
    assert len(sleeps) == retries


def test_no_tenacity_retry_error_ever_escapes(sleeps: list[float]) -> None:
    import tenacity

    flaky = Flaky(*[KeyError("k")] * 5)
    with pytest.raises(KeyError) as info:
        opero(cache=False, retries=2)(flaky)(1)
    assert not isinstance(info.value, tenacity.RetryError)


def test_delays_follow_the_formula_without_jitter(sleeps: list[float]) -> None:
    flaky = Flaky(*[OSError("down")] * 6)
    wrapped = opero(
        cache=False, retries=5, min_delay=0.5, backoff_factor=2, max_delay=3, jitter=False
    )
    with pytest.raises(OSError, match="down"):
        wrapped(flaky)(1)
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_default_delays(sleeps: list[float]) -> None:
    flaky = Flaky(*[OSError("down")] * 4)
    with pytest.raises(OSError, match="down"):
        opero(cache=False, jitter=False)(flaky)(1)
    assert sleeps == pytest.approx([0.1, 0.15, 0.225])


@given(
    min_delay=st.floats(0, 5),
    spread=st.floats(0, 50),
    factor=st.floats(1, 10),
    retry_number=st.integers(1, 2000),
)
def test_jittered_delay_stays_within_bounds(
    min_delay: float, spread: float, factor: float, retry_number: int
) -> None:
    options = build_options(
        "opero",
        {"min_delay": min_delay, "max_delay": min_delay + spread, "backoff_factor": factor},
    )
    policy = RetryPolicy(options)
    base = policy.base_delay(retry_number)
    assert min_delay <= base <= min_delay + spread
    for _ in range(5):
        delay = policy.delay(retry_number)
        assert min_delay <= delay <= min_delay + spread
        assert base * 0.5 <= delay <= base * 1.5 + 1e-12


def test_jitter_actually_spreads_delays() -> None:
    policy = RetryPolicy(build_options("opero", {"min_delay": 1, "max_delay": 10}))
    first = {round(policy.delay(1), 6) for _ in range(50)}
    capped = {round(policy.delay(50), 6) for _ in range(50)}
    assert len(first) > 10
    assert min(first) >= 1
    assert max(first) <= 1.5
    assert len(capped) > 10
    assert min(capped) >= 5
    assert max(capped) <= 10


def test_retry_on_type_only_retries_that_type(sleeps: list[float]) -> None:
    flaky = Flaky(ConnectionError(), KeyError("not retried"))
    with pytest.raises(KeyError):
        opero(cache=False, retry_on=ConnectionError)(flaky)(1)
    assert len(flaky.calls) == 2


def test_retry_on_non_matching_first_failure_is_raised_at_once(sleeps: list[float]) -> None:
    error = KeyError("nope")
    flaky = Flaky(error)
    with pytest.raises(KeyError) as info:
        opero(cache=False, retry_on=(ConnectionError, TimeoutError))(flaky)(1)
    assert info.value is error
    assert len(flaky.calls) == 1
    assert sleeps == []


def test_retry_on_tuple(sleeps: list[float]) -> None:
    flaky = Flaky(ConnectionError(), TimeoutError())
    assert opero(cache=False, retry_on=(ConnectionError, TimeoutError))(flaky)(3) == 3
    assert len(flaky.calls) == 3


def test_retry_on_predicate(sleeps: list[float]) -> None:
    seen: list[BaseException] = []

    def transient(exc: BaseException) -> bool:
        seen.append(exc)
        return "transient" in str(exc)

    flaky = Flaky(RuntimeError("transient 1"), RuntimeError("fatal"))
    with pytest.raises(RuntimeError, match="fatal"):
        opero(cache=False, retry_on=transient)(flaky)(1)
    assert len(flaky.calls) == 2
    assert [str(e) for e in seen] == ["transient 1", "fatal"]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3), GeneratorExit()])
def test_base_exceptions_are_never_retried_or_swallowed(
    sleeps: list[float], error: BaseException
) -> None:
    flaky = Flaky(error)
    with pytest.raises(type(error)) as info:
        opero(cache=False, retries=5, retry_on=lambda exc: True)(flaky)(1)
    assert info.value is error
    assert len(flaky.calls) == 1


def test_base_exception_during_a_retry_is_not_swallowed(sleeps: list[float]) -> None:
    flaky = Flaky(ConnectionError(), KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        opero(cache=False, retries=5, retry_on=lambda exc: True)(flaky)(1)
    assert len(flaky.calls) == 2


def test_real_sleeps_take_the_configured_time() -> None:
    flaky = Flaky(OSError(), OSError())
    wrapped = opero(cache=False, retries=2, min_delay=0.02, backoff_factor=2, jitter=False)(flaky)
    started = time.perf_counter()
    assert wrapped(1) == 1
    elapsed = time.perf_counter() - started
    assert 0.06 <= elapsed < 1.0  # 0.02 + 0.04, with generous slack above


class Service:
    def __init__(self) -> None:
        self.flaky = Flaky(ConnectionError())

    @opero(cache=False, retries=2)
    def method(self, x: int) -> int:
        return int(self.flaky(x)) + 1  # type: ignore[call-overload]

    @opero(cache=False, retries=2)
    @classmethod
    def class_method(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"

    @classmethod
    @opero(cache=False, retries=2)
    def class_method_inner(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"

    @opero(cache=False, retries=2)
    @staticmethod
    def static_method(x: int) -> int:
        return x * 10

    @staticmethod
    @opero(cache=False, retries=2)
    def static_method_inner(x: int) -> int:
        return x * 100

    @opero(cache=False, retries=2)
    async def async_method(self, x: int) -> int:
        return int(await self.flaky.acall(x)) + 2  # type: ignore[call-overload]


def test_methods_classmethods_and_staticmethods(sleeps: list[float]) -> None:
    service = Service()
    assert service.method(1) == 2
    assert len(service.flaky.calls) == 2
    assert Service.class_method(3) == "Service:3"
    assert service.class_method(3) == "Service:3"
    assert Service.class_method_inner(4) == "Service:4"
    assert Service.static_method(5) == 50
    assert service.static_method(5) == 50
    assert Service.static_method_inner(6) == 600
    assert asyncio.run(Service().async_method(1)) == 3


async def test_async_recovers_and_reraises(sleeps: list[float]) -> None:
    flaky = Flaky(ConnectionError(), ConnectionError())

    @opero(cache=False, retries=3, min_delay=0.25, jitter=False, backoff_factor=2)
    async def fetch(x: int) -> object:
        return await flaky.acall(x)

    assert await fetch(9) == 9
    assert len(flaky.calls) == 3
    assert sleeps == [0.25, 0.5]

    last = ValueError("last")
    failing = Flaky(ValueError("first"), last)

    @opero(cache=False, retries=1)
    async def always_fails() -> object:
        return await failing.acall(0)

    with pytest.raises(ValueError, match="last") as info:
        await always_fails()
    assert info.value is last


async def test_async_backoff_does_not_block_the_event_loop() -> None:
    flaky = Flaky(ConnectionError(), ConnectionError())

    @opero(cache=False, retries=2, min_delay=0.05, jitter=False, backoff_factor=1)
    async def fetch() -> object:
        return await flaky.acall(1)

    async with LoopTicks() as ticks:
        assert await fetch() == 1
    # ~0.1 s of backoff at one tick per 5 ms: a blocked loop would give ~0.
    assert ticks.count >= 5


async def test_async_backoff_is_cancellable() -> None:
    flaky = Flaky(*[ConnectionError()] * 10)

    @opero(cache=False, retries=5, min_delay=30, max_delay=30)
    async def fetch() -> object:
        return await flaky.acall(1)

    task = asyncio.create_task(fetch())
    await asyncio.sleep(0.05)  # the task is now in its 30 s backoff
    started = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.perf_counter() - started < 1.0
    assert len(flaky.calls) == 1


async def test_cancelled_error_from_the_call_is_never_retried(sleeps: list[float]) -> None:
    flaky = Flaky(asyncio.CancelledError())

    @opero(cache=False, retries=5, retry_on=lambda exc: True)
    async def fetch() -> object:
        return await flaky.acall(1)

    with pytest.raises(asyncio.CancelledError):
        await fetch()
    assert len(flaky.calls) == 1
    assert sleeps == []


class AsyncClient:
    """A callable object whose __call__ is `async def`; fails its first call."""

    def __init__(self) -> None:
        self.flaky = Flaky(ConnectionError())

    async def __call__(self, x: int) -> object:
        return await self.flaky.acall(x)


async def test_async_callable_object_is_awaited_and_retried(sleeps: list[float]) -> None:
    client = AsyncClient()
    wrapped = opero(cache=False)(client)
    assert await wrapped(4) == 4
    assert len(client.flaky.calls) == 2


def test_tenacity_is_not_entered_on_success() -> None:
    result = run_python(
        """
        import asyncio, sys
        from opero import opero

        @opero(cache=False)
        def plain(x):
            return x

        @opero(cache=False, arg_fallback="model")
        def with_fallback(model=("a", "b")):
            return model

        @opero(cache=False)
        async def coro(x):
            return x

        assert plain(1) == 1 and with_fallback() == "a" and asyncio.run(coro(2)) == 2
        print("tenacity" in sys.modules)

        @opero(cache=False, min_delay=0)
        def fails_once(state=[]):
            state.append(1)
            if len(state) == 1:
                raise OSError
            return len(state)

        assert fails_once() == 2
        print("tenacity" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def test_predicate_that_raises_keeps_the_original_failure(sleeps: list[float]) -> None:
    original = ConnectionError("original")
    bug = RuntimeError("bug in predicate")

    def broken(exc: BaseException) -> bool:
        raise bug

    flaky = Flaky(original)
    with pytest.raises(RetryPredicateError) as info:
        opero(cache=False, retry_on=broken)(flaky)(1)
    assert info.value.failure is original
    assert info.value.__cause__ is bug
    assert len(flaky.calls) == 1
    assert isinstance(info.value, OperoError)
    clone = pickle.loads(pickle.dumps(info.value))
    assert str(clone) == str(info.value)


def test_predicate_that_raises_on_a_later_attempt(sleeps: list[float]) -> None:
    def only_first(exc: BaseException) -> bool:
        if "second" in str(exc):
            raise ValueError("predicate bug")
        return True

    flaky = Flaky(OSError("first"), OSError("second"))
    with pytest.raises(RetryPredicateError) as info:
        opero(cache=False, retry_on=only_first)(flaky)(1)
    assert str(info.value.failure) == "second"
    assert len(flaky.calls) == 2


async def test_partial_of_an_async_callable_object_is_async(sleeps: list[float]) -> None:
    client = AsyncClient()
    wrapped = opero(cache=False, retries=2)(functools.partial(client, 5))
    assert inspect.iscoroutinefunction(wrapped)
    assert await wrapped() == 5
    assert len(client.flaky.calls) == 2


def test_gave_up_is_logged_only_when_retries_ran_out(
    opero_logs: list[str], sleeps: list[float]
) -> None:
    recovered = Flaky(OSError("x"))
    opero(cache=False, retries=2)(recovered)(1)
    stopped_early = Flaky(OSError("x"), KeyError("not retried"))
    with pytest.raises(KeyError):
        opero(cache=False, retries=3, retry_on=OSError)(stopped_early)(1)
    assert not any("gave up" in line for line in opero_logs)
    exhausted = Flaky(*[OSError("x")] * 3)
    with pytest.raises(OSError, match="x"):
        opero(cache=False, retries=2)(exhausted)(1)
    assert sum("gave up after 3 attempts" in line for line in opero_logs) == 1
