"""`cache_backend="twat"`: an adapter over twat-cache's `fcache` (``opero[twat]``).

For users of the twat ecosystem. twat-cache 2.7.5 only works through `fcache` (joblib on
disk; its other engines raise on use), has no TTL or size bound there, and importing it
calls loguru's ``logger.remove()``, deleting the application's log handlers and adding
its own. The adapter removes the handler twat-cache added, but it cannot bring back the
application's: it says so in a `RuntimeWarning` and the README says to add handlers
after the first use of this backend.

`fcache` caches a function's results, not key/value pairs, so the adapter caches one
reader function: ``set`` hands the value to the reader and calls it once (joblib stores
the result under the key), ``get`` calls it only when joblib already holds the key.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

_handoff: dict[str, object] = {}
_handoff_lock = threading.Lock()


def _read(key: str) -> object:
    # The cached function: joblib stores its result under `key`. Exceptions are never
    # stored, so a key with nothing handed over stays missing.
    with _handoff_lock:
        return _handoff.pop(key)


class TwatBackend:
    """One namespace of twat-cache's `fcache` (folder ``opero-<namespace>``)."""

    def __init__(self, namespace: str) -> None:
        fcache = _import_fcache()
        self._stored: Any = fcache(folder_name=f"opero-{namespace}")(_read)

    def get(self, key: str) -> object:
        if not self._stored.check_call_in_cache(key):
            raise KeyError(key)
        return self._stored(key)

    def set(self, key: str, value: object, ttl: float | None) -> None:
        with _handoff_lock:
            _handoff[key] = value
        try:
            self._stored(key)
        finally:
            with _handoff_lock:
                _handoff.pop(key, None)

    def delete(self, key: str) -> None:
        if self._stored.check_call_in_cache(key):
            self._stored.call_and_shelve(key).clear()

    def clear(self) -> None:
        self._stored.clear(warn=False)


def _import_fcache() -> Any:
    from loguru import logger

    handlers_before = set(_handler_ids(logger))
    try:
        from twat_cache import fcache
    except ImportError as exc:
        raise ImportError(
            "cache_backend='twat' needs twat-cache: pip install 'opero[twat]'"
        ) from exc
    handlers_after = set(_handler_ids(logger))
    for added in handlers_after - handlers_before:
        logger.remove(added)
    removed = handlers_before - handlers_after
    if removed:
        warnings.warn(
            f"importing twat_cache removed {len(removed)} loguru handler(s) of this "
            "application (yours, or loguru's default stderr handler); opero cannot "
            "restore them: add your handlers after the first use of cache_backend='twat'",
            RuntimeWarning,
            stacklevel=4,
        )
    return fcache


def _handler_ids(logger: Any) -> list[int]:
    # loguru keeps handlers in a private dict; only read here, to report what
    # twat_cache's import did (tests/test_cache_twat.py pins this).
    return list(getattr(getattr(logger, "_core", None), "handlers", {}))
