"""`hedge_after=`: a slow fallback value gets company; the first success wins."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from opero import AllFailedError, Event, opero

# Each test on the fast pipeline and on its observed twin (see conftest.both_pipelines).
pytestmark = pytest.mark.usefixtures("both_pipelines")


def test_a_slow_value_is_hedged_with_the_next_and_the_fast_one_wins() -> None:
    release = threading.Event()
    started: list[str] = []

    @opero(cache=False, retries=0, arg_fallback="region", hedge_after=0.05)
    def fetch(key: str, region: str | list[str] = ["eu", "us"]) -> str:  # noqa: B006
        assert isinstance(region, str)
        started.append(region)
        if region == "eu":
            release.wait(5)  # stuck until the test lets it go
            return "eu answer, late"
        return f"{key} from {region}"

    began = time.monotonic()
    assert fetch("k") == "k from us"
    assert time.monotonic() - began < 2  # did not wait for "eu"
    assert started == ["eu", "us"]
    release.set()  # the abandoned "eu" attempt ends; its answer is dropped


def test_without_a_slow_value_nothing_is_hedged() -> None:
    started: list[str] = []

    @opero(cache=False, retries=0, arg_fallback="region", hedge_after=5)
    def fetch(region: str | list[str] = ["eu", "us"]) -> str:  # noqa: B006
        assert isinstance(region, str)
        started.append(region)
        return region

    assert fetch() == "eu"
    assert started == ["eu"]


def test_a_failure_moves_on_at_once_and_all_failing_keeps_value_order() -> None:
    @opero(cache=False, retries=1, min_delay=0, arg_fallback="region", hedge_after=[0.01, 5])
    def down(region: str | list[str] = ["a", "b", "c"]) -> str:  # noqa: B006
        assert isinstance(region, str)
        if region == "a":
            time.sleep(0.1)  # slow and then failing: "b" started beside it at 0.01 s
        raise ConnectionError(region)

    with pytest.raises(AllFailedError) as caught:
        down()
    assert [str(e) for e in caught.value.errors] == ["a", "b", "c"]


async def test_async_losers_are_cancelled() -> None:
    cancelled: list[str] = []

    @opero(cache=False, retries=0, arg_fallback="region", hedge_after=0.02)
    async def fetch(region: str | list[str] = ["eu", "us"]) -> str:  # noqa: B006
        assert isinstance(region, str)
        try:
            await asyncio.sleep(10 if region == "eu" else 0.01)
        except asyncio.CancelledError:
            cancelled.append(region)
            raise
        return region

    began = time.monotonic()
    assert await fetch() == "us"
    assert time.monotonic() - began < 2
    assert cancelled == ["eu"]  # cancelled for real, and awaited before returning


async def test_cancelling_the_call_cancels_every_value() -> None:
    cancelled: list[str] = []
    both = asyncio.Event()
    running: list[str] = []

    @opero(cache=False, retries=0, arg_fallback="region", hedge_after=0.01)
    async def fetch(region: str | list[str] = ["eu", "us"]) -> str:  # noqa: B006
        assert isinstance(region, str)
        running.append(region)
        if len(running) == 2:
            both.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(region)
            raise
        return region

    call = asyncio.ensure_future(fetch())
    await asyncio.wait_for(both.wait(), 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert sorted(cancelled) == ["eu", "us"]


def test_every_value_takes_its_rate_limit_token() -> None:
    starts: list[float] = []

    @opero(cache=False, retries=0, arg_fallback="region", hedge_after=0.001, rate_limit=20)
    def fetch(region: str | list[str] = ["a", "b", "c"]) -> str:  # noqa: B006
        assert isinstance(region, str)
        starts.append(time.monotonic())
        time.sleep(0.5 if region != "c" else 0)
        return region

    assert fetch() == "c"
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(starts) == 3
    assert all(gap >= 0.04 for gap in gaps)  # 1/20 s apart, with slack


def test_events_say_when_a_hedge_started_and_which_value_won() -> None:
    seen: list[Event] = []
    release = threading.Event()

    @opero(cache=False, retries=0, arg_fallback="region", hedge_after=0.02, on_event=seen.append)
    def fetch(region: str | list[str] = ["eu", "us"]) -> str:  # noqa: B006
        assert isinstance(region, str)
        if region == "eu":
            release.wait(5)
        return region

    assert fetch() == "us"
    release.set()
    hedges = [(e.kind, e.fallback_index) for e in seen if e.kind.startswith("hedge_")]
    assert hedges == [("hedge_started", 1), ("hedge_won", 1)]


@pytest.mark.parametrize(
    ("bad", "error"),
    [(-1, ValueError), (float("nan"), ValueError), ([], ValueError), ("soon", TypeError)],
)
def test_hedge_after_is_checked_at_decoration(bad: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="hedge_after"):
        opero(arg_fallback="region", hedge_after=bad)  # type: ignore[arg-type]


def test_hedge_after_needs_arg_fallback() -> None:
    with pytest.raises(ValueError, match=r"hedge_after .* needs arg_fallback"):
        opero(hedge_after=0.5)
