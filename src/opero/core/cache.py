"""Cache backends. The backends themselves arrive with the caching work (see TODO.md);
this module holds the protocol that `cache_backend=` objects are checked against."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

BUILTIN_CACHE_BACKENDS = frozenset({"memory", "disk", "redis"})


@runtime_checkable
class CacheBackend(Protocol):
    """What an object passed as ``cache_backend=`` must offer."""

    def get(self, key: str) -> object: ...

    def set(self, key: str, value: object, ttl: float | None) -> None: ...

    def delete(self, key: str) -> None: ...

    def clear(self) -> None: ...
