"""`current_attempt()` and `current_call_id()`: where the running code is in an opero call.

The success path sets nothing for this: the attempt number is found on the stack.
Every module that makes attempts marks its functions' code here once, at import (this
module imports none of them), and walking out from the caller, the first marked frame
met says which attempt runs:

- ``FIRST``: the call's first attempt (the wrappers, @opmap's direct item calls, the
  fallback loop, which makes each value's first attempt);
- ``RETRY``: a retry loop, which publishes its running count here (on the failure path
  only, keyed by its own frame);
- ``GUARD``: the circuit breaker/bulkhead/result check. Called by a frame that makes
  attempts (``FIRST``, ``RETRY``, ``CALLER``) it is one attempt of that loop; called by
  anything else it is the whole call (no fallback step), making the first attempt. A
  function decorated twice directly (``opero(opero(f, circuit_breaker=True))``) thus
  reports the outer call's attempt in the inner one;
- ``CALLER``: calls attempts but says nothing itself (the observed attempt layer);
- ``HANDOFF``: a helper thread running a sync attempt for a caller that waits on it (an
  attempt timeout); the timeout module resolves it from the caller's frames.

The nearest opero call wins, so a decorated function called inside another one sees its
own attempts. Coroutines awaiting each other are on the stack too while they run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

from opero._observe.events import current_call

FIRST, RETRY, GUARD, CALLER, HANDOFF = range(5)
_ATTEMPT_MAKERS = frozenset({FIRST, RETRY, CALLER})

_kinds: dict[CodeType, int] = {}
_retry_counts: dict[FrameType, list[int]] = {}  # the retry loops running now, any thread
_handoffs: dict[CodeType, Callable[[], int | None]] = {}


def mark(kind: int, *functions: Callable[..., Any]) -> None:
    """Say what frames of these functions' code are (see the module docstring)."""
    for function in functions:
        _kinds[function.__code__] = kind


def mark_nested(kind: int, factory: Callable[..., Any], name: str) -> None:
    """Mark the functions called `name` that `factory` defines (closures it returns)."""
    for const in factory.__code__.co_consts:
        if isinstance(const, CodeType) and const.co_name == name:
            _kinds[const] = kind


def mark_handoff(function: Callable[..., Any], resolve: Callable[[], int | None]) -> None:
    """`function` runs attempts handed over from another thread; `resolve()`, called on
    that thread, says the attempt's number."""
    _kinds[function.__code__] = HANDOFF
    _handoffs[function.__code__] = resolve


def retries_started(frame: FrameType) -> list[int]:
    """A retry loop running in `frame` begins: the box it keeps its count in."""
    box = _retry_counts[frame] = [1]
    return box


def retries_ended(frame: FrameType) -> None:
    _retry_counts.pop(frame, None)


def attempt_at(frame: FrameType | None) -> int | None:
    """The attempt the nearest opero call around `frame` is making, or None."""
    kinds = _kinds
    while frame is not None:
        kind = kinds.get(frame.f_code)
        if kind is None or kind == CALLER:
            frame = frame.f_back
            continue
        if kind == RETRY:
            box = _retry_counts.get(frame)
            return box[0] if box is not None else 1
        if kind == GUARD:
            outside = frame.f_back
            if outside is not None and kinds.get(outside.f_code) in _ATTEMPT_MAKERS:
                frame = outside  # one attempt of the loop outside
                continue
            return 1
        if kind == HANDOFF:
            return _handoffs[frame.f_code]()
        return 1
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
