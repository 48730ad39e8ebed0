"""`current_attempt()` and `current_call_id()`: where the running code is in an opero call.

The attempt number is read from the stack, not from a context variable, so that the
success path sets nothing: walking out from the caller, the first opero frame met says
which attempt runs — a retry loop holds its attempt count, the wrappers and the fallback
loop make first attempts. The nearest opero call wins, so a decorated function called
inside another one sees its own attempts. Coroutines awaiting each other are on the
stack too while they run. A sync attempt run on a timeout thread goes on from the frame
of its caller, which waits for it.
"""

from __future__ import annotations

import sys
from types import CodeType, FrameType
from typing import Any

from opero.core.events import current_call

_FIRST, _RETRY, _FALLBACK, _THREAD, _GUARD = range(5)
_codes: dict[CodeType, int] | None = None


def _nested(factory: Any, name: str) -> list[CodeType]:
    return [
        const
        for const in factory.__code__.co_consts
        if isinstance(const, CodeType) and const.co_name == name
    ]


def _opero_codes() -> dict[CodeType, int]:
    global _codes  # noqa: PLW0603 - built once, on first use
    if _codes is None:
        from opero.core import attempt_steps, direct, fallback, retry, timeout
        from opero.decorators import opero as decorators

        codes: dict[CodeType, int] = {}
        for factory in (
            decorators._sync_wrapper,
            decorators._async_wrapper,
        ):
            for code in _nested(factory, "wrapper"):
                codes[code] = _FIRST
        codes[direct.run_direct.__code__] = _FIRST  # @opmap's items, called directly
        for method in (attempt_steps.Guard.wrap_sync, attempt_steps.Guard.wrap_async):
            for code in _nested(method, "attempt"):
                codes[code] = _GUARD
        codes[retry.retry_sync.__code__] = _RETRY
        codes[retry.retry_async.__code__] = _RETRY
        codes[fallback.call_with_fallback_sync.__code__] = _FALLBACK
        codes[fallback.call_with_fallback_async.__code__] = _FALLBACK
        codes[timeout._ThreadRunner._serve.__code__] = _THREAD
        _codes = codes
    return _codes


def attempt_at(frame: FrameType | None) -> int | None:
    """The attempt the nearest opero call around `frame` is making, or None."""
    codes = _opero_codes()
    while frame is not None:
        kind = codes.get(frame.f_code)
        if kind is not None:
            if kind == _RETRY:
                attempts = frame.f_locals.get("attempts")
                return attempts if isinstance(attempts, int) and attempts > 0 else 1
            if kind == _GUARD:
                # The guard is the wrapper (a first attempt) when it holds the retry
                # policy; otherwise it is one attempt inside the retry or fallback loop.
                if frame.f_locals.get("policy") is None:
                    frame = frame.f_back
                    continue
                return 1
            if kind == _THREAD:  # carry on from the frame that handed the attempt over
                job = frame.f_locals["job"]
                if job.caller is not None and not job.attempt_kept:
                    attempt = attempt_at(job.caller)
                    if not job.attempt_kept:  # its frames were still waiting: exact
                        return attempt
                # Given up at its timeout (maybe while we read its frames, which then
                # moved on): the number its caller kept.
                return job.attempt  # type: ignore[no-any-return]
            return 1
        frame = frame.f_back
    return None


def current_attempt() -> int | None:
    """The number of the attempt running now (1 for the first, 2 for the first retry,
    ...; counted per fallback value), or None outside an opero call.

    Call it from inside a decorated function (or anything it calls, threads and tasks
    it starts excepted): ``if opero.current_attempt() > 1: use_a_cheaper_model()``.
    """
    return attempt_at(sys._getframe(1))


def current_call_id() -> str | None:
    """The correlation id of the running call, as in its events and log lines, or None.

    Every call has one while its events are observed (hooks, stats, exporters); an
    unobserved call gets one when its first attempt fails (its retries log it).
    """
    info = current_call.get()
    return info.call_id if info is not None else None
