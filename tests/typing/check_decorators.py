"""Code that `mypy --strict` must accept: @opero keeps the decorated signature."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, assert_type

from opero import AllFailedError, opero, opmap


@opero
def bare(x: int, *, label: str = "") -> str:
    return f"{label}{x}"


@opero(retries=2, retry_on=(ConnectionError, TimeoutError), arg_fallback="model")
def called(prompt: str, model: list[str] | str = "a") -> str:
    return prompt


@opero(cache=False)
async def fetch(url: str) -> bytes:
    return url.encode()


def check() -> None:
    assert_type(bare(1, label="n"), str)
    assert_type(called("hi", model=["a", "b"]), str)
    pending: Coroutine[Any, Any, bytes] = fetch("u")
    pending.close()
    as_callable: Callable[[str], Coroutine[Any, Any, bytes]] = fetch
    del as_callable
    try:
        called("x")
    except AllFailedError as group:
        assert_type(group.errors, list[Exception])


class Client:
    @opero(retries=1)
    def get(self, path: str) -> int:
        return len(path)


def check_method() -> None:
    assert_type(Client().get("/a"), int)


@opmap(mode="thread", workers=2)
def scaled(x: int, factor: float = 1.0) -> float:
    return x * factor


@opmap(mode="async", workers=4)
async def shout(word: str) -> str:
    return word.upper()


async def check_opmap() -> None:
    assert_type(scaled([1, 2], factor=2.0), list[float])
    for value in scaled.imap(range(3)):
        assert_type(value, float)
    assert_type(await shout(["a"]), list[str])
    async for word in shout.imap(["b"]):
        assert_type(word, str)
