"""Results as values: `Ok(value)` or `Err(error)`, what ``fn.result(...)`` returns.

A call that may fail becomes data the caller can keep, pass on and match on, instead of
an exception to catch at once. Only `Exception`s become `Err`: `KeyboardInterrupt`,
`SystemExit` and `asyncio.CancelledError` still propagate, as they do from the call.
"""

from __future__ import annotations

from typing import Generic, NoReturn, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Ok(Generic[T_co]):
    """A call that succeeded, holding what it returned. ``match r: case Ok(value): ...``"""

    __slots__ = ("value",)
    __match_args__ = ("value",)

    def __init__(self, value: T_co) -> None:
        self.value = value

    def unwrap(self) -> T_co:
        """The value."""
        return self.value

    def __repr__(self) -> str:
        # The type only: a result may hold secrets, and reprs end up in logs.
        return f"Ok(<{type(self.value).__name__}>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ok) and bool(other.value == self.value)

    def __hash__(self) -> int:
        return hash((Ok, self.value))


class Err:
    """A call that failed, holding the exception it raised (the same one ``fn(...)`` would
    raise: the last error itself, or `AllFailedError` with every fallback value's)."""

    __slots__ = ("error",)
    __match_args__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error

    def unwrap(self) -> NoReturn:
        """Raise the error, as the call would have."""
        raise self.error

    def __repr__(self) -> str:
        return f"Err({type(self.error).__name__})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Err) and other.error is self.error

    def __hash__(self) -> int:
        return hash((Err, id(self.error)))


Result = Ok[T] | Err  # Result[int] is Ok[int] | Err

__all__ = ["Err", "Ok", "Result"]
