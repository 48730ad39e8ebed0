"""Prometheus metrics for opero: calls, attempts, retries, fallbacks and call durations.

Install it once, at start-up, and expose the registry as usual::

    from prometheus_client import start_http_server
    from opero.prometheus import instrument

    uninstall = instrument()  # or instrument(registry=my_registry, namespace="myapp")
    start_http_server(8000)

Every ``@opero`` function (sync or async) then counts, labelled by ``function`` (its
qualified name; argument values are never recorded):

- ``opero_calls_total{function, outcome}``: outcome ``success``, ``failure`` or
  ``cache_hit`` (a call answered by the cache);
- ``opero_attempts_total{function, outcome}``: outcome ``success`` or ``failure``;
- ``opero_retries_total{function}``: retries scheduled after a failed attempt;
- ``opero_fallbacks_total{function}``: switches to the next ``arg_fallback`` value;
- ``opero_call_duration_seconds{function, outcome}``: a histogram of the duration of the
  calls that ran (cache hits excluded), outcome ``success`` or ``failure``.

The collectors are made once per registry and namespace, and one hook feeds them however
often `instrument` is called for them: each call returns its own uninstall function, and
counting stops when all of them have been called. Counts never reset.

This module imports prometheus_client (``pip install prometheus-client``);
``import opero`` never does.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from opero._observe import events
from opero._observe.events import Event, add_hook, remove_hook

__all__ = ["instrument"]


def instrument(
    registry: CollectorRegistry | None = None, namespace: str = "opero"
) -> Callable[[], None]:
    """Count every opero call into `registry` from now on; returns a function that stops.

    `registry` defaults to prometheus_client's default ``REGISTRY``; metric names start
    with ``<namespace>_``. Calling it again for the same registry and namespace reuses
    the collectors and never counts an event twice.
    """
    target = REGISTRY if registry is None else registry
    with _lock:
        per_namespace = _metrics.setdefault(target, {})
        metrics = per_namespace.get(namespace)
        if metrics is None:
            metrics = per_namespace[namespace] = _Metrics(target, namespace)
        metrics.users += 1
        if metrics.users == 1:
            add_hook(metrics)
    done = False

    def uninstall() -> None:
        nonlocal done
        with _lock:
            if done:
                return
            done = True
            metrics.users -= 1
            if metrics.users == 0:
                remove_hook(metrics)

    return uninstall


class _Metrics:
    """The collectors of one registry and namespace, and the hook that updates them."""

    def __init__(self, registry: CollectorRegistry, namespace: str) -> None:
        self.users = 0  # instrument() calls not uninstalled yet; hooked while > 0
        self.calls = Counter(
            "calls",
            "Calls of opero functions, by outcome (success, failure, cache_hit).",
            ("function", "outcome"),
            namespace=namespace,
            registry=registry,
        )
        self.attempts = Counter(
            "attempts",
            "Attempts made by opero functions, by outcome (success, failure).",
            ("function", "outcome"),
            namespace=namespace,
            registry=registry,
        )
        self.retries = Counter(
            "retries",
            "Retries scheduled after a failed attempt.",
            ("function",),
            namespace=namespace,
            registry=registry,
        )
        self.fallbacks = Counter(
            "fallbacks",
            "Switches to the next arg_fallback value.",
            ("function",),
            namespace=namespace,
            registry=registry,
        )
        self.duration = Histogram(
            "call_duration_seconds",
            "Duration of the calls that ran (cache hits excluded), by outcome.",
            ("function", "outcome"),
            namespace=namespace,
            registry=registry,
        )

    def __call__(self, event: Event) -> None:
        kind = event.kind
        if kind == events.ATTEMPT_FAILED:
            self.attempts.labels(event.function, "failure").inc()
        elif kind == events.ATTEMPT_SUCCEEDED:
            self.attempts.labels(event.function, "success").inc()
        elif kind == events.RETRY_SCHEDULED:
            self.retries.labels(event.function).inc()
        elif kind == events.FALLBACK_SWITCHED:
            self.fallbacks.labels(event.function).inc()
        elif kind in (events.CALL_SUCCEEDED, events.CALL_FAILED):
            outcome = "success" if kind == events.CALL_SUCCEEDED else "failure"
            self.calls.labels(event.function, outcome).inc()
            if event.elapsed is not None:
                self.duration.labels(event.function, outcome).observe(event.elapsed)
        elif kind == events.CACHE_HIT:
            self.calls.labels(event.function, "cache_hit").inc()


_lock = threading.Lock()
# Per registry (weakly: a registry dropped takes its entry along), per namespace.
_metrics: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Metrics]] = (
    weakref.WeakKeyDictionary()
)
