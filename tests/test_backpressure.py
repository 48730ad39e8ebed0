"""Backpressure: a 429 (or 503 with Retry-After) pauses the rate limit for every caller."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from typing import Any

import httpx
import pytest

from helpers import Throttled, pause_limiter, throttled_first
from opero import opero, opmap
from opero._observe.events import Event
from opero._policies.backpressure import DEFAULT_THROTTLE_PAUSE, throttle_pause
from opero._policies.rate_limit import LocalRateLimiter, SharedRateLimiter
from opero.exceptions import DeadlineExceededError

# --- reading a throttling answer ------------------------------------------------------


def httpx_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "https://api.example/v1")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return httpx.HTTPStatusError("answered", request=request, response=response)


class AiohttpLike(Exception):
    """The shape of aiohttp's ClientResponseError: `status` and `headers`, no response."""

    def __init__(self, status: int, headers: dict[str, str] | None) -> None:
        super().__init__("answered")
        self.status = status
        self.headers = headers


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx_error(429, {"Retry-After": "2"}), 2.0),
        (httpx_error(429), DEFAULT_THROTTLE_PAUSE),
        (httpx_error(503, {"Retry-After": "3"}), 3.0),
        (httpx_error(503), None),  # down, not throttling: no pause
        (httpx_error(500, {"Retry-After": "3"}), None),
        (httpx_error(429, {"Retry-After": "3600"}), 30.0),  # at most the ceiling
        (AiohttpLike(429, {"Retry-After": "4"}), 4.0),
        (AiohttpLike(503, None), None),
        (Throttled(429, retry_after=0.5), 0.5),
        (Throttled(True, retry_after=0.5), None),  # type: ignore[arg-type]  # a bool: no status
        (ValueError("429"), None),
    ],
    ids=repr,
)
def test_throttle_pause_reads_status_and_retry_after(exc: Exception, expected: Any) -> None:
    assert throttle_pause(exc, ceiling=30.0) == expected


def test_requests_http_error_is_read() -> None:
    import requests

    response = requests.Response()
    response.status_code = 429
    response.headers["Retry-After"] = "7"
    assert throttle_pause(requests.HTTPError(response=response), ceiling=30.0) == 7.0


def test_a_status_property_that_raises_is_no_throttle() -> None:
    class Broken(Exception):
        @property
        def status_code(self) -> int:
            raise RuntimeError("not parsed yet")

    assert throttle_pause(Broken(), ceiling=30.0) is None


# --- the limiters' pause ----------------------------------------------------------------


@pytest.mark.parametrize("make", [LocalRateLimiter, SharedRateLimiter])
def test_a_pause_holds_releases_and_new_starts(make: Any) -> None:
    limiter = make(1000)
    assert limiter.release() == 0.0
    before = time.monotonic()
    assert limiter.pause(5.0) is True
    assert 4.9 < limiter.release() <= 5.0  # a waiter already due is held too
    assert limiter.take() >= before + 5.0  # a new one is scheduled after the pause
    assert limiter.pause(1.0) is False  # ends sooner than the pause already running
    assert limiter.pause(6.0) is True


@pytest.mark.parametrize("make", [LocalRateLimiter, SharedRateLimiter])
def test_after_a_pause_releases_are_spaced_again(make: Any) -> None:
    limiter = make(10)
    limiter.pause(0.05)
    time.sleep(0.06)
    assert limiter.release() == 0.0  # the first one goes at the end of the pause
    assert 0.09 < limiter.release() <= 0.1  # no burst after it


def test_a_pause_in_one_process_holds_the_others() -> None:
    context = multiprocessing.get_context("spawn")
    limiter = SharedRateLimiter(1000, context)
    out = context.Queue()
    child = context.Process(target=pause_limiter, args=(limiter, 5.0, out))
    child.start()
    assert out.get(timeout=60) is True
    child.join(timeout=60)
    assert 4.0 < limiter.release() <= 5.0


def test_redis_pause_holds_every_process_on_the_key(redis_env: str) -> None:
    from opero._policies.rate_limit_redis import RedisRateLimiter

    here, elsewhere = (RedisRateLimiter(1000, "opero:t:pause") for _ in range(2))
    assert elsewhere.release() == 0.0
    assert here.pause(5.0) is True
    assert 4.9 < elsewhere.release() <= 5.0
    assert elsewhere.take() >= time.monotonic() + 4.8
    assert here.pause(1.0) is False


# --- through the decorators ---------------------------------------------------------------


def throttling(delay: float, status: int = 429, **options: Any) -> Any:
    """A function that is answered `status` on its first call only, and the start times."""
    starts: list[float] = []

    @opero(cache=False, rate_limit=1000, retries=0, **options)
    def call() -> None:
        starts.append(time.monotonic())
        if len(starts) == 1:
            raise Throttled(status, retry_after=delay)

    return call, starts


def test_a_429_pauses_every_other_caller() -> None:
    call, starts = throttling(0.2)
    with pytest.raises(Throttled):
        call()
    failed = time.monotonic()
    other = threading.Thread(target=call)
    other.start()
    other.join()
    assert starts[1] - failed >= 0.19  # the other thread waited out the Retry-After
    assert starts[1] - failed < 2.0


def test_without_backpressure_only_the_failing_item_waits() -> None:
    call, starts = throttling(5.0, rate_limit_backpressure=False)
    with pytest.raises(Throttled):
        call()
    call()
    assert starts[1] - starts[0] < 1.0


def test_a_503_pauses_only_with_retry_after() -> None:
    call, starts = throttling(None, status=503)  # type: ignore[arg-type]
    with pytest.raises(Throttled):
        call()
    call()
    assert starts[1] - starts[0] < 1.0
    call, starts = throttling(0.2, status=503)
    with pytest.raises(Throttled):
        call()
    call()
    assert starts[1] - starts[0] >= 0.19


def test_a_pause_is_at_most_max_delay() -> None:
    call, starts = throttling(3600, max_delay=0.1, min_delay=0)
    with pytest.raises(Throttled):
        call()
    call()
    assert 0.09 <= starts[1] - starts[0] < 2.0


def test_a_deadline_inside_a_pause_fails_at_once() -> None:
    call, _ = throttling(5.0, max_delay=5.0, total_timeout=0.3)
    with pytest.raises(Throttled):
        call()
    began = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        call()
    assert time.monotonic() - began < 1.0


def test_pause_events_name_the_answer_and_the_delay() -> None:
    seen: list[Event] = []
    answers = iter([Throttled(429, retry_after=0.2), Throttled(429, retry_after=0.05)])

    @opero(cache=False, rate_limit=1000, retries=0, on_event=seen.append)
    def call() -> None:
        raise next(answers)

    for _ in range(2):
        with pytest.raises(Throttled):
            call()
    pauses = [e for e in seen if e.kind == "rate_limit_paused"]
    # One event per pause; the second attempt waited out the first one.
    assert [(e.delay, e.error) for e in pauses] == [(0.2, "Throttled"), (0.05, "Throttled")]
    assert pauses[1].time - pauses[0].time >= 0.19


async def test_a_429_pauses_every_task() -> None:
    starts: list[float] = []

    @opero(cache=False, rate_limit=1000, retries=0)
    async def call(i: int) -> None:
        starts.append(time.monotonic())
        if i == 0:
            raise Throttled(429, retry_after=0.2)

    with pytest.raises(Throttled):
        await call(0)
    failed = time.monotonic()
    await asyncio.gather(*(call(i) for i in range(1, 4)))
    assert min(starts[1:]) - failed >= 0.19


def test_a_429_in_one_worker_process_pauses_the_others() -> None:
    mapped = opmap(
        mode="process", workers=2, rate_limit=50, retries=0, cache=False, return_exceptions=True
    )(throttled_first)
    results = mapped(range(20), 0.5)
    failure = results[0]
    assert isinstance(failure, Throttled)
    # Items released before item 0's answer (the other worker's first, at most) go on;
    # the rest are held until its Retry-After has passed, though at 50/s they would all
    # have started within 0.4 s of it without the pause.
    after = [start - failure.at for start in results[1:]]
    assert not [gap for gap in after if 0.05 < gap < 0.5], after
    assert sum(gap >= 0.5 for gap in after) >= 15, after
