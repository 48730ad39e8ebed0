from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (the test's own), capturing its output."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def reserve_starts(limiter: object, count: int, out: object) -> None:
    """In a worker process: take `count` starts, put their monotonic times on `out`."""
    starts = [limiter.take() for _ in range(count)]  # type: ignore[attr-defined]
    out.put(starts)  # type: ignore[attr-defined]


def release_starts(limiter: object, count: int, out: object) -> None:
    """In a worker process: wait through `limiter` `count` times, put the release times."""
    import time

    from opero.core.rate_limit import wait_sync

    starts = []
    for _ in range(count):
        wait_sync(limiter)  # type: ignore[arg-type]
        starts.append(time.monotonic())
    out.put(starts)  # type: ignore[attr-defined]


def max_starts_in_window(starts: list[float], window: float = 1.0) -> int:
    """The most starts in any closed window [t, t + window]."""
    ordered = sorted(starts)
    best, low = 0, 0
    for high, start in enumerate(ordered):
        while ordered[low] < start - window:
            low += 1
        best = max(best, high - low + 1)
    return best


class LoopTicks:
    """Counts turns of the running event loop (one per 5 ms) while the block runs: a
    blocked loop gives about none."""

    def __init__(self) -> None:
        self.count = 0
        self._task: object = None

    async def _tick(self) -> None:
        import asyncio

        while True:
            await asyncio.sleep(0.005)
            self.count += 1

    async def __aenter__(self) -> LoopTicks:
        import asyncio

        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()  # type: ignore[attr-defined]
