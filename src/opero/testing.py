"""Testing mode: opero's waits become zero, so your test suite does not sleep.

    from opero.testing import no_waits

    def test_retries_twice():
        with no_waits():
            assert flaky_call() == "ok"      # retries happen, delays do not

Inside `no_waits()` every retry delay (backoff and server-given Retry-After alike) and
every rate-limit wait is skipped, and `max_attempts` (if given) caps the attempts of
each fallback value. Everything else runs as in production: the same retries, fallback
values, exceptions and events. With pytest, the fixture ``opero_no_waits`` (registered
by installing opero) does the same for one test. The switch is process-wide: do not
use it while production code runs in other threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opero._policies import retry
from opero._policies.testing_mode import switch_on
from opero._utils import testing_state


@contextmanager
def no_waits(max_attempts: int | None = None) -> Iterator[None]:
    """Skip every opero wait inside the block; optionally cap attempts per value."""
    if max_attempts is not None and (
        not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1
    ):
        raise ValueError(f"no_waits(): max_attempts must be an int >= 1, got {max_attempts!r}")
    state = testing_state.state
    saved = (retry.sync_sleep, retry.async_sleep, state.active, state.max_attempts)
    switch_on(max_attempts)
    try:
        yield
    finally:
        retry.sync_sleep, retry.async_sleep, state.active, state.max_attempts = saved
