"""Rate-limit accuracy under more demand than the limit, and the cost of a high limit.

Scenarios, each for a few seconds at `--rate` (default 50/s): 8 threads calling a
`@opero(rate_limit=...)` function in a loop; 50 asyncio tasks doing the same with an
async function; 2 processes sharing one `SharedRateLimiter` (what `@opmap` hands its
workers); 2 processes with `rate_limit_backend="redis"` (a redis-server is started on a
free loopback port when one is installed). For each: the achieved rate, the most call
starts in any 1-second window (the limit allows limit + 1: both ends of a window), and
the closest two starts as a fraction of 1 / limit (time stamps are taken inside the
called function, so a process preempted right after its release can show a bit under 1;
over Redis, releases are spaced on the server's clock and arrive with network jitter).
Then: what `rate_limit=1e6` adds to a call, against the same function without a limit.

    python benchmarks/bench_rate_limit.py [--rate N] [--seconds S] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from opero import opero
from opero._policies.rate_limit import SharedRateLimiter, wait_sync


def max_in_window(starts: list[float], window: float = 1.0) -> int:
    ordered = sorted(starts)
    best, low = 0, 0
    for high, start in enumerate(ordered):
        while ordered[low] < start - window:
            low += 1
        best = max(best, high - low + 1)
    return best


def threads_scenario(rate: float, seconds: float) -> list[float]:
    starts: list[float] = []

    @opero(cache=False, rate_limit=rate)
    def call() -> None:
        starts.append(time.monotonic())

    deadline = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < deadline:
            call()

    threads = [threading.Thread(target=loop) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return starts


def tasks_scenario(rate: float, seconds: float) -> list[float]:
    starts: list[float] = []

    @opero(cache=False, rate_limit=rate)
    async def call() -> None:
        starts.append(time.monotonic())

    async def main() -> None:
        deadline = time.monotonic() + seconds

        async def loop() -> None:
            while time.monotonic() < deadline:
                await call()

        await asyncio.gather(*(loop() for _ in range(50)))

    asyncio.run(main())
    return starts


def _shared_worker(limiter: SharedRateLimiter, deadline_in: float, out: Any) -> None:
    starts = []
    deadline = time.monotonic() + deadline_in
    while time.monotonic() < deadline:
        wait_sync(limiter)
        starts.append(time.monotonic())
    out.put(starts)


def _redis_worker(rate: float, key: str, deadline_in: float, out: Any) -> None:
    starts: list[float] = []

    @opero(cache=False, rate_limit=rate, rate_limit_backend="redis", rate_limit_key=key)
    def call() -> None:
        starts.append(time.monotonic())

    deadline = time.monotonic() + deadline_in
    while time.monotonic() < deadline:
        call()
    out.put(starts)


def processes_scenario(target: Callable[..., None], args: tuple[Any, ...]) -> list[float]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [context.Process(target=target, args=(*args, out)) for _ in range(2)]
    for worker in workers:
        worker.start()
    starts = out.get(timeout=120) + out.get(timeout=120)
    for worker in workers:
        worker.join(timeout=60)
    return starts


def start_redis() -> tuple[subprocess.Popen[bytes], str] | None:
    server = shutil.which("redis-server")
    if server is None:
        return None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = tempfile.mkdtemp()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    return None


def report(name: str, starts: list[float], rate: float, seconds: float) -> None:
    ordered = sorted(starts)
    in_run = [s for s in ordered if s < ordered[0] + seconds]
    achieved = len(in_run) / seconds
    worst = max_in_window(ordered)
    closest = min(b - a for a, b in itertools.pairwise(ordered)) * rate
    verdict = "ok" if worst <= rate + 1 and achieved >= 0.95 * rate else "VIOLATION"
    print(
        f"  {name:<22} {achieved:8.1f}/s {achieved / rate:7.1%} {worst:>11} "
        f"{rate + 1:>7.0f} {closest:>10.2f}  {verdict}"
    )


def high_limit_cost(rounds: int, calls: int) -> tuple[float, float]:
    @opero(cache=False)
    def free(x: int) -> int:
        return x

    @opero(cache=False, rate_limit=1_000_000)
    def limited(x: int) -> int:
        return x

    samples: dict[str, list[float]] = {"free": [], "limited": []}
    for _ in range(rounds):
        for name, fn in (("free", free), ("limited", limited)):
            started = time.perf_counter()
            for i in range(calls):
                fn(i)
            samples[name].append((time.perf_counter() - started) / calls)
    return statistics.median(samples["free"]), statistics.median(samples["limited"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--quick", action="store_true", help="short runs: checks it runs")
    args = parser.parse_args(argv)
    rate, seconds = (args.rate, 1.2) if args.quick else (args.rate, args.seconds)
    print(f"Python {sys.version.split()[0]}; limit {rate:g}/s; {seconds:g} s per scenario")
    print(
        f"  {'scenario':<22} {'achieved':>10} {'of limit':>8} {'max in 1 s':>11} "
        f"{'allowed':>7} {'min gap':>10}"
    )
    report("8 threads", threads_scenario(rate, seconds), rate, seconds)
    report("50 tasks", tasks_scenario(rate, seconds), rate, seconds)
    shared = SharedRateLimiter(rate, multiprocessing.get_context("spawn"))
    report("2 processes", processes_scenario(_shared_worker, (shared, seconds)), rate, seconds)
    redis = start_redis()
    if redis is None:
        print("  2 processes, Redis     skipped: no redis-server installed")
    else:
        process, url = redis
        os.environ["OPERO_REDIS_URL"] = url
        try:
            starts = processes_scenario(_redis_worker, (rate, "opero:bench:ratelimit", seconds))
            report("2 processes, Redis", starts, rate, seconds)
        finally:
            process.terminate()
    rounds, calls = (3, 2000) if args.quick else (11, 100_000)
    free, limited = high_limit_cost(rounds, calls)
    print(
        f"rate_limit=1e6/s: {limited * 1e6:.3f} us per call against {free * 1e6:.3f} us "
        f"without a limit: adds {(limited - free) * 1e6:.3f} us (medians of {rounds} rounds)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
