from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import Any, NamedTuple


class FakeClock:
    """A clock that moves only when a test sets `now`: called as a timer, or standing
    in for the `time` module of code that calls `time.monotonic()`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


def run_threads(target: Callable[[int], None], count: int, switch_interval: float = 1e-6) -> None:
    """`target(n)` in `count` threads at once, switching threads every `switch_interval`
    seconds (not every 5 ms) to interleave them inside what they call; joins them all."""
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)


def run_python(code: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (the test's own), `argv` as its arguments,
    capturing its output."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def output_of(code: str, *argv: str, timeout: float = 90) -> str:
    """What `code` prints in a fresh interpreter, which must exit cleanly."""
    done = run_python(code, *argv, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def start_session(code: str, *, stderr: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """Run `code` in a fresh interpreter in a session (process group) of its own, so a
    test can signal the whole group as a terminal's Ctrl-C does, and find what is left."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


class Interrupted(NamedTuple):
    """What `ctrl_c_after` saw: the first lines, the rest of the output, how long the
    child took to end after the signal, its exit code and pid (its process group)."""

    first: list[str]
    out: str
    err: str
    seconds: float
    returncode: int
    pid: int


def ctrl_c_after(code: str, lines: int) -> Interrupted:
    """Run `code` in a session of its own, wait for `lines` lines of its output, then
    send SIGINT to the whole group as a terminal's Ctrl-C does; the group is killed if
    it is still there after 10 s."""
    import os
    import signal
    import time

    child = start_session(code)
    assert child.stdout is not None
    try:
        first = [child.stdout.readline() for _ in range(lines)]
        assert all(first), f"the child ended before it was ready: {child.communicate()}"
        os.killpg(child.pid, signal.SIGINT)
        sent = time.monotonic()
        out, err = child.communicate(timeout=10)
        seconds = time.monotonic() - sent
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
    return Interrupted(first, out, err, seconds, child.returncode, child.pid)


def reserve_starts(limiter: object, count: int, out: object) -> None:
    """In a worker process: take `count` starts, put their monotonic times on `out`."""
    starts = [limiter.take() for _ in range(count)]  # type: ignore[attr-defined]
    out.put(starts)  # type: ignore[attr-defined]


def release_starts(limiter: object, count: int, out: object) -> None:
    """In a worker process: wait through `limiter` `count` times, put the release times."""
    import time

    from opero._policies.rate_limit import wait_sync

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


def start_methods() -> list[str]:
    """The process start methods this platform offers, in opero's order."""
    import multiprocessing

    offered = multiprocessing.get_all_start_methods()
    return [method for method in ("fork", "forkserver", "spawn") if method in offered]


# Helpers a parent keeps for its whole life, not workers: the fork server (started on
# first use of forkserver; it exits with its parent) and the resource tracker.
_SERVICES = ("forkserver import main", "resource_tracker import main")


def live_processes(*, parent: int | None = None, group: int | None = None) -> set[int]:
    """Live (not zombie) processes: children of `parent` (but for the multiprocessing
    services in `_SERVICES`), and members of the process group `group` (POSIX)."""
    import os

    import psutil

    found: set[int] = set()
    if parent is not None:
        for child in psutil.Process(parent).children():
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
                command = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if not any(name in command for name in _SERVICES):
                found.add(child.pid)
    if group is not None:
        for process in psutil.process_iter():
            try:
                if os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE:
                    found.add(process.pid)
            except (OSError, psutil.Error):
                continue
    return found


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    """The most (start, end) spans open at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def pause_limiter(limiter: object, seconds: float, out: object) -> None:
    """In a worker process: pause `limiter` (backpressure), then say so on `out`."""
    out.put(limiter.pause(seconds))  # type: ignore[attr-defined]


def slow_down_limiter(limiter: object, out: object) -> None:
    """In a worker process: cut an adaptive limiter's rate, then say to what on `out`."""
    out.put(limiter.slow_down(0.0))  # type: ignore[attr-defined]


class Throttled(Exception):
    """A throttling answer as SDKs raise it: a status code and a Retry-After delay.
    Module-level, so that it travels back from worker processes as itself."""

    def __init__(self, status_code: int, retry_after: float | None = None, at: float = 0.0) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.retry_after = retry_after
        self.at = at  # when the attempt started (time.monotonic)

    def __reduce__(self) -> Any:
        return type(self), (self.status_code, self.retry_after, self.at)


def throttled_first(item: int, delay: float) -> float:
    """For @opmap: item 0 is answered 429 (Retry-After `delay`); the others return the
    monotonic time they started at."""
    import time

    started = time.monotonic()
    if item == 0:
        raise Throttled(429, retry_after=delay, at=started)
    return started
