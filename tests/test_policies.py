"""Policies beyond retry, through `import opero` (plus the breakers' clock for breaker
tests): timeouts, circuit breaker, bulkhead, retry_if_result, Retry-After, retry budget."""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import httpx
import pytest

import opero._policies.retry as retry_module
from helpers import FakeClock
from opero import (
    AllFailedError,
    AttemptTimeoutError,
    BulkheadFullError,
    CircuitBreakerOptions,
    CircuitOpenError,
    DeadlineExceededError,
    OperoError,
    ResultRejectedError,
    RetryBudget,
    RetryPredicateError,
    current_attempt,
    opero,
)
from opero._timeouts.threads import abandoned_attempts

# Each test on the fast pipeline and on its observed twin (see conftest.both_pipelines).
pytestmark = pytest.mark.usefixtures("both_pipelines")


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry delays are recorded instead of slept (sync and async)."""
    recorded: list[float] = []

    async def fake_async_sleep(delay: float) -> None:
        recorded.append(delay)

    monkeypatch.setattr(retry_module, "sync_sleep", recorded.append)
    monkeypatch.setattr(retry_module, "async_sleep", fake_async_sleep)
    return recorded


def with_fake_clock(fn: Any) -> FakeClock:
    clock = FakeClock()
    fn.__opero_breakers__.clock = clock
    return clock


# --- attempt timeout ----------------------------------------------------------------------


def test_sync_attempt_timeout_raises_timeout_error_and_is_retried() -> None:
    started: list[float] = []
    release = threading.Event()

    @opero(cache=False, timeout=0.05, retries=2, min_delay=0)
    def slow() -> int:
        started.append(time.monotonic())
        release.wait(5)
        return 1

    begin = time.monotonic()
    with pytest.raises(AttemptTimeoutError) as caught:
        slow()
    elapsed = time.monotonic() - begin
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value, OperoError)
    assert len(started) == 3  # first attempt + 2 retries, each cut off
    assert 0.15 <= elapsed < 1.0
    assert abandoned_attempts() >= 3
    release.set()  # the abandoned work finishes on its own threads
    deadline = time.monotonic() + 5
    while abandoned_attempts() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert abandoned_attempts() == 0


def test_sync_attempt_under_its_timeout_returns_its_result_and_raises_its_errors() -> None:
    @opero(cache=False, timeout=5, retries=0)
    def fine(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x * 2

    assert fine(21) == 42
    with pytest.raises(ValueError, match="negative"):
        fine(-1)


def test_sync_attempt_sees_the_callers_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    @opero(cache=False, timeout=5)
    def read() -> str:
        return var.get()

    var.set("caller's")
    assert read() == "caller's"


def test_the_functions_own_timeout_error_is_not_an_attempt_timeout() -> None:
    @opero(cache=False, timeout=5, retries=0)
    def own() -> None:
        raise TimeoutError("from the service")

    with pytest.raises(TimeoutError, match="from the service") as caught:
        own()
    assert not isinstance(caught.value, AttemptTimeoutError)


async def test_async_attempt_is_cancelled_within_50ms_of_its_timeout() -> None:
    cancelled_after: list[float] = []

    @opero(cache=False, timeout=0.1, retries=0)
    async def slow() -> int:
        start = time.monotonic()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled_after.append(time.monotonic() - start)
            raise
        return 1

    with pytest.raises(AttemptTimeoutError):
        await slow()
    assert len(cancelled_after) == 1
    assert 0.1 - 0.005 <= cancelled_after[0] < 0.1 + 0.05


async def test_async_own_timeout_error_passes_through() -> None:
    @opero(cache=False, timeout=5, retries=0)
    async def own() -> None:
        raise TimeoutError("mine")

    with pytest.raises(TimeoutError, match="mine") as caught:
        await own()
    assert not isinstance(caught.value, AttemptTimeoutError)


# --- total timeout ------------------------------------------------------------------------


def test_total_timeout_starts_no_attempt_that_would_end_past_the_deadline() -> None:
    calls: list[float] = []

    @opero(cache=False, total_timeout=0.35, retries=50, min_delay=0.1, jitter=False)
    def failing() -> None:
        calls.append(time.monotonic())
        raise ValueError("down")

    begin = time.monotonic()
    with pytest.raises(DeadlineExceededError) as caught:
        failing()
    elapsed = time.monotonic() - begin
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value.__cause__, ValueError)
    # delays 0.1, 0.15, 0.225: the third would end at 0.475 > 0.35, so 3 attempts.
    assert len(calls) == 3
    assert elapsed < 0.35


def test_a_sync_total_timeout_alone_starts_no_attempt_after_the_deadline() -> None:
    # No helper thread: the running attempt is not cut, but nothing starts after it.
    calls: list[float] = []

    @opero(cache=False, total_timeout=0.1, retries=3, min_delay=0)
    def slow_fail() -> None:
        calls.append(time.monotonic())
        time.sleep(0.2)
        raise ConnectionError("down")

    with pytest.raises(DeadlineExceededError) as caught:
        slow_fail()
    assert len(calls) == 1
    assert isinstance(caught.value.__cause__, ConnectionError)

    @opero(cache=False, total_timeout=0.1, retries=3, min_delay=0)
    def slow_success() -> str:
        time.sleep(0.2)
        return "done"

    from opero._timeouts import attempt as timeout_module

    handed_off = timeout_module._runner.run
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timeout_module._runner, "run", lambda *a, **k: pytest.fail("hand-off"))
        assert slow_success() == "done"  # in the caller's thread; its work is kept
    assert timeout_module._runner.run == handed_off


def test_total_timeout_with_timeout_cuts_a_running_sync_attempt() -> None:
    @opero(cache=False, total_timeout=0.1, timeout=5, retries=3, min_delay=0)
    def hangs() -> None:
        time.sleep(2)

    begin = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        hangs()
    assert time.monotonic() - begin < 0.5


async def test_total_timeout_cuts_a_running_async_attempt_and_tries_no_next_value() -> None:
    tried: list[str] = []

    @opero(cache=False, total_timeout=0.1, retries=3, min_delay=0, arg_fallback="key")
    async def hangs(key: list[str]) -> None:
        tried.append(key)  # type: ignore[arg-type]
        await asyncio.sleep(2)

    begin = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        await hangs(["a", "b"])
    assert time.monotonic() - begin < 0.3
    assert tried == ["a"]


def test_total_timeout_with_fallback_stops_between_values() -> None:
    tried: list[str] = []

    @opero(cache=False, total_timeout=0.2, retries=0, arg_fallback="key")
    def slow_fail(key: list[str]) -> None:
        tried.append(key)  # type: ignore[arg-type]
        time.sleep(0.12)
        raise ValueError(key)

    with pytest.raises(DeadlineExceededError) as caught:
        slow_fail(["a", "b", "c"])
    assert tried == ["a", "b"]
    # "b" ran to its failure past the deadline (a sync attempt is cut only with
    # timeout=); "c" did not start: the deadline is the error, b's failure its cause.
    assert isinstance(caught.value.__cause__, ValueError)


async def test_total_timeout_deadlines_of_concurrent_calls_are_separate() -> None:
    @opero(cache=False, total_timeout=0.3, retries=0)
    async def nap(delay: float) -> float:
        await asyncio.sleep(delay)
        return delay

    # A call started later has its own, later deadline.
    first = asyncio.create_task(nap(0.2))
    await asyncio.sleep(0.15)
    assert await nap(0.2) == 0.2
    assert await first == 0.2


def test_sync_deadlines_of_threads_and_nested_calls_are_separate() -> None:
    from opero._timeouts.total import TotalTimeout

    seen: dict[str, float | None] = {}

    @opero(cache=False, retries=0, total_timeout=5)
    def outer(depth: int, label: str) -> None:
        step: TotalTimeout = deadline_of(outer)
        before = step.deadline()
        if depth:
            time.sleep(0.05)
            outer(depth - 1, label + "-inner")  # its own deadline, 5 s from now
            assert step.deadline() == before  # the outer one, restored
        seen[label] = before

    def deadline_of(func: Any) -> Any:
        return func.__opero_total__  # type: ignore[attr-defined]

    threads = [threading.Thread(target=outer, args=(1, f"t{i}")) for i in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join()
    assert len(seen) == 6
    firsts = [seen[f"t{i}"] for i in range(3)]
    assert all(d is not None for d in firsts)
    assert firsts == sorted(firsts)  # one per thread, in the order they started
    assert len(set(firsts)) == 3
    for i in range(3):
        assert seen[f"t{i}-inner"] > seen[f"t{i}"]  # type: ignore[operator]
    assert deadline_of(outer).deadline() is None  # outside a call


# --- circuit breaker ----------------------------------------------------------------------


def breaker_options(**overrides: Any) -> CircuitBreakerOptions:
    base: dict[str, Any] = {
        "failure_threshold": 3,
        "failure_rate": None,
        "open_duration": 10.0,
        "backoff_factor": 2.0,
        "max_open_duration": 100.0,
    }
    return CircuitBreakerOptions(**{**base, **overrides})


def test_breaker_opens_rejects_without_calling_half_opens_and_closes() -> None:
    calls = []
    healthy = [False]

    @opero(cache=False, retries=0, circuit_breaker=breaker_options())
    def service() -> str:
        calls.append(1)
        if not healthy[0]:
            raise ConnectionError("down")
        return "up"

    clock = with_fake_clock(service)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            service()
    with pytest.raises(CircuitOpenError) as caught:
        service()
    assert len(calls) == 3  # rejected without a call
    assert caught.value.retry_in == pytest.approx(10.0)
    clock.now += 10.0  # half-open: one probe goes through
    healthy[0] = True
    assert service() == "up"
    assert len(calls) == 4
    assert service() == "up"  # closed again
    assert len(calls) == 5


def test_breaker_reopens_for_longer_after_a_failed_probe() -> None:
    calls = []

    @opero(cache=False, retries=0, circuit_breaker=breaker_options())
    def service() -> None:
        calls.append(1)
        raise ConnectionError("down")

    clock = with_fake_clock(service)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            service()
    clock.now += 10.0
    with pytest.raises(ConnectionError):  # the probe fails
        service()
    with pytest.raises(CircuitOpenError) as caught:
        service()
    assert caught.value.retry_in == pytest.approx(20.0)
    clock.now += 19.9
    with pytest.raises(CircuitOpenError):
        service()
    assert len(calls) == 4


def test_an_open_breaker_is_never_retried(sleeps: list[float]) -> None:
    calls = []

    @opero(cache=False, retries=5, min_delay=0, circuit_breaker=breaker_options())
    def service() -> None:
        calls.append(1)
        raise ConnectionError("down")

    with_fake_clock(service)
    with pytest.raises(CircuitOpenError):
        service()  # 3 failures open it on the way; the 4th attempt is rejected, not retried
    assert len(calls) == 3
    assert len(sleeps) == 3
    with pytest.raises(CircuitOpenError):
        service()
    assert len(calls) == 3


def test_an_open_breaker_for_one_fallback_value_skips_it() -> None:
    calls: list[str] = []

    @opero(cache=False, retries=0, arg_fallback="model", circuit_breaker=breaker_options())
    def ask(prompt: str, model: tuple[str, ...] = ("a", "b")) -> str:
        calls.append(model)  # type: ignore[arg-type]
        if model == "a":
            raise ConnectionError("a is down")
        return f"{prompt} by {model}"

    with_fake_clock(ask)
    for _ in range(3):
        assert ask("hi") == "hi by b"
    assert calls == ["a", "b"] * 3
    calls.clear()
    assert ask("hi") == "hi by b"
    assert calls == ["b"]  # "a" was not called at all
    assert ask("hi", model=("b", "a")) == "hi by b"  # "b"'s breaker is its own, closed


def test_all_values_open_gives_all_failed_with_circuit_open_errors() -> None:
    @opero(cache=False, retries=0, arg_fallback="model", circuit_breaker=breaker_options())
    def ask(model: tuple[str, ...] = ("a", "b")) -> None:
        raise ConnectionError(model)

    with_fake_clock(ask)
    for _ in range(3):
        with pytest.raises(AllFailedError):
            ask()
    with pytest.raises(AllFailedError) as caught:
        ask()
    assert [type(e) for e in caught.value.errors] == [CircuitOpenError, CircuitOpenError]


async def test_async_breaker_opens_and_skips_a_fallback_value() -> None:
    calls: list[str] = []

    @opero(cache=False, retries=0, arg_fallback="model", circuit_breaker=breaker_options())
    async def ask(model: tuple[str, ...] = ("a", "b")) -> str:
        calls.append(model)  # type: ignore[arg-type]
        if model == "a":
            raise ConnectionError("a is down")
        return str(model)

    clock = with_fake_clock(ask)
    for _ in range(3):
        assert await ask() == "b"
    calls.clear()
    assert await ask() == "b"
    assert calls == ["b"]
    clock.now += 10.0
    assert await ask() == "b"
    assert calls == ["b", "a", "b"]  # the half-open probe of "a" failed


async def test_a_cancelled_attempt_does_not_count_as_a_failure() -> None:
    @opero(cache=False, retries=0, circuit_breaker=breaker_options(failure_threshold=1))
    async def slow() -> int:
        await asyncio.sleep(5)
        return 1

    with_fake_clock(slow)
    task = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slow.__opero_breakers__.get(None).state == "closed"  # type: ignore[attr-defined]


def test_circuit_breaker_true_uses_the_defaults() -> None:
    @opero(cache=False, retries=0, circuit_breaker=True)
    def service() -> None:
        raise ConnectionError("down")

    with_fake_clock(service)
    for _ in range(CircuitBreakerOptions().failure_threshold):
        with pytest.raises(ConnectionError):
            service()
    with pytest.raises(CircuitOpenError):
        service()


# --- bulkhead -----------------------------------------------------------------------------


def test_max_concurrency_3_never_has_4_in_flight_threads() -> None:
    lock = threading.Lock()
    in_flight = [0]
    peak = [0]

    @opero(cache=False, max_concurrency=3)
    def work(x: int) -> int:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.02)
        with lock:
            in_flight[0] -= 1
        return x

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 3


async def test_max_concurrency_3_never_has_4_in_flight_tasks() -> None:
    in_flight = 0
    peak = 0

    @opero(cache=False, max_concurrency=3)
    async def work(x: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return x

    assert await asyncio.gather(*(work(i) for i in range(15))) == list(range(15))
    assert peak == 3


def test_async_bulkhead_holds_across_event_loops_in_two_threads() -> None:
    lock = threading.Lock()
    in_flight = [0]
    peak = [0]

    @opero(cache=False, max_concurrency=2)
    async def work(x: int) -> int:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        await asyncio.sleep(0.01)
        with lock:
            in_flight[0] -= 1
        return x

    async def many() -> list[int]:
        return await asyncio.gather(*(work(i) for i in range(10)))

    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda: results.append(asyncio.run(many()))) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [list(range(10))] * 2
    assert peak[0] == 2


def test_bulkhead_full_without_waiting_raises_at_once() -> None:
    inside = threading.Event()
    release = threading.Event()

    @opero(cache=False, retries=0, max_concurrency=1, max_concurrency_wait=0)
    def hold() -> int:
        inside.set()
        release.wait(5)
        return 1

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(5)
    begin = time.monotonic()
    with pytest.raises(BulkheadFullError, match="max_concurrency=1"):
        hold()
    assert time.monotonic() - begin < 0.05
    release.set()
    holder.join()
    assert hold() == 1  # the slot came back


async def test_async_bulkhead_wait_bound_then_full() -> None:
    release = asyncio.Event()

    @opero(cache=False, retries=0, max_concurrency=1, max_concurrency_wait=0.05)
    async def hold() -> int:
        await release.wait()
        return 1

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    begin = time.monotonic()
    with pytest.raises(BulkheadFullError):
        await hold()
    assert 0.04 <= time.monotonic() - begin < 0.5
    release.set()
    assert await holder == 1
    assert await hold() == 1


async def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    release = asyncio.Event()

    @opero(cache=False, retries=0, max_concurrency=1)
    async def hold() -> int:
        await release.wait()
        return 1

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    assert await holder == 1
    assert await asyncio.wait_for(hold(), 1) == 1  # one slot, free again


# --- retry_if_result ----------------------------------------------------------------------


def test_retry_if_result_retries_until_accepted(sleeps: list[float]) -> None:
    answers = iter([{"error": "busy"}, {"error": "busy"}, {"ok": 1}])

    @opero(cache=False, retries=3, retry_if_result=lambda r: "error" in r)
    def call() -> dict[str, int | str]:
        return next(answers)

    assert call() == {"ok": 1}
    assert len(sleeps) == 2


def test_retry_if_result_exhausted_raises_with_the_last_result(sleeps: list[float]) -> None:
    count = [0]

    @opero(cache=False, retries=2, retry_on=KeyError, retry_if_result=lambda r: r < 0)
    def call() -> int:
        count[0] += 1
        return -count[0]

    with pytest.raises(ResultRejectedError) as caught:
        call()
    assert count[0] == 3  # retried even though retry_on names only KeyError
    assert caught.value.result == -3
    assert "-3" not in str(caught.value)  # the message names the type, not the value


async def test_async_retry_if_result_moves_to_the_next_fallback_value(
    sleeps: list[float],
) -> None:
    @opero(cache=False, retries=1, arg_fallback="key", retry_if_result=lambda r: r == "")
    async def call(key: list[str]) -> str:
        return "" if key == "bad" else f"with {key}"

    assert await call(["bad", "good"]) == "with good"
    assert len(sleeps) == 1


def test_a_raising_result_predicate_is_not_retried() -> None:
    count = [0]

    def broken(result: object) -> bool:
        raise KeyError("bug")

    @opero(cache=False, retries=3, retry_if_result=broken)
    def call() -> int:
        count[0] += 1
        return 1

    with pytest.raises(RetryPredicateError, match="retry_if_result"):
        call()
    assert count[0] == 1


def test_rejected_results_count_as_breaker_failures() -> None:
    @opero(
        cache=False,
        retries=0,
        retry_if_result=lambda r: r is None,
        circuit_breaker=breaker_options(),
    )
    def call() -> None:
        return None

    with_fake_clock(call)
    for _ in range(3):
        with pytest.raises(ResultRejectedError):
            call()
    with pytest.raises(CircuitOpenError):
        call()


# --- Retry-After --------------------------------------------------------------------------


class Throttled(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__("throttled")
        self.retry_after = retry_after


def test_retry_after_attribute_sets_the_delay_capped_by_max_delay(sleeps: list[float]) -> None:
    waits = iter([0.05, 100.0])

    @opero(cache=False, retries=2, min_delay=5, max_delay=30, jitter=False)
    def call() -> int:
        wait = next(waits, None)
        if wait is not None:
            raise Throttled(wait)
        return 1

    assert call() == 1
    assert sleeps == [0.05, 30.0]


async def test_retry_after_header_of_an_httpx_error(sleeps: list[float]) -> None:
    request = httpx.Request("GET", "https://example.invalid/")
    responses = iter([httpx.Response(429, headers={"Retry-After": "2"}, request=request)])

    @opero(cache=False, retries=1, min_delay=0.5, jitter=False)
    async def call() -> str:
        response = next(responses, None)
        if response is not None:
            response.raise_for_status()
        return "ok"

    assert await call() == "ok"
    assert sleeps == [2.0]


# --- retry budget -------------------------------------------------------------------------


def test_retry_budget_caps_retries_to_a_fraction_of_calls(sleeps: list[float]) -> None:
    attempts = [0]

    @opero(
        cache=False,
        retries=3,
        min_delay=0,
        retry_budget=RetryBudget(ratio=0.1, min_retries_per_second=0, window=600),
    )
    def down() -> None:
        attempts[0] += 1
        raise ConnectionError("outage")

    for _ in range(100):
        with pytest.raises(ConnectionError):
            down()
    retries = attempts[0] - 100
    assert retries == len(sleeps)
    assert 5 <= retries <= 10  # without the budget: 300


def test_retry_budget_as_a_number_is_a_ratio() -> None:
    attempts = [0]

    @opero(cache=False, retries=3, min_delay=0, retry_budget=0.5)
    def down() -> None:
        attempts[0] += 1
        raise ConnectionError("outage")

    for _ in range(10):
        with pytest.raises(ConnectionError):
            down()
    # The default floor of 1 retry/s over a 10 s window, plus half the calls: <= 15.
    assert 10 + 10 <= attempts[0] <= 10 + 15


# --- everything together, and validation --------------------------------------------------


def test_all_policies_on_a_healthy_call_change_nothing() -> None:
    @opero(
        timeout=5,
        total_timeout=10,
        circuit_breaker=True,
        max_concurrency=4,
        max_concurrency_wait=1,
        retry_if_result=lambda r: r is None,
        retry_budget=0.2,
    )
    def double(x: int) -> int:
        return 2 * x

    assert [double(i) for i in range(5)] == [0, 2, 4, 6, 8]


async def test_all_policies_async_with_fallback() -> None:
    @opero(
        cache=False,
        retries=1,
        min_delay=0,
        arg_fallback="key",
        timeout=1,
        total_timeout=2,
        circuit_breaker=True,
        max_concurrency=2,
        retry_if_result=lambda r: r is None,
        retry_budget=0.2,
    )
    async def call(x: int, key: list[str]) -> str:
        if key == "bad":
            raise ConnectionError("bad key")
        return f"{x}:{key}"

    assert await asyncio.gather(*(call(i, ["bad", "good"]) for i in range(4))) == [
        f"{i}:good" for i in range(4)
    ]


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": "1"}, TypeError, "timeout"),
        ({"total_timeout": -1}, ValueError, "total_timeout"),
        ({"total_timeout": float("inf")}, ValueError, "total_timeout"),
        ({"circuit_breaker": "yes"}, TypeError, "circuit_breaker"),
        ({"circuit_breaker": {"failure_threshold": 2}}, TypeError, "CircuitBreakerOptions"),
        ({"max_concurrency": 0}, ValueError, "max_concurrency"),
        ({"max_concurrency": 2.5}, TypeError, "max_concurrency"),
        ({"max_concurrency_wait": 1}, ValueError, "needs max_concurrency"),
        ({"max_concurrency": 1, "max_concurrency_wait": -1}, ValueError, "max_concurrency_wait"),
        ({"retry_if_result": 3}, TypeError, "retry_if_result"),
        ({"retry_budget": 0}, ValueError, "retry_budget"),
        ({"retry_budget": "lots"}, TypeError, "retry_budget"),
        ({"retry_budget": True}, TypeError, "retry_budget"),
    ],
)
def test_bad_policy_options_fail_at_decoration(
    options: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        opero(**options)


def test_bulkhead_slots_under_thread_contention_never_exceed_or_lose_a_slot() -> None:
    from opero._policies.bulkhead import Slots

    slots = Slots(3)
    lock = threading.Lock()
    in_flight = [0]
    peak = [0]
    granted = [0]

    def hammer(seed: int) -> None:
        for i in range(300):
            wait = (0.0, 0.0005, None)[(seed + i) % 3]
            if not slots.acquire_sync(wait):
                continue
            with lock:
                in_flight[0] += 1
                granted[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            if i % 7 == 0:
                time.sleep(0.0001)
            with lock:
                in_flight[0] -= 1
            slots.release()

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert peak[0] == 3
    assert granted[0] >= 12 * 100  # every caller without a bound got through
    # Exactly three slots at the end: none lost, none made up.
    assert [slots.try_acquire() for _ in range(4)] == [True, True, True, False]


async def test_async_retry_budget_caps_retries(sleeps: list[float]) -> None:
    attempts = 0

    @opero(
        cache=False,
        retries=2,
        min_delay=0,
        retry_budget=RetryBudget(ratio=0.25, min_retries_per_second=0, window=600),
    )
    async def down() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("outage")

    for _ in range(40):
        with pytest.raises(ConnectionError):
            await down()
    assert 5 <= attempts - 40 <= 10  # without the budget: 80


def test_a_token_taken_on_the_lock_free_path_during_a_hand_over_is_no_error() -> None:
    from collections import deque

    from opero._policies.bulkhead import Slots, _Waiter

    class Stolen(deque):  # type: ignore[type-arg]
        """Looks non-empty, but another thread's pop() got there first."""

        def __bool__(self) -> bool:
            return True

        def pop(self) -> None:
            raise IndexError("pop from an empty deque")

    slots = Slots(1)
    waiter = _Waiter()
    waiter.lock = threading.Lock()
    waiter.lock.acquire()
    slots.waiters.append(waiter)
    slots.tokens = Stolen()
    slots.hand_over()  # must not raise, and must not wake the waiter without a token
    assert not waiter.granted
    assert waiter.lock.locked()


# --- regressions found in review ----------------------------------------------------------


async def test_an_outer_timeout_arriving_with_the_attempt_deadline_stays_the_callers() -> None:
    @opero(cache=False, timeout=0.05, retries=3, min_delay=0)
    async def hangs() -> None:
        await asyncio.sleep(5)

    begin = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        async with asyncio.timeout(0.05):
            await hangs()
    assert time.monotonic() - begin < 0.2  # not retried three more times
    assert not isinstance(caught.value, AttemptTimeoutError)


def test_finished_event_loops_are_not_kept_alive() -> None:
    import gc
    import weakref

    @opero(cache=False, timeout=5)
    async def quick() -> int:
        return 1

    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def main() -> int:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return await quick()

    for _ in range(5):
        assert asyncio.run(main()) == 1
    gc.collect()
    assert sum(ref() is not None for ref in loops) <= 1


async def test_a_probe_cancelled_while_queued_for_the_bulkhead_gives_its_slot_back() -> None:
    release = asyncio.Event()
    healthy = [False]

    @opero(
        cache=False,
        retries=0,
        max_concurrency=1,
        circuit_breaker=breaker_options(failure_threshold=1, half_open_probes=2),
    )
    async def service() -> str:
        if not healthy[0]:
            raise ConnectionError("down")
        await release.wait()
        return "up"

    clock = with_fake_clock(service)
    with pytest.raises(ConnectionError):
        await service()
    clock.now += 10.0  # half-open, two probes allowed
    healthy[0] = True
    first = asyncio.create_task(service())  # probe 1 holds the bulkhead slot
    await asyncio.sleep(0.01)
    second = asyncio.create_task(service())  # probe 2 queues for the slot
    await asyncio.sleep(0.01)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    release.set()
    assert await first == "up"
    assert await service() == "up"  # probe 2's place was given back: not refused


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_deadline_that_cuts_the_only_attempt_is_a_deadline_error(kind: str) -> None:
    if kind == "sync":

        @opero(cache=False, total_timeout=0.05, timeout=5, retries=0)  # cut: a timeout
        def slow() -> None:
            time.sleep(0.3)

        with pytest.raises(DeadlineExceededError):
            slow()
    else:

        @opero(cache=False, total_timeout=0.05, retries=0)
        async def aslow() -> None:
            await asyncio.sleep(0.3)

        with pytest.raises(DeadlineExceededError):
            asyncio.run(aslow())


def test_a_sigalrm_timeout_shorter_than_arming_still_raises_a_timeout() -> None:
    script = textwrap.dedent(
        """
        import time
        from opero import opero, AttemptTimeoutError
        from opero._timeouts.alarm import use_alarm

        use_alarm()

        @opero(cache=False, retries=0, timeout=1e-7)
        def tiny() -> None:
            time.sleep(0.05)

        for _ in range(50):
            try:
                tiny()
            except AttemptTimeoutError:
                pass
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_ctrl_c_while_queued_for_a_slot_does_not_leak_it() -> None:
    import signal

    from opero._policies.bulkhead import Slots

    slots = Slots(1)
    assert slots.try_acquire()
    main = threading.main_thread().ident
    assert main is not None
    threading.Timer(0.05, signal.pthread_kill, (main, signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        slots.acquire_sync(None)
    slots.release()
    assert [slots.try_acquire() for _ in range(2)] == [True, False]


class _Throttled(Exception):
    retry_after = 30.0  # what a server asked for: far past the call's deadline


def test_a_wait_past_the_deadline_moves_on_to_the_next_fallback_value() -> None:
    # The retries of "a" stop (their next wait would end past total_timeout), but the
    # deadline has not passed: "b" is still tried, and answers.
    calls: list[str] = []

    @opero(cache=False, retries=2, min_delay=0, total_timeout=5, arg_fallback="model")
    def complete(prompt: str, model: str | list[str] = ["a", "b"]) -> str:  # noqa: B006
        assert isinstance(model, str)
        calls.append(model)
        if model == "a":
            raise _Throttled
        return f"{model}: {prompt}"

    started = time.monotonic()
    assert complete("hi") == "b: hi"
    assert calls == ["a", "b"]
    assert time.monotonic() - started < 2  # no 30 s wait was slept

    calls.clear()
    with pytest.raises(DeadlineExceededError) as caught:  # the last value: the call ends
        complete("hi", model=["a", "a"])
    assert calls == ["a", "a"]
    assert isinstance(caught.value.__cause__, _Throttled)


async def test_a_wait_past_the_deadline_moves_on_to_the_next_value_async() -> None:
    calls: list[str] = []

    @opero(cache=False, retries=2, min_delay=0, total_timeout=5, arg_fallback="model")
    async def complete(prompt: str, model: str | list[str] = ["a", "b"]) -> str:  # noqa: B006
        assert isinstance(model, str)
        calls.append(model)
        if model == "a":
            raise _Throttled
        return f"{model}: {prompt}"

    assert await complete("hi") == "b: hi"
    assert calls == ["a", "b"]


def test_an_attempt_left_behind_by_an_interrupt_is_counted_as_abandoned() -> None:
    # Ctrl-C (or an outer timeout) while the caller waits for a handed-off attempt: the
    # attempt goes on on its thread, so it is abandoned like one that timed out.
    from opero._timeouts import threads

    release = threading.Event()
    seen: list[int | None] = []

    @opero(cache=False, retries=0, timeout=5)
    def slow() -> str:
        release.wait(5)
        seen.append(current_attempt())
        return "late"

    def interrupted_wait(lock: Any, seconds: float) -> bool:
        raise KeyboardInterrupt

    before = abandoned_attempts()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(threads, "acquire_within", interrupted_wait)
        with pytest.raises(KeyboardInterrupt):
            slow()
    assert abandoned_attempts() == before + 1
    release.set()
    for _ in range(100):
        if seen:
            break
        time.sleep(0.01)
    assert seen == [1]  # the number it was made as, though the caller has gone
