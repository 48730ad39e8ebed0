"""The in-process memory backend: cachetools decides, a plain dict answers hits.

cachetools' `LRUCache` and `TTLCache` are not safe for threads, and their lookups run in
Python (`__getitem__` calls `Cache.__getitem__`, then reorders; `TTLCache` also calls its
timer wrapper). A closure that does nothing but take a lock and look a key up in an
`LRUCache` costs about 8 `functools.lru_cache` hits, 12 with a `TTLCache` (measured for
issue 20, which asks at most 6 for the whole opero hit: 0.3 us against 0.05 us). No key
building makes up for that, so hits never take the lock and never enter cachetools:

- `hot` mirrors what the cachetools cache holds, as `key -> Entry` (the value, its key,
  and with a TTL its expiry). A hit is one dict lookup, which the GIL makes atomic
  against the writers. Writers (`set`, `delete`, `clear`, under the lock) change
  cachetools first, then the mirror; whatever cachetools evicts (`popitem`) or expires
  (`expire`, the hooks its documentation names for this) leaves the mirror with it.
- `log` receives the entry of every hit, in order: one `list.append`, which CPython runs
  without a call and without hashing the key (a test and a move on an `OrderedDict`
  hashed it twice and, with the count, cost a hit more than the clock a TTL hit reads).
  Before each write, `replay_hits` hands cachetools the entries logged, oldest first,
  each once at its last hit, so its LRU order is what it would be had every hit gone
  through it: eviction stays cachetools' own, exactly least recently used.
- The log is the hit count too: `hits` is what replays counted plus the log's length.
- In a cache read and not written, `compact_hits` keeps each logged entry once, at its
  last hit, once the log holds more than `limit` (twice the cache, plus some): a hit
  without a TTL compares the log's length with it; a TTL hit, which has read the clock
  anyway, calls `compact_hits` only once `due` (a millisecond after its last call) has
  passed, which costs it a float comparison rather than a call. Entries hash by
  identity: compacting and replaying hash no key.

Expiry is cachetools' too: `set` reads the clock once (`with entries.timer`), for its
entry and for the mirror's, and a mirrored entry past its time is a miss until the
write that replaces it purges it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cachetools import LRUCache, TTLCache

clock: Callable[[], float] = time.monotonic  # what TTLs are measured with (tests replace it)

_SLACK = 64  # log entries allowed over twice the cache's size before a hit compacts it
_COMPACT_EVERY = 0.001  # seconds between a TTL cache's checks of its log's length


class Entry:
    """One mirrored value: what a hit returns, and what it logs (hashed by identity)."""

    __slots__ = ("expires", "key", "value")

    def __init__(self, key: Any, value: object, expires: float) -> None:
        self.key = key
        self.value = value
        self.expires = expires  # infinite without a TTL (never read then)


# Subclasses only to hear of what leaves: `popitem` (evictions) and `expire` (expired
# entries) are the methods cachetools' documentation tells subclasses to override for it.
class _LRU(LRUCache[Any, Any]):
    def __init__(self, maxsize: int, hot: dict[Any, Entry]) -> None:
        super().__init__(maxsize)
        self.hot = hot

    def popitem(self) -> tuple[Any, Any]:
        key, value = super().popitem()
        self.hot.pop(key, None)
        return key, value


class _TTL(TTLCache[Any, Any, float]):
    def __init__(
        self, maxsize: int, ttl: float, timer: Callable[[], float], hot: dict[Any, Entry]
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
        self.hot: dict[Any, Entry] = {}
        self.log: list[Entry] = []  # the hit paths hold it: emptied, never replaced
        self.limit = 2 * maxsize + _SLACK
        self.due = [self.timer() + _COMPACT_EVERY]  # when a TTL hit next calls compact_hits
        self._counted = 0  # hits counted by replays and compactions, no longer in the log
        self._carried = 0  # entries at the log's head kept by a compaction: not new hits
        self._entries: _LRU | _TTL = (
            _TTL(maxsize, ttl, self.timer, self.hot) if ttl is not None else _LRU(maxsize, self.hot)
        )
        self._lock = threading.Lock()

    def get(self, key: Any) -> object:
        """The value, or `KeyError`; `TypeError` for an unhashable key. Counted as a
        hit (`hits`). The hit paths (`opero._cache.hits`) inline the same lookup."""
        entry = self.hot[key]
        if self.ttl is not None and not self.timer() < entry.expires:
            raise KeyError(key)
        log = self.log
        log.append(entry)
        if len(log) > self.limit:
            self.compact_hits()
        return entry.value

    @property
    def hits(self) -> int:
        """How many lookups found a live entry, since the last `clear`."""
        with self._lock:
            return self._counted + len(self.log) - self._carried

    def set(self, key: Any, value: object, ttl: float | None = None) -> None:
        with self._lock:
            self.replay_hits()
            entries = self._entries
            if isinstance(entries, _TTL):
                with entries.timer as now:  # one reading of the clock for both
                    entries[key] = value
                self.hot[key] = Entry(key, value, now + entries.ttl)
            else:
                entries[key] = value
                self.hot[key] = Entry(key, value, float("inf"))

    def _take_log(self) -> list[Entry]:
        """The entries logged so far, each once at its last hit, oldest first; counts
        them and empties the log up to here (under the lock: hits go on appending)."""
        log = self.log
        taken = len(log)
        latest = list(dict.fromkeys(reversed(log[:taken])))  # by identity, newest first
        del log[:taken]
        self._counted += taken - self._carried
        self._carried = 0
        latest.reverse()
        return latest

    def replay_hits(self) -> None:
        """Hand cachetools the hits since the last write, oldest first (under the lock)."""
        entries = self._entries
        for entry in self._take_log():
            try:
                entries[entry.key]  # cachetools' own lookup: moves the key to the recent end
            except KeyError:  # evicted or expired since
                continue

    def compact_hits(self) -> None:
        """Keep each logged entry once, at its last hit, if the log holds over `limit`."""
        with self._lock:
            self.due[0] = self.timer() + _COMPACT_EVERY
            if len(self.log) <= self.limit:  # short yet, or another hit compacted it
                return
            latest = self._take_log()
            self.log[:0] = latest
            self._carried = len(latest)

    def delete(self, key: Any) -> None:
        with self._lock:
            self.replay_hits()  # a write like `set`: the log then holds no deleted entry
            self._entries.pop(key, None)
            self.hot.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hot.clear()
            self.log.clear()
            self._counted = self._carried = 0

    def __len__(self) -> int:
        with self._lock:
            entries = self._entries
            if isinstance(entries, _TTL):
                entries.expire()  # TTLCache counts expired entries until they are purged
            return len(entries)
