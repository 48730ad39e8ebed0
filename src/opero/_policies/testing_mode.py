"""Testing mode switched on: the retry waits become no-ops (`opero.testing.no_waits`,
and @opmap workers whose parent is inside it, under spawn or forkserver)."""

from __future__ import annotations

from opero._policies import retry
from opero._utils import testing_state


async def _no_async_sleep(delay: float) -> None:
    return None


def _no_sleep(delay: float) -> None:
    return None


def switch_on(max_attempts: int | None) -> None:
    """Testing mode on for the rest of this process (or until `no_waits` restores it)."""
    retry.sync_sleep, retry.async_sleep = _no_sleep, _no_async_sleep
    state = testing_state.state
    state.active, state.max_attempts = True, max_attempts
