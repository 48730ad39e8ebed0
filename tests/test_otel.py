"""opero.otel: call and attempt spans, checked against the real OpenTelemetry SDK."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, Tracer

from opero import AllFailedError, opero
from opero.otel import instrument


@dataclass
class Traced:
    exporter: InMemorySpanExporter
    tracer: Tracer  # for the user's own spans, from the same provider
    uninstall: Callable[[], None]

    def spans(self, kind: str) -> list[ReadableSpan]:
        """The finished spans named "opero.<kind> ..." (or "user"), in start order."""
        prefix = "user" if kind == "user" else f"opero.{kind} "
        found = [s for s in self.exporter.get_finished_spans() if s.name.startswith(prefix)]
        return sorted(found, key=lambda s: s.start_time or 0)


@pytest.fixture
def traced() -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    uninstall = instrument(tracer_provider=provider)
    try:
        yield Traced(exporter, provider.get_tracer("user-code"), uninstall)
    finally:
        uninstall()
        provider.shutdown()


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def check_failed_twice_then_succeeded(traced: Traced, function: str) -> None:
    """One call span, three attempt spans under it, each with a user span under it."""
    [call] = traced.spans("call")
    attempts = traced.spans("attempt")
    users = traced.spans("user")
    assert call.name == f"opero.call {function}"
    assert parent_id(call) is None
    assert len(attempts) == 3
    assert {parent_id(a) for a in attempts} == {span_id(call)}
    assert {a.name for a in attempts} == {f"opero.attempt {function}"}
    call_id = attrs(call)["opero.call_id"]
    assert call_id
    assert attrs(call) == {
        "opero.function": function,
        "opero.call_id": call_id,
        "opero.attempts": 3,
        "opero.outcome": "success",
    }
    assert call.status.status_code == StatusCode.UNSET
    assert [attrs(a) for a in attempts] == [
        {
            "opero.function": function,
            "opero.call_id": call_id,
            "opero.attempt": number,
            "opero.outcome": "failure",
            "opero.error": "ValueError",
        }
        for number in (1, 2)
    ] + [
        {
            "opero.function": function,
            "opero.call_id": call_id,
            "opero.attempt": 3,
            "opero.outcome": "success",
        }
    ]
    assert [a.status.status_code for a in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert attempts[0].status.description == "ValueError"
    assert [[e.name for e in a.events] for a in attempts] == [
        ["retry_scheduled"],
        ["retry_scheduled"],
        [],
    ]
    assert attempts[0].events[0].attributes is not None
    assert attempts[0].events[0].attributes["opero.delay"] == 0.0
    # The user's spans nest under the attempt that made them.
    assert [parent_id(u) for u in users] == [span_id(a) for a in attempts]
    assert len({call.context.trace_id for call in [call, *attempts, *users] if call.context}) == 1


def test_sync_call_with_retries_makes_a_call_span_and_a_child_per_attempt(
    traced: Traced,
) -> None:
    failures = [ValueError("a"), ValueError("b")]

    @opero(cache=False, retries=2, min_delay=0)
    def fetch(x: int) -> int:
        with traced.tracer.start_as_current_span("user"):
            if failures:
                raise failures.pop(0)
            return x

    assert fetch(5) == 5
    check_failed_twice_then_succeeded(traced, fetch.__qualname__)
    assert trace.get_current_span() is trace.INVALID_SPAN  # the call's context is gone


async def test_async_call_with_retries_makes_a_call_span_and_a_child_per_attempt(
    traced: Traced,
) -> None:
    failures = [ValueError("a"), ValueError("b")]

    @opero(cache=False, retries=2, min_delay=0)
    async def fetch(x: int) -> int:
        with traced.tracer.start_as_current_span("user"):
            await asyncio.sleep(0)
            if failures:
                raise failures.pop(0)
            return x

    assert await fetch(5) == 5
    check_failed_twice_then_succeeded(traced, fetch.__qualname__)
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_call_nests_under_the_callers_span_which_is_current_again_after(
    traced: Traced,
) -> None:
    @opero(cache=False, retries=2, min_delay=0)
    def fetch() -> int:
        return 1

    with traced.tracer.start_as_current_span("user outer") as outer:
        fetch()
        assert trace.get_current_span() is outer
    [call] = traced.spans("call")
    assert parent_id(call) == outer.get_span_context().span_id


def test_a_failed_call_has_error_status_and_error_type(traced: Traced) -> None:
    @opero(cache=False, retries=2, min_delay=0)
    def broken() -> None:
        raise TypeError("no")

    with pytest.raises(TypeError):
        broken()
    [call] = traced.spans("call")
    attempts = traced.spans("attempt")
    assert call.status.status_code == StatusCode.ERROR
    assert call.status.description == "TypeError"
    assert attrs(call)["opero.outcome"] == "failure"
    assert attrs(call)["opero.error"] == "TypeError"
    assert [e.name for e in call.events] == ["gave_up"]
    assert len(attempts) == 3
    assert {a.status.status_code for a in attempts} == {StatusCode.ERROR}
    assert {attrs(a)["opero.error"] for a in attempts} == {"TypeError"}
    # No retry follows the last attempt.
    assert [len(a.events) for a in attempts] == [1, 1, 0]
    assert trace.get_current_span() is trace.INVALID_SPAN


async def test_a_failed_async_call_has_error_status(traced: Traced) -> None:
    @opero(cache=False, retries=1, min_delay=0)
    async def broken() -> None:
        await asyncio.sleep(0)
        raise KeyError("no")

    with pytest.raises(KeyError):
        await broken()
    [call] = traced.spans("call")
    assert call.status.status_code == StatusCode.ERROR
    assert attrs(call)["opero.error"] == "KeyError"
    assert [attrs(a)["opero.outcome"] for a in traced.spans("attempt")] == ["failure"] * 2


def test_arg_fallback_numbers_attempts_per_value(traced: Traced) -> None:
    @opero(cache=False, retries=1, min_delay=0, arg_fallback="model")
    def ask(model: list[str] | str) -> str:
        if model == "small":
            raise ConnectionError(model)
        return f"from {model}"

    assert ask(model=["small", "large"]) == "from large"
    [call] = traced.spans("call")
    attempts = traced.spans("attempt")
    assert [(attrs(a)["opero.fallback_index"], attrs(a)["opero.attempt"]) for a in attempts] == [
        (0, 1),
        (0, 2),
        (1, 1),
    ]
    assert [attrs(a)["opero.outcome"] for a in attempts] == ["failure", "failure", "success"]
    assert {parent_id(a) for a in attempts} == {span_id(call)}
    assert attrs(call)["opero.fallback_index"] == 1
    assert attrs(call)["opero.attempts"] == 3
    assert [e.name for e in call.events] == ["gave_up", "fallback_switched"]
    assert [[e.name for e in a.events] for a in attempts] == [["retry_scheduled"], [], []]


async def test_async_arg_fallback_all_failing(traced: Traced) -> None:
    @opero(cache=False, retries=0, arg_fallback="model")
    async def ask(model: list[str] | str) -> str:
        await asyncio.sleep(0)
        raise ConnectionError(str(model))

    with pytest.raises(AllFailedError):
        await ask(model=["a", "b"])
    [call] = traced.spans("call")
    assert attrs(call)["opero.error"] == "AllFailedError"
    assert [attrs(a)["opero.fallback_index"] for a in traced.spans("attempt")] == [0, 1]


def test_retry_scheduled_carries_the_delay(traced: Traced, sleeps: list[float]) -> None:
    failures = [OSError("a"), OSError("b")]

    @opero(cache=False, retries=2, min_delay=0.5, max_delay=2)
    def fetch() -> int:
        if failures:
            raise failures.pop(0)
        return 1

    fetch()
    attempts = traced.spans("attempt")
    delays = [e.attributes["opero.delay"] for a in attempts for e in a.events if e.attributes]
    assert len(sleeps) == 2
    assert delays == pytest.approx(sleeps)
    assert all(delay > 0 for delay in delays)
    for attempt in attempts[:2]:  # the event lies within its (already timed) span
        assert attempt.start_time is not None
        assert attempt.end_time is not None
        assert attempt.start_time <= attempt.events[0].timestamp <= attempt.end_time


async def test_concurrent_async_calls_get_their_own_spans(traced: Traced) -> None:
    gate = asyncio.Event()

    @opero(cache=False, retries=1, min_delay=0)
    async def work(x: int) -> int:
        with traced.tracer.start_as_current_span(f"user {x}"):
            await gate.wait()  # both calls are in flight at once
            return x

    async def open_gate() -> None:
        await asyncio.sleep(0.01)
        gate.set()

    assert await asyncio.gather(work(1), work(2), open_gate()) == [1, 2, None]
    calls = traced.spans("call")
    attempts = traced.spans("attempt")
    users = traced.spans("user")
    assert len(calls) == len(attempts) == len(users) == 2
    assert len({attrs(c)["opero.call_id"] for c in calls}) == 2
    by_call_id = {attrs(c)["opero.call_id"]: c for c in calls}
    for attempt in attempts:
        assert parent_id(attempt) == span_id(by_call_id[attrs(attempt)["opero.call_id"]])
    assert {parent_id(u) for u in users} == {span_id(a) for a in attempts}
    assert len({c.context.trace_id for c in calls if c.context}) == 2


def test_calls_in_threads_get_their_own_spans(traced: Traced) -> None:
    barrier = threading.Barrier(4)

    @opero(cache=False, retries=1, min_delay=0)
    def work(x: int) -> int:
        barrier.wait(timeout=10)
        return x

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    calls = traced.spans("call")
    attempts = traced.spans("attempt")
    assert len(calls) == len(attempts) == 4
    ids = {attrs(c)["opero.call_id"]: span_id(c) for c in calls}
    assert len(ids) == 4
    assert {parent_id(a) for a in attempts} == set(ids.values())
    assert all(parent_id(a) == ids[attrs(a)["opero.call_id"]] for a in attempts)


def test_a_cache_hit_is_a_short_span_of_its_own(traced: Traced) -> None:
    @opero(retries=0)
    def square(x: int) -> int:
        return x * x

    square(3)
    square(3)
    [call] = traced.spans("call")
    [hit] = traced.spans("cache_hit")
    assert attrs(call)["opero.cache_hit"] is False
    assert hit.name == f"opero.cache_hit {square.__qualname__}"
    assert attrs(hit)["opero.cache_hit"] is True
    assert attrs(hit)["opero.outcome"] == "success"
    assert attrs(hit)["opero.call_id"] != attrs(call)["opero.call_id"]
    assert hit.start_time == hit.end_time
    assert len(traced.spans("attempt")) == 1


def test_argument_values_never_reach_the_spans(traced: Traced) -> None:
    failures = [ValueError("s3cret-in-message")]

    @opero(cache=False, retries=1, min_delay=0, arg_fallback="key")
    def call_api(key: list[str] | str, prompt: str) -> str:
        if failures:
            raise failures.pop(0)
        return f"result-{key}-{prompt}"

    call_api(key=["s3cret-key"], prompt="s3cret-prompt")
    spans = traced.exporter.get_finished_spans()
    assert len(spans) == 3
    recorded = [
        *(str(v) for s in spans for v in attrs(s).values()),
        *(str(v) for s in spans for e in s.events for v in (e.attributes or {}).values()),
        *(s.status.description or "" for s in spans),
        *(s.name for s in spans),
    ]
    assert recorded
    assert not [text for text in recorded if "s3cret" in text]


def test_uninstall_stops_spans(traced: Traced) -> None:
    @opero(cache=False, retries=1, min_delay=0)
    def fetch() -> int:
        return 1

    fetch()
    assert len(traced.exporter.get_finished_spans()) == 2
    traced.uninstall()
    traced.uninstall()  # twice is harmless
    fetch()
    assert len(traced.exporter.get_finished_spans()) == 2


def test_uninstall_during_a_call_lets_that_call_end_its_spans(traced: Traced) -> None:
    @opero(cache=False, retries=1, min_delay=0)
    def fetch() -> int:
        traced.uninstall()
        with traced.tracer.start_as_current_span("user"):
            return 1

    fetch()
    [call] = traced.spans("call")
    [attempt] = traced.spans("attempt")
    [user] = traced.spans("user")
    assert parent_id(user) == span_id(attempt)
    assert attrs(call)["opero.outcome"] == "success"
    assert trace.get_current_span() is trace.INVALID_SPAN
    fetch()  # the hook left with the last call in flight
    assert len(traced.spans("call")) == 1


def sleepy_item(x: int) -> int:
    import time

    time.sleep(0.05)
    return x


def test_process_mode_items_become_spans_in_the_parent_with_their_own_times(
    traced: Traced,
) -> None:
    from opero import opmap

    mapped = opmap(mode="process", workers=2, chunksize=2, cache=False, progress=False)
    assert mapped(sleepy_item)(range(4)) == [0, 1, 2, 3]
    calls = traced.spans("call")
    assert len(calls) == 4
    for call in calls:
        assert call.start_time is not None
        assert call.end_time is not None
        # Timed in the worker, not at delivery (which would make them ~0 long).
        assert call.end_time - call.start_time >= 40_000_000
        (attempt,) = [span for span in traced.spans("attempt") if parent_id(span) == span_id(call)]
        assert attempt.start_time is not None
        assert attempt.end_time is not None
        assert call.start_time <= attempt.start_time <= attempt.end_time <= call.end_time
