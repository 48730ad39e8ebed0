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
    """The `retry_on` predicate itself raised while judging `failure`.

    `__cause__` is the predicate's exception and `.failure` the exception it was asked
    about, so neither is lost. Never retried, and never a reason to try the next
    fallback value: it is a bug in the predicate, not a failure of the call.
    """

    def __init__(self, failure: BaseException, bug: BaseException) -> None:
        super().__init__(
            f"retry_on predicate raised {type(bug).__name__} while judging {type(failure).__name__}"
        )
        self.failure = failure
        self.__cause__ = bug

    def __reduce__(self) -> tuple[type[RetryPredicateError], tuple[BaseException, BaseException]]:
        return (type(self), (self.failure, self.__cause__ or self))


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
