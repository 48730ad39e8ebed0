"""Events, hooks, stats, correlation ids, current_attempt() and testing mode."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import opero._policies.retry as retry_module
from opero import (
    CircuitBreakerOptions,
    Event,
    Stats,
    add_hook,
    current_attempt,
    current_call_id,
    opero,
    remove_hook,
)
from opero.testing import no_waits


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    async def instant(delay: float) -> None:
        return None

    monkeypatch.setattr(retry_module, "sync_sleep", lambda delay: None)
    monkeypatch.setattr(retry_module, "async_sleep", instant)


@pytest.fixture
def global_events() -> Iterator[list[Event]]:
    seen: list[Event] = []
    remove = add_hook(seen.append)
    yield seen
    remove()


def kinds(events: list[Event]) -> list[str]:
    return [event.kind for event in events]


def flaky(failures: int) -> Any:
    state = {"left": failures}

    def call(secret: str) -> str:
        if state["left"]:
            state["left"] -= 1
            raise ConnectionError("flaky")
        return "ok"

    return call


# --- the event stream ---------------------------------------------------------------------


def test_event_stream_of_a_call_retried_twice(no_sleep: None) -> None:
    seen: list[Event] = []
    fn = opero(retries=3, min_delay=0.5, jitter=False, on_event=seen.append)(flaky(2))

    assert fn("sk-secret-key") == "ok"
    assert kinds(seen) == [
        "call_started",
        "cache_miss",
        "attempt_started",
        "attempt_failed",
        "retry_scheduled",
        "attempt_started",
        "attempt_failed",
        "retry_scheduled",
        "attempt_started",
        "attempt_succeeded",
        "call_succeeded",
    ]
    assert len({event.call_id for event in seen}) == 1
    assert [e.attempt for e in seen if e.kind == "attempt_started"] == [1, 2, 3]
    assert [e.delay for e in seen if e.kind == "retry_scheduled"] == [0.5, 0.75]
    assert [e.error for e in seen if e.kind == "attempt_failed"] == ["ConnectionError"] * 2
    assert all(event.function.endswith("call") for event in seen)
    assert "sk-secret-key" not in repr(seen)  # arguments never travel in events
    seen.clear()
    assert fn("sk-secret-key") == "ok"
    assert kinds(seen) == ["cache_hit"]


async def test_async_event_stream_with_fallback_values(no_sleep: None) -> None:
    seen: list[Event] = []

    @opero(cache=False, retries=1, min_delay=0, arg_fallback="key", on_event=seen.append)
    async def ask(key: list[str]) -> str:
        if key == "bad":
            raise PermissionError("revoked")
        return "ok"

    assert await ask(["bad", "good"]) == "ok"
    assert kinds(seen) == [
        "call_started",
        "attempt_started",
        "attempt_failed",
        "retry_scheduled",
        "attempt_started",
        "attempt_failed",
        "gave_up",
        "fallback_switched",
        "attempt_started",
        "attempt_succeeded",
        "call_succeeded",
    ]
    started = [(e.fallback_index, e.attempt) for e in seen if e.kind == "attempt_started"]
    assert started == [(0, 1), (0, 2), (1, 1)]
    assert "bad" not in repr(seen) and "good" not in repr(seen)  # noqa: PT018


def test_a_failed_call_ends_with_gave_up_and_call_failed(no_sleep: None) -> None:
    seen: list[Event] = []
    fn = opero(cache=False, retries=1, on_event=seen.append)(flaky(5))
    with pytest.raises(ConnectionError):
        fn("x")
    assert kinds(seen)[-2:] == ["gave_up", "call_failed"]
    assert seen[-1].error == "ConnectionError"
    assert seen[-1].elapsed is not None
    assert seen[-1].elapsed >= 0


def test_policy_events_timeout_bulkhead_breaker_and_budget(no_sleep: None) -> None:
    seen: list[Event] = []

    @opero(cache=False, retries=0, timeout=0.02, on_event=seen.append)
    def slow() -> None:
        time.sleep(0.2)

    with pytest.raises(TimeoutError):
        slow()
    assert "attempt_timed_out" in kinds(seen)

    seen.clear()
    options = CircuitBreakerOptions(failure_threshold=1, failure_rate=None, open_duration=60)

    @opero(cache=False, retries=0, circuit_breaker=options, on_event=seen.append)
    def down() -> None:
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(Exception, match=r"down|open"):
            down()
    assert "breaker_opened" in kinds(seen)
    assert "breaker_rejected" in kinds(seen)
    opened = next(e for e in seen if e.kind == "breaker_opened")
    assert opened.state == "open"


def test_breaker_state_events_on_a_fake_clock() -> None:
    seen: list[Event] = []
    healthy = [False]

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    options = CircuitBreakerOptions(failure_threshold=1, failure_rate=None, open_duration=10)

    @opero(cache=False, retries=0, circuit_breaker=options, on_event=seen.append)
    def service() -> str:
        if not healthy[0]:
            raise ConnectionError("down")
        return "up"

    clock = Clock()
    service.__opero_breakers__.clock = clock  # type: ignore[attr-defined]
    with pytest.raises(ConnectionError):
        service()
    clock.now = 10.0
    healthy[0] = True
    assert service() == "up"
    states = [e.state for e in seen if e.kind.startswith("breaker_")]
    assert states == ["open", "half_open", "closed"]


def test_rate_limit_wait_event() -> None:
    seen: list[Event] = []

    @opero(cache=False, rate_limit=20, on_event=seen.append)
    def limited(x: int) -> int:
        return x

    limited(1)
    limited(2)
    waits = [e for e in seen if e.kind == "rate_limit_wait"]
    assert len(waits) == 1
    assert waits[0].delay is not None
    assert 0.02 <= waits[0].delay <= 0.2


def test_deadline_and_budget_events(no_sleep: None) -> None:
    seen: list[Event] = []

    @opero(cache=False, retries=5, min_delay=1, total_timeout=0.5, on_event=seen.append)
    def late() -> None:
        raise ConnectionError("down")

    with pytest.raises(TimeoutError):
        late()
    assert "deadline_exceeded" in kinds(seen)

    seen.clear()

    @opero(cache=False, retries=2, min_delay=0, retry_budget=0.01, on_event=seen.append)
    def spent() -> None:
        raise ConnectionError("down")

    for _ in range(30):
        with pytest.raises(ConnectionError):
            spent()
    assert "retry_budget_exhausted" in kinds(seen)


# --- hooks --------------------------------------------------------------------------------


def test_a_global_hook_sees_functions_decorated_before_it() -> None:
    @opero(cache=False)
    def double(x: int) -> int:
        return 2 * x

    assert double.__opero_observer__.on is False  # type: ignore[attr-defined]
    seen: list[Event] = []
    remove = add_hook(seen.append)
    try:
        assert double(2) == 4
    finally:
        remove()
    assert kinds(seen) == ["call_started", "attempt_started", "attempt_succeeded", "call_succeeded"]
    assert double.__opero_observer__.on is False  # type: ignore[attr-defined]
    seen.clear()
    assert double(3) == 6
    assert seen == []


def test_remove_hook_and_validation() -> None:
    seen: list[Event] = []
    add_hook(seen.append)
    remove_hook(seen.append)
    remove_hook(seen.append)  # unknown hooks are ignored

    @opero(cache=False)
    def one() -> int:
        return 1

    one()
    assert seen == []
    with pytest.raises(TypeError, match="callable"):
        add_hook("print")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_event"):
        opero(on_event=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="stats"):
        opero(stats="yes")  # type: ignore[arg-type]


def test_a_raising_hook_never_breaks_the_call() -> None:
    calls = [0]

    def broken(event: Event) -> None:
        calls[0] += 1
        raise RuntimeError("hook bug")

    seen: list[Event] = []

    @opero(cache=False, on_event=[broken, seen.append])
    def fine() -> str:
        return "fine"

    assert fine() == "fine"
    assert fine() == "fine"
    assert calls[0] == 8  # every event reached it
    assert len(seen) == 8  # and the next hook still got them


# --- stats --------------------------------------------------------------------------------


def test_stats_count_calls_outcomes_retries_fallbacks_and_hits(no_sleep: None) -> None:
    failing = {"a"}

    @opero(retries=1, arg_fallback="key", stats=True)
    def call(x: int, key: list[str]) -> int:
        if key in failing:
            raise ConnectionError(key)
        return x

    assert call(1, ["a", "b"]) == 1  # retried once, then fallback "b"
    assert call(1, ["a", "b"]) == 1  # cache hit
    assert call(2, ["b"]) == 2
    failing.add("b")
    with pytest.raises(Exception, match="failed"):
        call(3, ["b"])
    assert call.stats() == Stats(  # type: ignore[attr-defined]
        calls=4, successes=3, failures=1, retries=2, fallbacks_used=1, cache_hits=1
    )
    call.reset_stats()  # type: ignore[attr-defined]
    assert call.stats() == Stats(0, 0, 0, 0, 0, 0)  # type: ignore[attr-defined]


def test_stats_are_off_unless_asked_for() -> None:
    @opero(cache=False)
    def plain() -> int:
        return 1

    with pytest.raises(RuntimeError, match="stats=True"):
        plain.stats()  # type: ignore[attr-defined]


# --- current_attempt and correlation ids --------------------------------------------------


def test_current_attempt_sync_async_thread_and_nested(no_sleep: None) -> None:
    seen: list[Any] = []

    @opero(cache=False, retries=3)
    def sync_call() -> str:
        seen.append(current_attempt())
        if len(seen) < 3:
            raise ConnectionError("again")
        return "ok"

    assert sync_call() == "ok"
    assert seen == [1, 2, 3]

    seen.clear()

    @opero(cache=False, retries=3, timeout=5)
    def on_a_thread() -> str:
        seen.append(current_attempt())
        if len(seen) < 2:
            raise ConnectionError("again")
        return "ok"

    assert on_a_thread() == "ok"
    assert seen == [1, 2]

    seen.clear()

    @opero(cache=False, retries=0)
    def inner() -> int | None:
        return current_attempt()

    @opero(cache=False, retries=3, arg_fallback="key")
    async def outer(key: list[str]) -> str:
        seen.append((key, current_attempt(), inner()))
        if key == "a":
            raise ConnectionError("again")
        return "ok"

    assert asyncio.run(outer(["a", "b"])) == "ok"
    assert seen == [("a", 1, 1), ("a", 2, 1), ("a", 3, 1), ("a", 4, 1), ("b", 1, 1)]
    assert current_attempt() is None


def test_current_attempt_in_a_sync_attempt_abandoned_at_its_timeout(no_sleep: None) -> None:
    seen: list[tuple[str, int | None]] = []
    finished = threading.Event()

    @opero(cache=False, retries=1, timeout=0.05)
    def slow_then_fast() -> str:
        if not seen:
            seen.append(("start", current_attempt()))
            time.sleep(0.3)  # abandoned at 0.05 s; the caller has moved on by now
            seen.append(("after", current_attempt()))
            finished.set()
            return "late"
        seen.append(("retry", current_attempt()))
        return "ok"

    assert slow_then_fast() == "ok"
    assert finished.wait(5)
    assert seen == [("start", 1), ("retry", 2), ("after", 1)]


def test_a_slow_stack_read_at_the_timeout_does_not_turn_it_into_a_success(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The caller decides "timed out" before it reads its attempt number for the
    # abandoned thread: however long that read takes, the attempt does not come back.
    from opero._observe import attempts as introspect

    real = introspect.attempt_at

    def slow_read(frame: Any) -> int | None:
        time.sleep(0.3)  # e.g. the first read, importing modules on a busy machine
        return real(frame)

    monkeypatch.setattr(introspect, "attempt_at", slow_read)

    @opero(cache=False, retries=0, timeout=0.02)
    def slow() -> str:
        time.sleep(0.1)
        return "late"

    with pytest.raises(TimeoutError):
        slow()


def test_current_attempt_in_an_abandoned_retry_never_reads_the_next_one(no_sleep: None) -> None:
    # The thread reads its number from the caller's waiting frames; once the caller
    # gives up they move on to the next attempt, which must not leak into the answer.
    wrong: list[int | None] = []

    @opero(cache=False, retries=5, timeout=0.002, jitter=False)
    def overruns_its_first_retry() -> int | None:
        attempt = current_attempt()
        if attempt == 1:
            raise ConnectionError("again")
        if attempt == 2:  # abandoned at 2 ms; keeps asking while the caller moves on
            end = time.perf_counter() + 0.004
            while time.perf_counter() < end:
                if (now := current_attempt()) != 2:
                    wrong.append(now)
        return attempt

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: widen the race
    try:
        for _ in range(150):
            overruns_its_first_retry()
    finally:
        sys.setswitchinterval(interval)
    time.sleep(0.05)  # the last abandoned attempt finishes
    assert wrong == []


@pytest.mark.parametrize(
    "guard",
    [
        {"circuit_breaker": True},
        {"max_concurrency": 2},
        {"retry_if_result": lambda result: result is None},
    ],
    ids=["breaker", "bulkhead", "result-check"],
)
async def test_current_attempt_when_the_guard_makes_the_first_attempt(
    no_sleep: None, guard: dict[str, Any]
) -> None:
    # With a guard and no fallback, the first attempt runs in the guard's frame, which
    # is also each retry's frame: only the outer one counts as the first attempt.
    seen: list[Any] = []

    @opero(cache=False, retries=0)
    def inner() -> int | None:
        return current_attempt()

    @opero(cache=False, retries=3, **guard)
    def sync_call() -> str:
        seen.append((current_attempt(), inner()))
        if len(seen) < 3:
            raise ConnectionError("again")
        return "ok"

    @opero(cache=False, retries=3, **guard)
    async def async_call() -> str:
        seen.append((current_attempt(), inner()))
        if len(seen) < 3:
            raise ConnectionError("again")
        return "ok"

    assert sync_call() == "ok"
    assert seen == [(1, 1), (2, 1), (3, 1)]
    seen.clear()
    assert await async_call() == "ok"
    assert seen == [(1, 1), (2, 1), (3, 1)]
    assert current_attempt() is None


async def test_call_id_inside_the_call_matches_its_events_and_flows_into_tasks() -> None:
    seen: list[Event] = []
    inside: list[str | None] = []

    async def child() -> None:
        inside.append(current_call_id())

    @opero(cache=False, on_event=seen.append)
    async def parent() -> None:
        inside.append(current_call_id())
        await asyncio.create_task(child())

    await parent()
    await parent()
    first, second = inside[0], inside[2]
    assert first is not None
    assert inside == [first, first, second, second]
    assert first != second
    assert {e.call_id for e in seen} == {first, second}
    assert current_call_id() is None


def test_unobserved_failures_log_a_call_id(no_sleep: None) -> None:
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lines.append, format="{message}", level="INFO")
    logger.enable("opero")
    try:
        fn = opero(cache=False, retries=1)(flaky(1))
        assert fn("sk-secret") == "ok"
    finally:
        logger.disable("opero")
        logger.remove(sink)
    assert len(lines) == 1
    assert "[call " in lines[0]
    assert "sk-secret" not in lines[0]


# --- testing mode -------------------------------------------------------------------------


def test_no_waits_runs_20_retried_calls_of_min_delay_1_in_under_a_second() -> None:
    calls = [0]

    @opero(cache=False, retries=2, min_delay=1, jitter=False)
    def flaky_once(x: int) -> int:
        calls[0] += 1
        if calls[0] % 2:
            raise ConnectionError("once")
        return x

    begin = time.monotonic()
    with no_waits():
        assert [flaky_once(i) for i in range(20)] == list(range(20))
    assert time.monotonic() - begin < 1.0
    assert calls[0] == 40
    assert retry_module.sync_sleep is time.sleep  # restored


async def test_no_waits_caps_attempts_and_skips_rate_limit_waits() -> None:
    attempts = [0]

    @opero(cache=False, retries=10, min_delay=5)
    async def always_down() -> None:
        attempts[0] += 1
        raise ConnectionError("down")

    with no_waits(max_attempts=2), pytest.raises(ConnectionError):
        await always_down()
    assert attempts[0] == 2

    @opero(cache=False, rate_limit=1)
    async def slow_limit(x: int) -> int:
        return x

    begin = time.monotonic()
    with no_waits():
        assert [await slow_limit(i) for i in range(5)] == list(range(5))
    assert time.monotonic() - begin < 0.5
    with pytest.raises(ValueError, match="max_attempts"), no_waits(max_attempts=0):
        pass


def test_the_pytest_fixture_in_a_users_suite(tmp_path: Path) -> None:
    suite = tmp_path / "test_user_suite.py"
    suite.write_text(
        textwrap.dedent(
            """
            import time

            from opero import opero

            calls = []

            @opero(cache=False, retries=2, min_delay=1, jitter=False)
            def flaky(x):
                calls.append(x)
                if len(calls) % 2:
                    raise ConnectionError("once")
                return x

            def test_twenty_retried_calls(opero_no_waits):
                begin = time.monotonic()
                assert [flaky(i) for i in range(20)] == list(range(20))
                assert len(calls) == 40
                assert time.monotonic() - begin < 1.0
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_hooks_run_in_the_calling_thread() -> None:
    threads: list[str] = []

    @opero(cache=False, on_event=lambda e: threads.append(threading.current_thread().name))
    def work() -> None:
        return None

    runner = threading.Thread(target=work, name="caller")
    runner.start()
    runner.join()
    assert set(threads) == {"caller"}


def test_add_hook_from_many_threads_loses_none() -> None:
    hooks = [lambda event, n=n: None for n in range(400)]
    chunks = [hooks[i::8] for i in range(8)]
    removers: list[Any] = []

    def add(chunk: list[Any]) -> None:
        for hook in chunk:
            removers.append(add_hook(hook))

    threads = [threading.Thread(target=add, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        from opero._observe.events import _hub

        assert len(_hub.hooks) == 400
    finally:
        for remove in removers:
            remove()
    assert _hub.hooks == ()


def test_an_unobserved_fallback_call_logs_one_call_id(no_sleep: None) -> None:
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lines.append, format="{message}", level="INFO")
    logger.enable("opero")
    try:

        @opero(cache=False, retries=1, arg_fallback="key")
        def call(key: list[str]) -> str:
            if key != "c":
                raise ConnectionError("no")
            return "ok"

        assert call(["a", "b", "c"]) == "ok"
    finally:
        logger.disable("opero")
        logger.remove(sink)
    ids = {line.split("[call ")[1].split("]")[0] for line in lines}
    assert len(lines) >= 4
    assert len(ids) == 1
    assert "-" not in ids
