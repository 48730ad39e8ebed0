"""Cache backends that leave the process: disk (diskcache) and Redis (redis-py).

Each instance serves one decorated function (`identity`), so `clear()` and `len()` reach
only that function's entries while a namespace is shared. Values are pickled: a cache
directory or Redis database must be trusted like code, since unpickling runs code.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from opero._utils.redis import DEFAULT_REDIS_URL, redis_client

_MISSING = object()


def cache_root() -> Path:
    """Where disk namespaces live: ``$OPERO_CACHE_DIR``, else the user's cache folder."""
    configured = os.environ.get("OPERO_CACHE_DIR")
    if configured:
        return Path(configured)
    import platformdirs

    return Path(platformdirs.user_cache_dir("opero"))


def private_directory(path: Path, *, always: bool = True) -> Path:
    """Make sure `path` exists; created (or, when `always`, kept) readable by this user only.

    A folder the user configured and opero did not create keeps its mode unless `always`.
    """
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
        always = True
    if always:
        path.chmod(0o700)  # mkdir's mode is filtered by the umask
    return path


# Faults of the disk at start-up that may pass (a full disk, a quota, an I/O error):
# the cache is then off, with one warning, and opened again later. Other faults (the
# folder is a file, no permission) are configuration errors, raised at decoration.
_PASSING_ERRNOS = frozenset(
    code for code in (getattr(errno, name, None) for name in ("ENOSPC", "EDQUOT", "EIO")) if code
)
REOPEN_AFTER = 5.0  # seconds between attempts to open a cache that could not be opened


class DiskBackend:
    """A diskcache `Cache` in ``<cache root>/<namespace>``, shared by processes.

    A cache that cannot be opened (a full disk, a file that is not a database) never
    fails the decoration or a call: the function runs uncached, one warning says why,
    and opening is tried again every `REOPEN_AFTER` seconds, so the cache comes back
    once the disk has room or the file is replaced.
    """

    def __init__(self, namespace: str, identity: str, directory: str | Path | None = None) -> None:
        self.namespace = namespace
        self.configured = None if directory is None else Path(directory)
        self.directory = self.configured or cache_root() / namespace
        self.prefix = identity + ":"
        self._cache: Any = None
        self._reopen_at = 0.0
        self._down = False
        self._closers = threading.local()
        self._opening = threading.Lock()
        # A backend collected as part of a reference cycle: its objects' finalizers run
        # in no set order, the connection's (which warns) possibly before the closer's.
        # Weakref callbacks run before any of them: close this thread's connection there.
        weakref.finalize(self, _close_this_threads, self._closers)
        self._open(at_decoration=True)

    def _open(self, *, at_decoration: bool = False) -> Any:
        """The diskcache `Cache`, or None while it cannot be opened."""
        import sqlite3

        import diskcache

        try:
            if self.configured is None:
                root = private_directory(cache_root(), always=False)
                self.directory = private_directory(root / self.namespace)
            else:
                self.directory = private_directory(self.configured)
            cache = _open_cache(str(self.directory))
        except OSError as exc:
            if exc.errno not in _PASSING_ERRNOS and at_decoration:
                raise ValueError(
                    f"cache_backend='disk' cannot use its folder under {cache_root()} "
                    f"({type(exc).__name__}: {exc}); set OPERO_CACHE_DIR to a writable folder"
                ) from exc
            return self._unavailable(exc)
        except (sqlite3.Error, diskcache.Timeout) as exc:
            return self._unavailable(exc)
        if self._down:
            from opero._utils.logging import log

            log().info("disk cache in {} is available again", self.directory)
        self._down = False
        self._cache = cache
        self._closes_with_thread()  # the connection that opening the cache opened
        return cache

    def _unavailable(self, exc: Exception) -> None:
        self._reopen_at = time.monotonic() + REOPEN_AFTER
        if not self._down:
            from opero._utils.logging import log

            log().warning(
                "disk cache in {} cannot be opened ({}: {}); running uncached, "
                "trying again every {:g}s",
                self.directory,
                type(exc).__name__,
                exc,
                REOPEN_AFTER,
            )
        self._down = True

    def _available(self) -> Any:
        cache = self._cache
        if cache is None and time.monotonic() >= self._reopen_at:
            with self._opening:  # one thread opens it; the others find it open
                cache = self._cache or self._open()
        return cache

    def _closes_with_thread(self) -> None:
        """diskcache opens one SQLite connection per thread and leaves it to the garbage
        collector when the thread ends (Python 3.13+ warns: "unclosed database"). A
        `_Closer` in this thread's local storage holds the connection and closes it
        there, as the thread's locals are cleared."""
        closer = getattr(self._closers, "closer", None)
        con = self._cache._local.__dict__.get("con")  # diskcache's thread-local
        # A new connection (diskcache opens one after a fork) gets a closer of its own.
        if con is not None and (closer is None or closer.con is not con):
            self._closers.closer = _Closer(con)

    def get(self, key: str) -> object:
        import sqlite3

        import diskcache

        cache = self._cache or self._available()
        if cache is None:
            raise KeyError(key)  # a miss: the call runs uncached (warned once)
        try:
            value = cache.get(key, default=_MISSING, retry=True)
        except (sqlite3.Error, OSError, diskcache.Timeout):
            raise  # an outage: the caller calls through, uncached
        except Exception:
            # The entry no longer unpickles (its class moved, ...): drop it, recompute.
            cache.delete(key, retry=True)
            raise KeyError(key) from None
        finally:
            self._closes_with_thread()
        if value is _MISSING:
            raise KeyError(key)
        return value

    def set(self, key: str, value: object, ttl: float | None) -> None:
        cache = self._cache or self._available()
        if cache is None:
            return
        cache.set(key, value, expire=ttl, retry=True)
        self._closes_with_thread()

    def delete(self, key: str) -> None:
        cache = self._cache or self._available()
        if cache is None:
            return
        cache.delete(key, retry=True)
        self._closes_with_thread()

    def _own_keys(self) -> list[str]:
        cache = self._cache or self._available()
        if cache is None:
            return []
        return [k for k in cache.iterkeys() if isinstance(k, str) and k.startswith(self.prefix)]

    def clear(self) -> None:
        for key in self._own_keys():
            self._cache.delete(key, retry=True)

    def __len__(self) -> int:
        cache = self._cache or self._available()
        if cache is None:
            return 0
        cache.expire()
        return len(self._own_keys())


def _open_cache(directory: str) -> Any:
    """A diskcache `Cache`; if opening it fails (a full disk), its SQLite connection is
    closed at once: left to the collector, it would hold the half-written journal's
    space on the full disk (and warn on Python 3.13+)."""
    import diskcache

    cache = diskcache.Cache.__new__(diskcache.Cache)
    try:
        cache.__init__(directory)
    except BaseException:
        with contextlib.suppress(Exception):
            cache.close()
        raise
    return cache


def _close_this_threads(closers: threading.local) -> None:
    closer = getattr(closers, "closer", None)
    if closer is not None:
        closer.__del__()


class _Closer:
    """Closes one thread's SQLite connection when that thread's locals go (see
    `DiskBackend._closes_with_thread`); never from another thread, which SQLite refuses."""

    __slots__ = ("con", "thread")

    def __init__(self, con: Any) -> None:
        self.con = con
        self.thread = threading.get_ident()

    def __del__(self) -> None:
        if threading.get_ident() == self.thread:
            # Already closed, or the interpreter is going away: nothing more to do.
            with contextlib.suppress(Exception):
                self.con.close()


class RedisBackend:
    """Entries under ``opero:<namespace>:<function>:<hash>`` in Redis, expiring there.

    Async functions do their Redis I/O in a worker thread, never on the event loop.
    """

    def __init__(self, namespace: str, identity: str, url: str | None = None) -> None:
        self.url = url or os.environ.get("OPERO_REDIS_URL") or DEFAULT_REDIS_URL
        self.prefix = f"opero:{namespace}:"
        self.own = f"{self.prefix}{identity}:"
        self._client = redis_client(self.url)

    def _full(self, key: str) -> str:
        return self.prefix + key

    def get(self, key: str) -> object:
        raw = self._client.get(self._full(key))
        if raw is None:
            raise KeyError(key)
        assert isinstance(raw, bytes)  # the client does not decode responses
        try:
            return pickle.loads(raw)  # the Redis database is trusted like code (see README)
        except Exception:
            # The entry no longer unpickles (its class moved, ...): drop it, recompute.
            self._client.delete(self._full(key))
            raise KeyError(key) from None

    def set(self, key: str, value: object, ttl: float | None) -> None:
        px = max(1, round(ttl * 1000)) if ttl is not None else None
        self._client.set(self._full(key), pickle.dumps(value, protocol=5), px=px)

    def delete(self, key: str) -> None:
        self._client.delete(self._full(key))

    def _own_keys(self) -> list[bytes]:
        pattern = _glob_escape(self.own) + "*"
        return list(self._client.scan_iter(match=pattern, count=500))

    def clear(self) -> None:
        keys = self._own_keys()
        for start in range(0, len(keys), 500):
            self._client.delete(*keys[start : start + 500])

    def __len__(self) -> int:
        return len(self._own_keys())

    # Async functions reach Redis through the thread pool with the same (thread-safe)
    # client: the event loop never blocks, and nothing is bound to one event loop, so
    # successive asyncio.run() calls work and no connection is left open on a dead loop.
    async def aget(self, key: str) -> object:
        import asyncio

        return await asyncio.to_thread(self.get, key)

    async def aset(self, key: str, value: object, ttl: float | None) -> None:
        import asyncio

        await asyncio.to_thread(self.set, key, value, ttl)


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
