"""Lock waits of any length up to `opero._pipeline.options.MAX_SECONDS`.

`Lock.acquire(timeout=...)` refuses timeouts above `threading.TIMEOUT_MAX`, which is
about 49.7 days on Windows (and 292 years on Linux): a longer wait is made of several.
"""

from __future__ import annotations

import threading
import time


def acquire_within(lock: threading.Lock, seconds: float) -> bool:
    """`lock.acquire(timeout=seconds)` for any `seconds` >= 0."""
    most = threading.TIMEOUT_MAX
    if seconds <= most:
        return lock.acquire(True, seconds)
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return lock.acquire(False)
        if lock.acquire(True, min(left, most)):
            return True
