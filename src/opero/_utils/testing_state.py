"""The switch `opero.testing.no_waits()` flips; read by the retry and rate-limit steps."""

from __future__ import annotations


class TestingState:
    __slots__ = ("active", "max_attempts")

    def __init__(self) -> None:
        self.active = False  # waits are skipped
        self.max_attempts: int | None = None  # attempts per fallback value, at most


state = TestingState()
