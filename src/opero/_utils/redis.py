"""redis-py, imported only when a Redis cache or rate limit is used."""

from __future__ import annotations

from typing import Any

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def import_redis() -> Any:
    """redis-py, or an ImportError that says how to install it."""
    try:
        import redis
    except ImportError as exc:
        raise ImportError(
            "the Redis backends need redis-py: pip install 'opero[redis]' "
            "(from a clone: pip install '.[redis]')"
        ) from exc
    return redis


# Seconds a Redis connect, or one command, may take before it fails (the cache then
# calls without it, the rate limit falls back to a local one). redis-py waits for the
# OS otherwise: minutes against a host that drops packets. The URL's own query
# (``?socket_timeout=10&socket_connect_timeout=5``) wins over these.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 2.0


def redis_client(url: str) -> Any:
    """A redis-py client for `url`, with timeouts (see above)."""
    return import_redis().Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=COMMAND_TIMEOUT
    )
