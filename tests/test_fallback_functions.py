"""`fallback=[other, default]`: functions tried in order after the function failed."""

from __future__ import annotations

import asyncio
import time

import pytest

from opero import AllFailedError, DeadlineExceededError, Event, opero, opmap

# Each test on the fast pipeline and on its observed twin (see conftest.both_pipelines).
pytestmark = pytest.mark.usefixtures("both_pipelines")


def test_alternates_run_in_order_each_with_the_same_retries() -> None:
    calls: list[str] = []

    def backup(prompt: str) -> str:
        calls.append("backup")
        raise TimeoutError("backup slow")

    def default(prompt: str) -> str:
        calls.append("default")
        return f"default: {prompt}"

    @opero(retries=1, min_delay=0, fallback=[backup, default])
    def ask(prompt: str) -> str:
        calls.append("primary")
        raise ConnectionError("down")

    assert ask("hi") == "default: hi"
    assert calls == ["primary", "primary", "backup", "backup", "default"]
    assert ask("hi") == "default: hi"  # the call's cache keeps whichever answer came
    assert calls == ["primary", "primary", "backup", "backup", "default"]
    assert ask.cache_info().hits == 1


def test_every_error_is_kept_in_order_with_arg_fallback_values_first() -> None:
    def backup(prompt: str, model: str | list[str] = "x") -> str:
        raise LookupError(f"backup {model}")

    @opero(cache=False, retries=0, arg_fallback="model", fallback=backup)
    def ask(prompt: str, model: str | list[str] = ["a", "b"]) -> str:  # noqa: B006
        raise ConnectionError(f"primary {model}")

    with pytest.raises(AllFailedError) as caught:
        ask("hi", model=["a", "b"])
    # The alternate has the same options and gets the same arguments: it tries the
    # fallback values too. (Defaults are each function's own.)
    assert [str(e) for e in caught.value.errors] == [
        "primary a",
        "primary b",
        "backup a",
        "backup b",
    ]
    assert str(caught.value).endswith(
        ".ask(): the function and its 1 fallback function failed (4 sub-exceptions)"
    )


def test_a_non_retried_error_still_moves_on_and_base_exceptions_do_not() -> None:
    calls: list[str] = []

    def backup() -> str:
        calls.append("backup")
        return "ok"

    @opero(cache=False, retries=3, retry_on=ConnectionError, fallback=[backup])
    def wrong_input() -> str:
        calls.append("primary")
        raise ValueError("never retried")

    assert wrong_input() == "ok"
    assert calls == ["primary", "backup"]

    @opero(cache=False, fallback=[backup])
    def interrupted() -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert calls == ["primary", "backup"]


def test_total_timeout_covers_the_chain() -> None:
    started: list[str] = []

    def slow_backup() -> str:
        started.append("backup")
        time.sleep(0.3)
        raise ConnectionError("backup down")

    def never() -> str:
        started.append("never")
        return "too late"

    @opero(cache=False, retries=0, total_timeout=0.2, fallback=[slow_backup, never])
    def primary() -> str:
        started.append("primary")
        raise ConnectionError("down")

    begun = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        primary()
    # The backup's attempt was cut at the call's deadline (it has no timeout of its
    # own), and nothing started after it.
    assert started == ["primary", "backup"]
    assert time.monotonic() - begun < 1


async def test_async_functions_chain_async_alternates() -> None:
    async def backup(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    @opero(cache=False, retries=0, fallback=[backup])
    async def primary(x: int) -> int:
        raise ConnectionError("down")

    assert await primary(21) == 42


def test_a_sync_alternate_for_an_async_function_is_refused_at_decoration() -> None:
    def sync_backup() -> int:
        return 1

    with pytest.raises(TypeError, match=r"fallback function .*sync_backup must be an async"):

        @opero(fallback=[sync_backup])
        async def primary() -> int:
            return 0


@pytest.mark.parametrize("bad", [[], [1], "backup", 3])
def test_fallback_must_be_functions(bad: object) -> None:
    with pytest.raises(TypeError, match="fallback must be a function, or a non-empty list"):
        opero(fallback=bad)  # type: ignore[arg-type]


def test_the_switch_is_an_event() -> None:
    seen: list[Event] = []

    def backup() -> str:
        return "ok"

    @opero(cache=False, retries=0, fallback=[backup], on_event=seen.append)
    def primary() -> str:
        raise ConnectionError("down")

    assert primary() == "ok"
    switched = [e for e in seen if e.kind == "fallback_switched"]
    assert len(switched) == 1
    assert switched[0].error == "ConnectionError"


def _module_backup(x: int) -> int:
    return -x


@opmap(mode="process", workers=2, retries=0, cache=False, progress=False, fallback=[_module_backup])
def _mapped(x: int) -> int:
    if x % 2:
        raise ConnectionError("odd")
    return x


def test_maps_take_the_chain_per_item_in_worker_processes() -> None:
    assert _mapped(range(6)) == [0, -1, 2, -3, 4, -5]
