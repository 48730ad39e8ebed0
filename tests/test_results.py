"""`fn.result(...)`: the call as a value, `Ok(result)` or `Err(exception)`."""

from __future__ import annotations

import asyncio

import pytest

from opero import AllFailedError, CircuitOpenError, Err, Ok, Result, opero
from opero.testing import no_waits


def test_ok_holds_the_result_and_err_the_exception_the_call_would_raise() -> None:
    calls: list[int] = []

    @opero(cache=False, retries=2, min_delay=0)
    def flaky(x: int) -> int:
        calls.append(x)
        if x < 0 or len(calls) < 2:
            raise ConnectionError(f"down {len(calls)}")
        return x * 10

    assert flaky.result(3) == Ok(30)  # retried once, then succeeded
    assert calls == [3, 3]
    failed = flaky.result(-1)
    assert isinstance(failed, Err)
    assert isinstance(failed.error, ConnectionError)
    assert str(failed.error) == "down 5"  # the last of its 3 attempts, itself
    with pytest.raises(ConnectionError, match="down 5"):
        failed.unwrap()
    assert Ok(30).unwrap() == 30


def test_every_fallback_value_failing_is_err_of_all_failed_error() -> None:
    @opero(cache=False, retries=0, arg_fallback="key")
    def ask(prompt: str, key: str | list[str] = ["k1", "k2"]) -> str:  # noqa: B006
        raise PermissionError(f"{key} refused")

    outcome: Result[str] = ask.result("hi")
    match outcome:
        case Err(AllFailedError() as group):
            assert [str(e) for e in group.errors] == ["k1 refused", "k2 refused"]
        case _:
            pytest.fail(f"expected Err(AllFailedError), got {outcome!r}")
    # The repr names types only: a value or an error message may hold secrets.
    assert repr(outcome) == "Err(AllFailedError)"
    assert repr(Ok("sk-secret")) == "Ok(<str>)"


async def test_async_functions_await_their_result() -> None:
    @opero(cache=False, retries=0)
    async def fetch(path: str) -> bytes:
        if path == "/missing":
            raise FileNotFoundError(path)
        await asyncio.sleep(0)
        return path.encode()

    assert await fetch.result("/a") == Ok(b"/a")
    missing = await fetch.result("/missing")
    assert isinstance(missing, Err)
    assert isinstance(missing.error, FileNotFoundError)


def test_base_exceptions_still_propagate_and_the_cache_still_answers() -> None:
    calls: list[str] = []

    @opero(retries=3)
    def interrupted(x: str) -> str:
        calls.append(x)
        if x == "stop":
            raise KeyboardInterrupt
        return x.upper()

    with pytest.raises(KeyboardInterrupt):
        interrupted.result("stop")
    assert calls == ["stop"]  # never retried
    assert interrupted.result("a") == Ok("A")
    assert interrupted.result("a") == Ok("A")  # a cache hit: no second call
    assert calls == ["stop", "a"]
    assert interrupted.cache_info().hits == 1


async def test_a_cancelled_async_call_is_not_turned_into_err() -> None:
    started = asyncio.Event()

    @opero(cache=False)
    async def slow() -> int:
        started.set()
        await asyncio.sleep(10)
        return 1

    task = asyncio.ensure_future(slow.result())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_result_composes_with_policies_and_testing_mode() -> None:
    @opero(cache=False, retries=5, min_delay=60, max_delay=60, timeout=5, circuit_breaker=True)
    def down() -> None:
        raise TimeoutError("slow service")

    with no_waits():  # five 60 s waits skipped
        outcome = down.result()
    # Five failures opened the breaker (its default threshold): the sixth attempt was
    # refused, and that is the call's error, as a value.
    assert isinstance(outcome, Err)
    assert isinstance(outcome.error, CircuitOpenError)


def test_methods_take_the_instance_through_the_class() -> None:
    class Client:
        def __init__(self) -> None:
            self.base = "https://api"

        @opero(cache=False)
        def url(self, path: str) -> str:
            return self.base + path

    client = Client()
    assert Client.url.result(client, "/v1") == Ok("https://api/v1")


def test_maps_stream_every_outcome_as_a_value_and_never_raise() -> None:
    from opero import opmap

    @opmap(mode="thread", workers=2, retries=0, cache=False, progress=False)
    def parse(line: str) -> int:
        return int(line)

    outcomes = list(parse.imap_results(["1", "x", "3"]))
    assert [type(o).__name__ for o in outcomes] == ["Ok", "Err", "Ok"]
    assert outcomes[0] == Ok(1)
    assert outcomes[2] == Ok(3)
    assert isinstance(outcomes[1], Err)
    assert isinstance(outcomes[1].error, ValueError)


async def test_async_maps_stream_outcomes_as_values() -> None:
    from opero import opmap

    @opmap(mode="async", workers=2, retries=0, cache=False, progress=False)
    async def parse(line: str) -> int:
        return int(line)

    outcomes = [outcome async for outcome in parse.imap_results(["x", "2"])]
    assert isinstance(outcomes[0], Err)
    assert outcomes[1] == Ok(2)
