"""opero: resilient function calls.

`@opero` makes one sync or async call resilient: cache, parameter-based fallback
(`arg_fallback`), retries with backoff and jitter, attempt and total timeouts, a circuit
breaker, a bulkhead, a retry budget and a rate limit. `@opmap` maps such a function over
many items (process, thread or async mode, or Dask and Ray), keeping every result when
some items fail. Events reach hooks, stats, OpenTelemetry and Prometheus; logging goes
through loguru and is silent until ``logger.enable("opero")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opero._decorators.opero import opero
from opero._decorators.opmap import opmap
from opero._observe.attempts import current_attempt, current_call_id
from opero._observe.events import Event, Stats, add_hook, remove_hook
from opero._results import Err, Ok, Result
from opero._utils.logging import disable_if_loguru_loaded
from opero.exceptions import (
    AllFailedError,
    AttemptTimeoutError,
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    OperoError,
    OpmapError,
    RemoteError,
    ResultRejectedError,
    RetryPredicateError,
    WorkerCrashedError,
)

if TYPE_CHECKING:  # loaded on first use by __getattr__ below
    from opero._policies.breaker import CircuitBreakerOptions
    from opero._policies.budget import RetryBudget

    __version__: str

__all__ = [
    "AllFailedError",
    "AttemptTimeoutError",
    "BulkheadFullError",
    "CircuitBreakerOptions",
    "CircuitOpenError",
    "DeadlineExceededError",
    "Err",
    "Event",
    "Ok",
    "OperoError",
    "OpmapError",
    "RemoteError",
    "Result",
    "ResultRejectedError",
    "RetryBudget",
    "RetryPredicateError",
    "Stats",
    "WorkerCrashedError",
    "__version__",
    "add_hook",
    "current_attempt",
    "current_call_id",
    "opero",
    "opmap",
    "remove_hook",
]

disable_if_loguru_loaded()


def __getattr__(name: str) -> object:
    # Option classes import dataclasses, slow enough to load only when first used.
    if name == "CircuitBreakerOptions":
        from opero._policies.breaker import CircuitBreakerOptions

        return CircuitBreakerOptions
    if name == "RetryBudget":
        from opero._policies.budget import RetryBudget

        return RetryBudget
    # The version is read from the installed metadata on first use only: importlib.metadata
    # is too slow to import with opero itself.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("opero")
        except PackageNotFoundError:
            found = "0.0.0+unknown"
        globals()["__version__"] = found
        return found
    raise AttributeError(f"module 'opero' has no attribute {name!r}")
