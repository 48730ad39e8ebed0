"""The in-process memory backend: cachetools decides, a plain dict answers hits.

cachetools' `LRUCache` and `TTLCache` are not safe for threads, and their lookups run in
Python (`__getitem__` calls `Cache.__getitem__`, then reorders; `TTLCache` also calls its
timer wrapper). A closure that does nothing but take a lock and look a key up in an
`LRUCache` costs about 8 `functools.lru_cache` hits, 12 with a `TTLCache` (measured for
issue 20, which asks at most 6 for the whole opero hit: 0.3 us against 0.05 us). No key
building makes up for that, so hits never take the lock and never enter cachetools:

- `hot` mirrors what the cachetools cache holds (`key -> value`, or `key ->
  (value, expires)` with a TTL). A hit is one dict lookup, which the GIL makes atomic
  against the writers. Writers (`set`, `delete`, `clear`, under the lock) change
  cachetools first, then the mirror; whatever cachetools evicts (`popitem`) or expires
  (`expire`, the hooks its documentation names for this) leaves the mirror with it.
- `touched` records the keys hits found, in the order of their last hit (a test and a
  move, or a store, in C on an `OrderedDict`). Before each write, `replay_hits` looks
  those keys up in cachetools, oldest first, so its LRU order is what it would be had
  every hit gone through it: eviction stays cachetools' own, exactly least recently
  used. It holds each key once: never more than the cache holds, plus keys evicted by a
  racing write.

Expiry is cachetools' too: `set` reads the clock once (`with entries.timer`), for its
entry and for the mirror's, and a mirrored entry past its time is a miss until the
write that replaces it purges it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from cachetools import LRUCache, TTLCache

clock: Callable[[], float] = time.monotonic  # what TTLs are measured with (tests replace it)


# Subclasses only to hear of what leaves: `popitem` (evictions) and `expire` (expired
# entries) are the methods cachetools' documentation tells subclasses to override for it.
class _LRU(LRUCache[Any, Any]):
    def __init__(self, maxsize: int, hot: dict[Any, Any]) -> None:
        super().__init__(maxsize)
        self.hot = hot

    def popitem(self) -> tuple[Any, Any]:
        key, value = super().popitem()
        self.hot.pop(key, None)
        return key, value


class _TTL(TTLCache[Any, Any, float]):
    def __init__(
        self, maxsize: int, ttl: float, timer: Callable[[], float], hot: dict[Any, Any]
    ) -> None:
        super().__init__(maxsize, ttl, timer)
        self.hot = hot

    def popitem(self) -> tuple[Any, Any]:
        key, value = super().popitem()
        self.hot.pop(key, None)
        return key, value

    def expire(self, time: float | None = None) -> list[tuple[Any, Any]]:
        expired = super().expire(time)
        for key, _ in expired:
            self.hot.pop(key, None)
        return expired


class MemoryBackend:
    """A bounded LRU (with TTL when given) from cachetools, made safe for threads, with
    hits read from a mirror without a lock (see the module's docstring)."""

    def __init__(self, maxsize: int, ttl: float | None, timer: Callable[[], float] | None = None):
        self.ttl = ttl
        self.timer = timer or clock
        self.hot: dict[Any, Any] = {}
        self.touched: OrderedDict[Any, None] = OrderedDict()
        self._entries: _LRU | _TTL = (
            _TTL(maxsize, ttl, self.timer, self.hot) if ttl is not None else _LRU(maxsize, self.hot)
        )
        self._lock = threading.Lock()

    def get(self, key: Any) -> object:
        """The value, or `KeyError`; `TypeError` for an unhashable key. The hit paths
        (`opero._cache.hits`) inline the same lookup."""
        if self.ttl is None:
            value = self.hot[key]
        else:
            value, expires = self.hot[key]
            if not self.timer() < expires:
                raise KeyError(key)
        self.touch(key)
        return value

    def touch(self, key: Any) -> None:
        """Records a hit of `key` for `replay_hits` (the hit paths inline it)."""
        touched = self.touched
        if key in touched:  # a test and a move cost a hit less than a store and a move
            try:  # noqa: SIM105 - the same as the inlined hit paths
                touched.move_to_end(key)
            except KeyError:  # a write replayed it in between: its order is already counted
                pass
        else:
            touched[key] = None

    def set(self, key: Any, value: object, ttl: float | None = None) -> None:
        with self._lock:
            self.replay_hits()
            entries = self._entries
            if isinstance(entries, _TTL):
                with entries.timer as now:  # one reading of the clock for both
                    entries[key] = value
                self.hot[key] = (value, now + entries.ttl)
            else:
                entries[key] = value
                self.hot[key] = value

    def replay_hits(self) -> None:
        """Hand cachetools the hits since the last write, oldest first (under the lock)."""
        touched, entries = self.touched, self._entries
        for _ in range(len(touched)):
            try:
                key, _ = touched.popitem(last=False)
                entries[key]  # cachetools' own lookup: moves the key to the recent end
            except KeyError:  # evicted or expired since
                continue

    def delete(self, key: Any) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self.hot.pop(key, None)
            self.touched.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hot.clear()
            self.touched.clear()

    def __len__(self) -> int:
        with self._lock:
            entries = self._entries
            if isinstance(entries, _TTL):
                entries.expire()  # TTLCache counts expired entries until they are purged
            return len(entries)
