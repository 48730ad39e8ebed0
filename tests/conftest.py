from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from loguru import logger

import opero.core.retry as retry_module


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every backoff delay instead of sleeping it (sync and async)."""
    recorded: list[float] = []

    def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)

    async def fake_async_sleep(seconds: float) -> None:
        recorded.append(seconds)
        await asyncio.sleep(0)

    monkeypatch.setattr(retry_module, "sync_sleep", fake_sleep)
    monkeypatch.setattr(retry_module, "async_sleep", fake_async_sleep)
    return recorded


@pytest.fixture
def opero_logs() -> Iterator[list[str]]:
    """Collect opero's log messages with opero's logging enabled, as a host would."""
    messages: list[str] = []
    handler = logger.add(lambda message: messages.append(str(message)), format="{message}")
    logger.enable("opero")
    yield messages
    logger.disable("opero")
    logger.remove(handler)


class Flaky:
    """A callable that raises `errors` in turn, then returns its argument."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[tuple[tuple[object, ...], dict[str, object]]] = []

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls.append((args, kwargs))
        if self.errors:
            raise self.errors.pop(0)
        return args[0] if args else kwargs

    async def acall(self, *args: object, **kwargs: object) -> object:
        await asyncio.sleep(0)
        return self(*args, **kwargs)
