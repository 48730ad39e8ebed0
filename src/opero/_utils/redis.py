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
