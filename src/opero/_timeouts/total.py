"""The deadline of one call (`total_timeout=`)."""

from __future__ import annotations

import contextvars
import time
from _thread import get_ident as _get_ident
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from opero.exceptions import DeadlineExceededError

if TYPE_CHECKING:
    pass


class TotalTimeout:
    """The deadline of one call of one decorated function.

    An async call sets it in a `ContextVar` per call (each task has its own). A sync
    call keeps it in a small holder, ``[deadline, thread id]``, that the context keeps
    for the thread: setting a `ContextVar` and resetting it costs ~0.4 us, most of what
    a deadline would cost a healthy call; the holder is saved and restored instead. A
    thread that sees another thread's holder (a copied context: a timeout's helper
    thread) makes its own, so no two threads write one.
    """

    __slots__ = ("name", "seconds", "var")

    def __init__(self, seconds: float, name: str) -> None:
        self.seconds = seconds
        self.name = name
        self.var: contextvars.ContextVar[Any] = contextvars.ContextVar(
            f"opero_deadline_{name}", default=None
        )

    def deadline(self) -> float | None:
        """This call's deadline (a `time.monotonic()` value), or None outside a call."""
        value = self.var.get()
        if value is None or type(value) is float:
            return value
        deadline: float | None = value[0]
        return deadline

    def remaining(self) -> float | None:
        """Seconds left before this call's deadline, or None outside a call."""
        deadline = self.deadline()
        return None if deadline is None else deadline - time.monotonic()

    def error(self, attempts: int | None) -> DeadlineExceededError:
        message = f"{self.name}(): total_timeout of {self.seconds:g}s reached"
        if attempts is not None:
            message += f" after {attempts} attempt" + ("" if attempts == 1 else "s")
        return DeadlineExceededError(message)

    def wrap_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        var, seconds, monotonic, ident = self.var, self.seconds, time.monotonic, _get_ident

        def call(*args: Any, **kwargs: Any) -> Any:
            holder = var.get()
            if holder is None or holder[1] != ident():
                holder = [None, ident()]
                var.set(holder)  # once per thread (or task) that calls it
            saved = holder[0]
            holder[0] = monotonic() + seconds
            try:
                return func(*args, **kwargs)
            finally:
                holder[0] = saved

        return call

    def wrap_async(self, func: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        var, seconds, monotonic = self.var, self.seconds, time.monotonic

        async def call(*args: Any, **kwargs: Any) -> Any:
            token = var.set(monotonic() + seconds)
            try:
                return await func(*args, **kwargs)
            finally:
                var.reset(token)

        return call
