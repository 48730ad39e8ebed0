"""Events: what happened inside a call, for hooks, stats, logs and exporters.

Every step reports through one `Observer` per decorated function. Nothing is built or
sent unless someone listens: a function is *observed* when it has its own hooks
(``on_event=``), keeps stats (``stats=True``), or a global hook is installed
(`add_hook`). Unobserved, the success path only reads one attribute (`Observer.on`);
observed, the call diverts to the observed copy of its pipeline
(`opero._pipeline.observed`), which emits an event per step. A hook that raises never
breaks the call: the error is logged once per hook.

Events never carry argument values or results (fallback values are often API keys),
only the function's name, a per-call correlation id, attempt and fallback numbers,
delays, durations and exception type names.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from opero._utils.logging import log

# The kinds of events, in the order a call meets them.
CALL_STARTED = "call_started"
CACHE_HIT = "cache_hit"
CACHE_MISS = "cache_miss"
ATTEMPT_STARTED = "attempt_started"
RATE_LIMIT_WAIT = "rate_limit_wait"
# A throttling answer (429, or 503 with Retry-After) paused the function's rate limit
# for every caller, or made its pause longer: `delay` is the pause, `error` the type.
RATE_LIMIT_PAUSED = "rate_limit_paused"
# An adaptive rate limit moved (cut by a throttling answer, or growing back): `rate` is
# the new rate in attempts a second, as the process that reports it sees it.
RATE_LIMIT_CHANGED = "rate_limit_changed"
ATTEMPT_SUCCEEDED = "attempt_succeeded"
ATTEMPT_FAILED = "attempt_failed"
ATTEMPT_TIMED_OUT = "attempt_timed_out"
BREAKER_REJECTED = "breaker_rejected"
BULKHEAD_REJECTED = "bulkhead_rejected"
BREAKER_OPENED = "breaker_opened"
BREAKER_HALF_OPEN = "breaker_half_open"
BREAKER_CLOSED = "breaker_closed"
RETRY_SCHEDULED = "retry_scheduled"
RETRY_BUDGET_EXHAUSTED = "retry_budget_exhausted"
FALLBACK_SWITCHED = "fallback_switched"
# hedge_after: the next fallback value started beside a slow one; a value won the race.
HEDGE_STARTED = "hedge_started"
HEDGE_WON = "hedge_won"
DEADLINE_EXCEEDED = "deadline_exceeded"
GAVE_UP = "gave_up"
CALL_SUCCEEDED = "call_succeeded"
CALL_FAILED = "call_failed"
# @opmap, per item, in the parent whatever the mode: handed to a worker (or a task), and
# its outcome back; a failure that is the worker's death also says worker_crashed.
ITEM_STARTED = "item_started"
ITEM_SUCCEEDED = "item_succeeded"
ITEM_FAILED = "item_failed"
WORKER_CRASHED = "worker_crashed"

EVENT_KINDS = (
    CALL_STARTED,
    CACHE_HIT,
    CACHE_MISS,
    ATTEMPT_STARTED,
    RATE_LIMIT_WAIT,
    RATE_LIMIT_PAUSED,
    RATE_LIMIT_CHANGED,
    ATTEMPT_SUCCEEDED,
    ATTEMPT_FAILED,
    ATTEMPT_TIMED_OUT,
    BREAKER_REJECTED,
    BULKHEAD_REJECTED,
    BREAKER_OPENED,
    BREAKER_HALF_OPEN,
    BREAKER_CLOSED,
    RETRY_SCHEDULED,
    RETRY_BUDGET_EXHAUSTED,
    FALLBACK_SWITCHED,
    HEDGE_STARTED,
    HEDGE_WON,
    DEADLINE_EXCEEDED,
    GAVE_UP,
    CALL_SUCCEEDED,
    CALL_FAILED,
    ITEM_STARTED,
    ITEM_SUCCEEDED,
    ITEM_FAILED,
    WORKER_CRASHED,
)


class Event(NamedTuple):
    """One thing that happened in one call of one decorated function (immutable)."""

    kind: str
    function: str
    call_id: str
    attempt: int = 0  # 1-based within the current fallback value; 0 when not per attempt
    fallback_index: int | None = None  # 0-based index of the fallback value, if any
    delay: float | None = None  # seconds: of a retry_scheduled, rate_limit_wait or _paused
    elapsed: float | None = None  # seconds: of the attempt or of the whole call
    error: str | None = None  # exception type name
    state: str | None = None  # breaker state, for breaker_* events
    time: float = 0.0  # time.time() when it happened
    item: int | None = None  # 0-based input index, for the item_* events of a map
    rate: float | None = None  # attempts a second, for rate_limit_changed


Hook = Callable[[Event], object]


class CallInfo:
    """The observed call in progress, in the `current_call` context variable."""

    __slots__ = ("attempt", "call_id", "fallback_index", "function", "started")

    def __init__(self, function: str) -> None:
        self.function = function
        self.call_id = new_call_id()
        self.attempt = 0
        self.fallback_index: int | None = None
        self.started = time.perf_counter()


current_call: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "opero_current_call", default=None
)

_prefix = f"{os.getpid():x}"
_counter = itertools.count(1)


def call_id() -> str:
    """The correlation id of the call in progress, or "-" outside one."""
    info = current_call.get()
    return info.call_id if info is not None else "-"


def new_call_id() -> str:
    """A short id, unique within this process's lifetime (pid and a counter)."""
    return f"{_prefix}-{next(_counter):x}"


class Stats(NamedTuple):
    """What `fn.stats()` returns: counts since the function was decorated (or reset)."""

    calls: int
    successes: int
    failures: int
    retries: int
    fallbacks_used: int  # calls answered by a fallback value other than the first
    cache_hits: int
    # The rate limit: pauses for throttling answers (backpressure), and its rate as last
    # reported (attempts a second; None until a rate_limit_changed event: an adaptive
    # limit reports its first, a fixed one only once throttling moved it).
    rate_limit_pauses: int = 0
    rate_limit_rate: float | None = None


class _Counts:
    __slots__ = (
        "cache_hits",
        "calls",
        "failures",
        "fallbacks_used",
        "rate_limit_pauses",
        "rate_limit_rate",
        "retries",
        "successes",
    )

    def __init__(self) -> None:
        self.calls = self.successes = self.failures = 0
        self.retries = self.fallbacks_used = self.cache_hits = self.rate_limit_pauses = 0
        self.rate_limit_rate: float | None = None


class Observer:
    """The events of one decorated function: who listens, and its stats.

    `on` is true while anyone listens (its own hooks, a global hook, or stats); the
    decorated function then runs `pipeline`, the observed twin of its fast pipeline.
    """

    def __init__(
        self, function: str, hooks: Iterable[Hook], *, stats: bool, register: bool = True
    ) -> None:
        self.function = function
        self.hooks: tuple[Hook, ...] = tuple(hooks)
        self.counts: _Counts | None = _Counts() if stats else None
        self._lock = threading.Lock()
        self.on = False
        self.listeners: tuple[Hook, ...] = ()
        self.pipeline: Callable[..., Any] = _not_built
        self.cached = False  # the function has a cache in front (its misses are events)
        if register:
            _hub.register(self)

    def breaker_changed(self, state: str) -> None:
        """A breaker of this function changed state (called outside its lock)."""
        if self.on:
            kind = {"open": BREAKER_OPENED, "half_open": BREAKER_HALF_OPEN}.get(
                state, BREAKER_CLOSED
            )
            self.emit(kind, current_call.get(), state=state)

    def refresh(self, global_hooks: tuple[Hook, ...]) -> None:
        self.listeners = self.hooks + global_hooks
        self.on = bool(self.listeners) or self.counts is not None

    def emit(self, kind: str, info: CallInfo | None, **fields: Any) -> None:
        """Send one event to every hook, and count it."""
        forward = _forwarded
        counts = self.counts
        if forward is None and counts is not None:
            index = info.fallback_index if info is not None else None
            self._count(counts, kind, index, fields.get("rate"))
        if not self.listeners and forward is None:
            return
        event = Event(
            kind,
            self.function,
            info.call_id if info is not None else "",
            info.attempt if info is not None else 0,
            info.fallback_index if info is not None else None,
            **fields,
            time=time.time(),
        )
        if forward is not None:  # an @opmap worker process: the parent delivers it
            forward.append(event)
            return
        self._send(event)

    def deliver(self, events: Iterable[Event]) -> None:
        """Count and send events that happened elsewhere (in an @opmap worker process),
        as if emitted here. Events of other opero functions (called inside the items) go
        to the global hooks only: their `on_event` hooks are not this observer's."""
        counts = self.counts
        for event in events:
            if event.function != self.function:
                self._send(event, _hub.hooks)
                continue
            if counts is not None:
                self._count(counts, event.kind, event.fallback_index, event.rate)
            self._send(event, self.listeners)

    def _send(self, event: Event, listeners: tuple[Hook, ...] | None = None) -> None:
        for hook in self.listeners if listeners is None else listeners:
            try:
                hook(event)
            except Exception as exc:  # a hook never breaks the call
                _hub.hook_failed(hook, exc)

    def _count(
        self, counts: _Counts, kind: str, fallback_index: int | None, rate: float | None = None
    ) -> None:
        with self._lock:
            if kind == CALL_STARTED:
                counts.calls += 1
            elif kind == CALL_SUCCEEDED:
                counts.successes += 1
                if fallback_index:
                    counts.fallbacks_used += 1
            elif kind == CALL_FAILED:
                counts.failures += 1
            elif kind == RETRY_SCHEDULED:
                counts.retries += 1
            elif kind == CACHE_HIT:  # a call answered by the cache
                counts.calls += 1
                counts.successes += 1
                counts.cache_hits += 1
            elif kind == RATE_LIMIT_PAUSED:
                counts.rate_limit_pauses += 1
            elif kind == RATE_LIMIT_CHANGED and rate is not None:
                counts.rate_limit_rate = rate

    def stats(self) -> Stats:
        counts = self.counts
        if counts is None:
            raise RuntimeError(
                f"{self.function}() keeps no stats: decorate it with stats=True "
                "(counting costs a little on every call, so it is off by default)"
            )
        with self._lock:
            return Stats(
                counts.calls,
                counts.successes,
                counts.failures,
                counts.retries,
                counts.fallbacks_used,
                counts.cache_hits,
                counts.rate_limit_pauses,
                counts.rate_limit_rate,
            )

    def reset_stats(self) -> None:
        if self.counts is not None:
            with self._lock:
                self.counts.__init__()  # type: ignore[misc]


def _not_built(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("an observer's pipeline is set at decoration")


class _Hub:
    """The global hooks, and every observer to tell when they change."""

    def __init__(self) -> None:
        self.hooks: tuple[Hook, ...] = ()
        self._observers: weakref.WeakSet[Observer] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._reported: set[int] = set()

    def register(self, observer: Observer) -> None:
        with self._lock:
            self._observers.add(observer)
            observer.refresh(self.hooks)

    def change(self, edit: Callable[[tuple[Hook, ...]], tuple[Hook, ...]]) -> None:
        """Replace the global hooks by `edit(hooks)`, atomically, and tell observers."""
        with self._lock:
            hooks = self.hooks = edit(self.hooks)
            for observer in list(self._observers):
                observer.refresh(hooks)

    def hook_failed(self, hook: Hook, exc: Exception) -> None:
        if id(hook) in self._reported:
            return
        self._reported.add(id(hook))
        log().warning(
            "event hook {} raised {}; the call goes on (reported once per hook)",
            getattr(hook, "__qualname__", type(hook).__qualname__),
            type(exc).__name__,
        )


_hub = _Hub()

# In an @opmap worker process: where events go instead of to hooks, for the parent to
# deliver with the chunk's results (see `forward_events`).
_forwarded: list[Event] | None = None


def forward_events(into: list[Event] | None) -> None:
    """Collect this process's events in `into` instead of sending them to hooks (None:
    send them again). For @opmap worker processes: their hooks are copies the parent
    never sees (a metrics registry, an exporter thread that did not survive the fork)."""
    global _forwarded  # noqa: PLW0603 - per-process mode, set once in a worker
    _forwarded = into


# Where a wrapper must not divert (it is not the outermost one): never observed.
NEVER_OBSERVED = Observer("", (), stats=False, register=False)


def add_hook(hook: Hook) -> Callable[[], None]:
    """Send the events of every opero function to `hook` (a callable taking an `Event`).

    Returns a function that removes the hook again. Hooks run in the calling thread or
    task, synchronously: keep them quick (hand the event to a queue for slow work).
    """
    if not callable(hook):
        raise TypeError(f"add_hook() needs a callable taking an Event, got {hook!r}")
    _hub.change(lambda hooks: (*hooks, hook))

    def remove() -> None:
        remove_hook(hook)

    return remove


def remove_hook(hook: Hook) -> None:
    """Stop sending events to `hook` (added with `add_hook`); unknown hooks are ignored."""

    def without(hooks: tuple[Hook, ...]) -> tuple[Hook, ...]:
        if hook not in hooks:
            return hooks
        index = hooks.index(hook)
        return hooks[:index] + hooks[index + 1 :]

    _hub.change(without)
