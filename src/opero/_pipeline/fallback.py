"""`arg_fallback`: where the named parameter sits in a call, and trying its values in turn.

The parameter is located in the signature once, at decoration. A call then finds its value
(positional, keyword or default), and each fallback value is put back at exactly that place.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from opero._observe import attempts, events
from opero._observe.events import CallInfo, call_id, current_call
from opero._policies.retry import RetryPolicy, own_call, retry_async, retry_sync
from opero._utils.logging import log
from opero.exceptions import AllFailedError, DeadlineExceededError, RetryPredicateError

if TYPE_CHECKING:
    from opero._timeouts.total import TotalTimeout

R = TypeVar("R")

_NO_DEFAULT: Any = inspect.Parameter.empty


class FallbackParameter:
    """The parameter named by `arg_fallback`, located in one function's signature."""

    __slots__ = (
        "default",
        "function_name",
        "hedge",
        "keyword",
        "name",
        "position",
        "positional_defaults",
    )

    def __init__(
        self,
        func: Callable[..., Any],
        name: str,
        function_name: str,
        hedge: float | Sequence[float] | None = None,
    ) -> None:
        try:
            params = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"arg_fallback={name!r}: cannot read the signature of {func!r}"
            ) from exc
        found = next((p for p in params if p.name == name), None)
        if found is None:
            names = ", ".join(p.name for p in params) or "none"
            raise ValueError(
                f"arg_fallback={name!r} names no parameter of {function_name}() "
                f"(its parameters: {names})"
            )
        if found.kind in (found.VAR_POSITIONAL, found.VAR_KEYWORD):
            raise ValueError(
                f"arg_fallback={name!r} must name a single parameter of {function_name}(), "
                f"not *{name} or **{name}"
            )
        self.name = name
        self.function_name = function_name
        # hedge_after: seconds (or a schedule) before the next value starts beside a
        # slow one (opero._pipeline.hedge); None: one value at a time.
        self.hedge = hedge
        self.default = found.default
        self.keyword = found.kind is not found.POSITIONAL_ONLY
        positional = found.kind in (found.POSITIONAL_ONLY, found.POSITIONAL_OR_KEYWORD)
        self.position = params.index(found) if positional else -1
        # For a positional-only parameter left at its default, the values must be passed
        # by position, so the defaults of the parameters before it are needed too.
        self.positional_defaults = tuple(p.default for p in params[: max(self.position, 0)])

    def values(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Sequence[Any]:
        """The fallback values this call holds, in order (one value for a non-sequence)."""
        if 0 <= self.position < len(args):
            held = args[self.position]
        elif self.keyword and self.name in kwargs:
            held = kwargs[self.name]
        elif self.default is not _NO_DEFAULT:
            held = self.default
        else:
            raise TypeError(f"{self.function_name}() missing required argument: {self.name!r}")
        if isinstance(held, str | bytes | bytearray) or not isinstance(held, Sequence):
            return (held,)
        if not held:
            raise ValueError(
                f"{self.function_name}(): {self.name!r} holds an empty sequence; "
                "arg_fallback needs at least one value"
            )
        return tuple(held)  # a snapshot: the caller's list may change during the call

    def current(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The one value an attempt is made with (after `substitute`)."""
        if 0 <= self.position < len(args):
            return args[self.position]
        if self.keyword and self.name in kwargs:
            return kwargs[self.name]
        return self.default

    def substitute(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], value: Any
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's arguments with `value` at the parameter's place."""
        position = self.position
        if 0 <= position < len(args):
            return (*args[:position], value, *args[position + 1 :]), kwargs
        if self.keyword:
            return args, {**kwargs, self.name: value}
        filler = self.positional_defaults[len(args) : position]
        return (*args, *filler, value), kwargs


def all_failed(fallback: FallbackParameter, errors: list[Exception]) -> AllFailedError:
    count = len(errors)
    noun = "value" if count == 1 else "values"
    log().warning(
        "{}: all {} fallback {} failed [call {}]", fallback.function_name, count, noun, call_id()
    )
    return AllFailedError(
        f"{fallback.function_name}(): all {count} {noun} of {fallback.name!r} failed", errors
    )


def _log_switch(fallback: FallbackParameter, index: int, total: int, exc: Exception) -> None:
    # The index, never the value: fallback values are often API keys.
    log().warning(
        "{}: fallback value {}/{} of {!r} failed with {}; trying the next [call {}]",
        fallback.function_name,
        index + 1,
        total,
        fallback.name,
        type(exc).__name__,
        call_id(),
    )


def check_deadline(total: TotalTimeout | None, errors: list[Exception]) -> None:
    """No next value (or fallback function) once the call's total_timeout has passed."""
    if total is None:
        return
    remaining = total.remaining()
    if remaining is not None and remaining <= 0:
        raise total.error(None) from errors[-1]


def error_to_keep(exc: Exception, total: TotalTimeout | None, *, more: bool) -> Exception:
    """What one failed fallback value (or fallback function, or hedged value) leaves for
    `AllFailedError`; or raise `exc`, ending the call. A bug in a predicate ends it. So
    does the deadline, unless `more` may still run and it has not passed: then only this
    one's retries were stopped (their next wait would have ended past it, a long
    Retry-After say), and its own last error, which `exc` is chained from, is kept."""
    if isinstance(exc, RetryPredicateError):
        raise exc
    if isinstance(exc, DeadlineExceededError):
        remaining = total.remaining() if total is not None else None
        if not more or remaining is None or remaining <= 0:
            raise exc
        cause = exc.__cause__
        return cause if isinstance(cause, Exception) else exc
    return exc


def _next_value(
    fallback: FallbackParameter,
    policy: RetryPolicy,
    info: CallInfo | None,
    index: int,
    count: int,
    errors: list[Exception],
) -> None:
    """Value `index` failed: log and report the switch, unless it was the last one."""
    if index + 1 < count:
        exc = errors[-1]
        _log_switch(fallback, index, count, exc)
        if policy.observer is not None:
            policy.observer.emit(events.FALLBACK_SWITCHED, info, error=type(exc).__name__)
        check_deadline(policy.total, errors)


def call_with_fallback_sync(
    fallback: FallbackParameter,
    policy: RetryPolicy,
    func: Callable[..., R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> R:
    """Try each fallback value with its own retries; `AllFailedError` if all fail."""
    values = fallback.values(args, kwargs)
    if policy.budget is not None:
        policy.budget.record_call()  # one deposit per call, not per value
    errors: list[Exception] = []
    info = current_call.get() if policy.observer is not None else None
    name = fallback.function_name
    token = None
    try:
        for index, value in enumerate(values):
            call_args, call_kwargs = fallback.substitute(args, kwargs, value)
            if info is not None:  # observed: attempts are numbered per value
                info.fallback_index, info.attempt = index, 0
            try:
                try:
                    return func(*call_args, **call_kwargs)
                except Exception as exc:
                    first = exc
                if token is None:  # one correlation id for every value's retries
                    token = own_call(name)
                return retry_sync(policy, name, func, call_args, call_kwargs, first)
            except Exception as exc:
                more = index + 1 < len(values)
                errors.append(error_to_keep(exc, policy.total, more=more))
                _next_value(fallback, policy, info, index, len(values), errors)
        raise all_failed(fallback, errors)
    finally:
        if token is not None:
            current_call.reset(token)


async def call_with_fallback_async(
    fallback: FallbackParameter,
    policy: RetryPolicy,
    func: Callable[..., Awaitable[R]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> R:
    """The async twin of `call_with_fallback_sync`."""
    values = fallback.values(args, kwargs)
    if policy.budget is not None:
        policy.budget.record_call()
    errors: list[Exception] = []
    info = current_call.get() if policy.observer is not None else None
    name = fallback.function_name
    token = None
    try:
        for index, value in enumerate(values):
            call_args, call_kwargs = fallback.substitute(args, kwargs, value)
            if info is not None:
                info.fallback_index, info.attempt = index, 0
            try:
                try:
                    return await func(*call_args, **call_kwargs)
                except Exception as exc:
                    first = exc
                if token is None:
                    token = own_call(name)
                return await retry_async(policy, name, func, call_args, call_kwargs, first)
            except Exception as exc:
                more = index + 1 < len(values)
                errors.append(error_to_keep(exc, policy.total, more=more))
                _next_value(fallback, policy, info, index, len(values), errors)
        raise all_failed(fallback, errors)
    finally:
        if token is not None:
            current_call.reset(token)


# current_attempt(): the loop makes each value's first attempt itself.
attempts.mark(attempts.FIRST, call_with_fallback_sync, call_with_fallback_async)
