"""The exceptions opero raises. Every one of them is an `OperoError`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self


class OperoError(Exception):
    """Base class of every exception opero raises itself."""


class AllFailedError(OperoError, ExceptionGroup[Exception]):
    """Every value of an `arg_fallback` parameter failed.

    An `ExceptionGroup`, so ``except* SomeError`` reaches into it; `.errors` lists the last
    exception of each fallback value, in value order. The message names the parameter and
    the number of values, never the values themselves (they are often API keys).
    """

    def __new__(cls, message: str, errors: Sequence[Exception]) -> Self:
        return super().__new__(cls, message, errors)

    def __init__(self, message: str, errors: Sequence[Exception]) -> None:
        super().__init__(message, errors)

    @property
    def errors(self) -> list[Exception]:
        """The last exception of each fallback value, in the order the values were tried."""
        return list(self.exceptions)

    # typeshed overloads derive() for BaseException groups too; ours only hold Exceptions.
    def derive(self, excs: Sequence[Exception]) -> AllFailedError:  # type: ignore[override]
        # Keeps the type when `except*` or `split()` takes the group apart.
        return AllFailedError(self.message, excs)


class RetryPredicateError(OperoError):
    """A predicate given to opero (`retry_on`, `retry_if_result`) itself raised.

    `__cause__` is the predicate's exception and `.failure` the exception it was asked
    about (None for `retry_if_result`, which judges a result), so neither is lost. Never
    retried, and never a reason to try the next fallback value: it is a bug in the
    predicate, not a failure of the call.
    """

    def __init__(
        self, failure: BaseException | None, bug: BaseException, option: str = "retry_on"
    ) -> None:
        judged = "a result" if failure is None else type(failure).__name__
        super().__init__(f"{option} predicate raised {type(bug).__name__} while judging {judged}")
        self.failure = failure
        self.option = option
        self.__cause__ = bug

    def __reduce__(
        self,
    ) -> tuple[type[RetryPredicateError], tuple[BaseException | None, BaseException, str]]:
        return (type(self), (self.failure, self.__cause__ or self, self.option))


class OpmapError(OperoError, ExceptionGroup[Exception]):
    """Some items of an `@opmap` call failed; the others' results are kept.

    `.results` is the full result list (failed slots hold their exception) and `.failures`
    maps each failed item's position in `.results` to its exception. From `fn.imap`, whose
    results were already yielded, `.results` is empty and `.failures` is keyed by the
    item's input index.
    """

    def __new__(
        cls,
        message: str,
        errors: Sequence[Exception],
        results: list[object] | None = None,
        failures: dict[int, Exception] | None = None,
    ) -> Self:
        return super().__new__(cls, message, errors)

    def __init__(
        self,
        message: str,
        errors: Sequence[Exception],
        results: list[object] | None = None,
        failures: dict[int, Exception] | None = None,
    ) -> None:
        super().__init__(message, errors)
        self.results: list[object] = list(results) if results is not None else list(errors)
        if failures is None:  # a result may itself be an exception object: pass failures
            failures = {
                index: value
                for index, value in enumerate(self.results)
                if isinstance(value, Exception)
            }
        self.failures: dict[int, Exception] = dict(failures)

    def __reduce__(
        self,
    ) -> tuple[type[OpmapError], tuple[str, list[Exception], list[object], dict[int, Exception]]]:
        return (type(self), (self.message, list(self.exceptions), self.results, self.failures))

    def derive(self, excs: Sequence[Exception]) -> OpmapError:  # type: ignore[override]
        return OpmapError(self.message, excs, self.results, self.failures)


class WorkerCrashedError(OperoError):
    """The worker process running an item died before returning its outcome."""


class RemoteError(OperoError):
    """An exception raised in a worker process that could not be sent back as itself.

    Carries the original type name, message and formatted traceback as text.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, str]]:
        return (type(self), (self.type_name, self.message, self.traceback_text))

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.message}"
        if self.traceback_text:
            text += f"\n\nRemote traceback:\n{self.traceback_text}"
        return text


class CircuitOpenError(OperoError):
    """The circuit breaker for this call (or this fallback value) is open: the function
    was not called. Never retried; with `arg_fallback`, the next value is tried at once.

    `.retry_in` is the number of seconds until the breaker lets a probe call through.
    """

    def __init__(self, message: str, retry_in: float = 0.0) -> None:
        super().__init__(message)
        self.retry_in = retry_in

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, float]]:
        return (type(self), (str(self), self.retry_in))


class BulkheadFullError(OperoError):
    """`max_concurrency` calls were already in flight and no slot freed up within
    `max_concurrency_wait` seconds: the function was not called."""


class ResultRejectedError(OperoError):
    """`retry_if_result` judged every result of the attempts bad.

    `.result` is the last result. The message names only its type: results, like
    arguments, may hold secrets.
    """

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result

    def __reduce__(self) -> tuple[type[ResultRejectedError], tuple[str, object]]:
        return (type(self), (str(self), self.result))


class AttemptTimeoutError(OperoError, TimeoutError):
    """One attempt ran past `timeout` (or past the call's `total_timeout` deadline) and was
    cut off. A `TimeoutError`, so ``except TimeoutError`` catches it; retried like any
    other exception that `retry_on` allows."""


class DeadlineExceededError(OperoError, TimeoutError):
    """The call's `total_timeout` passed: no new attempt or fallback value was started.
    `__cause__` is the last failure before it, if any. Never retried."""
