"""OpenTelemetry tracing for opero: one span per call, one child span per attempt.

Install it once, at start-up, after configuring your tracer provider::

    from opero.otel import instrument

    uninstall = instrument()  # or instrument(tracer_provider=my_provider)
    ...
    uninstall()  # at shutdown, or in tests

Every call of an ``@opero`` function (sync or async) then makes a span
``opero.call <function>`` with one child span ``opero.attempt <function>`` per attempt.
While the call runs its span is the current one, and while an attempt runs its span is:
spans your function makes nest under the attempt that ran them. Attributes:
``opero.function``, ``opero.call_id`` (the correlation id of opero's log lines),
``opero.attempt`` (1-based within the current fallback value), ``opero.fallback_index``
(when the function has ``arg_fallback``), ``opero.outcome`` ("success" or "failure") and,
on failure, ``opero.error`` (the exception's type name) and an ERROR status. A failed
attempt that is retried carries a ``retry_scheduled`` span event with ``opero.delay``;
the other steps (fallback switches, giving up, breaker and rate-limit events, ...) are
span events named by their kind. A cache hit is a zero-length span
``opero.cache_hit <function>``. Argument values and results are never recorded.

This module imports opentelemetry (``pip install opentelemetry-api``, plus an SDK or a
distro to export anything); ``import opero`` never does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import Token

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.util.types import AttributeValue

from opero._observe import events
from opero._observe.events import Event, add_hook, remove_hook

__all__ = ["instrument"]

# Events that belong to the attempt that just failed (they follow its attempt_failed).
_AFTER_FAILED_ATTEMPT = frozenset(
    {
        events.ATTEMPT_TIMED_OUT,
        events.BREAKER_REJECTED,
        events.BULKHEAD_REJECTED,
        events.RETRY_SCHEDULED,
    }
)


def instrument(tracer_provider: TracerProvider | None = None) -> Callable[[], None]:
    """Trace every opero call from now on; returns a function that stops it again.

    `tracer_provider` defaults to the global one (``trace.set_tracer_provider``), looked
    up when the first span starts. Calls in flight when the returned function is called
    still end their spans (and restore the current span); later calls make none.
    Each call of `instrument` installs one more hook: call it once per provider.
    """
    import opero

    tracer = trace.get_tracer("opero", opero.__version__, tracer_provider=tracer_provider)
    tracing = _Tracing(tracer)
    add_hook(tracing)
    return tracing.uninstall


class _Call:
    """The spans of one call in progress, and the context tokens to restore."""

    __slots__ = ("attempt", "attempt_token", "attempts", "failed", "failed_at", "span", "token")

    def __init__(self) -> None:
        self.span: Span = trace.INVALID_SPAN  # set as soon as the call is registered
        self.token: Token[Context] | None = None
        self.attempt: Span | None = None  # the attempt running now
        self.attempt_token: Token[Context] | None = None
        # The attempt that failed last, kept open (but ended at `failed_at`) until it is
        # known whether a retry follows, so that the retry_scheduled event lands on it.
        self.failed: Span | None = None
        self.failed_at = 0
        self.attempts = 0


def _ns(event: Event) -> int:
    """When the event happened, in ns: spans of @opmap process workers' items are
    delivered in the parent after their chunk, and keep their own times."""
    return int(event.time * 1e9)


def _detach(token: Token[Context] | None) -> None:
    if token is not None:
        otel_context.detach(token)


def _base(event: Event) -> dict[str, AttributeValue]:
    return {"opero.function": event.function, "opero.call_id": event.call_id}


def _fail(span: Span, error: str | None) -> None:
    span.set_attribute("opero.outcome", "failure")
    if error is not None:
        span.set_attribute("opero.error", error)
    span.set_status(Status(StatusCode.ERROR, error))


def _details(event: Event) -> dict[str, AttributeValue]:
    details: dict[str, AttributeValue] = {}
    if event.delay is not None:
        details["opero.delay"] = event.delay
    if event.error is not None:
        details["opero.error"] = event.error
    if event.state is not None:
        details["opero.state"] = event.state
    return details


class _Tracing:
    """The hook: turns the events of each call into its spans (state keyed by call id).

    The events of one call come in order from the thread or task running it, so a call's
    `_Call` is only touched by that call; the lock guards the dict of calls."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.calls: dict[str, _Call] = {}
        self.lock = threading.Lock()
        self.closing = False

    def uninstall(self) -> None:
        """Stop tracing new calls; the hook leaves once the calls in flight have ended."""
        with self.lock:
            self.closing = True
            idle = not self.calls
        if idle:
            remove_hook(self)

    def __call__(self, event: Event) -> None:
        kind = event.kind
        if kind == events.CALL_STARTED:
            self._call_started(event)
        elif kind == events.CACHE_HIT:
            self._cache_hit(event)
        else:
            with self.lock:
                call = self.calls.get(event.call_id)
            if call is None:  # a call that started before the hook was installed
                return
            if kind == events.ATTEMPT_STARTED:
                self._attempt_started(event, call)
            elif kind == events.ATTEMPT_SUCCEEDED:
                self._attempt_succeeded(event, call)
            elif kind == events.ATTEMPT_FAILED:
                self._attempt_failed(event, call)
            elif kind in (events.CALL_SUCCEEDED, events.CALL_FAILED):
                self._call_ended(event, call)
            elif kind == events.CACHE_MISS:
                call.span.set_attribute("opero.cache_hit", False)
            else:
                self._step(event, call)

    def _call_started(self, event: Event) -> None:
        call = _Call()
        with self.lock:  # registered first: `uninstall` now waits for this call's end
            if self.closing:
                return
            self.calls[event.call_id] = call
        span = self.tracer.start_span(
            f"opero.call {event.function}", attributes=_base(event), start_time=_ns(event)
        )
        call.span = span
        call.token = otel_context.attach(trace.set_span_in_context(span))

    def _cache_hit(self, event: Event) -> None:
        with self.lock:
            if self.closing:
                return
        attributes = _base(event)
        attributes["opero.outcome"] = "success"
        attributes["opero.cache_hit"] = True
        now = _ns(event)
        span = self.tracer.start_span(
            f"opero.cache_hit {event.function}", attributes=attributes, start_time=now
        )
        span.end(end_time=now)

    def _attempt_started(self, event: Event, call: _Call) -> None:
        self._end_failed(call)
        if call.attempt is not None:  # no end event came (cannot happen today): close it
            call.attempt.end()
            _detach(call.attempt_token)
        attributes = _base(event)
        attributes["opero.attempt"] = event.attempt
        if event.fallback_index is not None:
            attributes["opero.fallback_index"] = event.fallback_index
        parent: Context = trace.set_span_in_context(call.span)
        span = self.tracer.start_span(
            f"opero.attempt {event.function}",
            context=parent,
            attributes=attributes,
            start_time=_ns(event),
        )
        call.attempt = span
        call.attempt_token = otel_context.attach(trace.set_span_in_context(span, parent))
        call.attempts += 1

    def _attempt_succeeded(self, event: Event, call: _Call) -> None:
        span = call.attempt
        if span is None:
            return
        span.set_attribute("opero.outcome", "success")
        span.end(end_time=_ns(event))
        _detach(call.attempt_token)
        call.attempt = call.attempt_token = None

    def _attempt_failed(self, event: Event, call: _Call) -> None:
        span = call.attempt
        if span is None:
            return
        _fail(span, event.error)
        _detach(call.attempt_token)
        call.attempt = call.attempt_token = None
        call.failed, call.failed_at = span, _ns(event)

    def _end_failed(self, call: _Call) -> None:
        if call.failed is not None:
            call.failed.end(end_time=call.failed_at)
            call.failed = None

    def _step(self, event: Event, call: _Call) -> None:
        """Any other event: a span event on the attempt it belongs to, or on the call."""
        if call.attempt is not None:
            call.attempt.add_event(event.kind, _details(event))
        elif call.failed is not None and event.kind in _AFTER_FAILED_ATTEMPT:
            # Dated at the failure, so that it lies inside the (already timed) span.
            call.failed.add_event(event.kind, _details(event), timestamp=call.failed_at)
        else:
            call.span.add_event(event.kind, _details(event))
        if event.kind == events.RETRY_SCHEDULED:
            self._end_failed(call)

    def _call_ended(self, event: Event, call: _Call) -> None:
        with self.lock:
            self.calls.pop(event.call_id, None)
            leave = self.closing and not self.calls
        self._end_failed(call)
        if call.attempt is not None:  # no end event came (cannot happen today): close it
            call.attempt.end()
            _detach(call.attempt_token)
        span = call.span
        if event.fallback_index is not None:
            span.set_attribute("opero.fallback_index", event.fallback_index)
        span.set_attribute("opero.attempts", call.attempts)
        if event.kind == events.CALL_SUCCEEDED:
            span.set_attribute("opero.outcome", "success")
        else:
            _fail(span, event.error)
        span.end(end_time=_ns(event))
        _detach(call.token)
        if leave:
            remove_hook(self)
