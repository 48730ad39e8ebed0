"""Success-path overhead of a retry decorator: opero against its peers, in one run.

Each contender wraps the same trivial function with up to 3 retries; the function never
fails, so what is measured is the price of the decorator on every successful call.
Rounds are interleaved (every contender once per round, in a shuffled order) so that
noise from a shared machine hits all of them alike; the medians over rounds are compared.

    python benchmarks/bench_overhead.py            # full run
    python benchmarks/bench_overhead.py --quick    # smoke run (used by the test suite)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import backoff
import stamina
import tenacity

from opero import opero

SyncFn = Callable[[int], int]
AsyncFn = Callable[[int], Coroutine[Any, Any, int]]


def plain(x: int) -> int:
    return x


async def plain_async(x: int) -> int:
    return x


def sync_contenders() -> dict[str, SyncFn]:
    return {
        "bare": plain,
        "opero": opero(cache=False, retries=3)(plain),
        "tenacity": tenacity.retry(
            stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_exponential(min=0.1)
        )(plain),
        "stamina": stamina.retry(on=Exception, attempts=4)(plain),
        "backoff": backoff.on_exception(backoff.expo, Exception, max_tries=4)(plain),
    }


def async_contenders() -> dict[str, AsyncFn]:
    return {
        "bare": plain_async,
        "opero": opero(cache=False, retries=3)(plain_async),
        "tenacity": tenacity.retry(
            stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_exponential(min=0.1)
        )(plain_async),
        "stamina": stamina.retry(on=Exception, attempts=4)(plain_async),
        "backoff": backoff.on_exception(backoff.expo, Exception, max_tries=4)(plain_async),
    }


def time_sync(fn: SyncFn, calls: int) -> float:
    started = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - started) / calls


async def time_async(fn: AsyncFn, calls: int) -> float:
    started = time.perf_counter()
    for i in range(calls):
        await fn(i)
    return (time.perf_counter() - started) / calls


def measure(rounds: int, calls: int) -> dict[str, dict[str, list[float]]]:
    """Per kind (sync/async) and contender: the seconds per call of each round."""
    sync_fns, async_fns = sync_contenders(), async_contenders()
    samples: dict[str, dict[str, list[float]]] = {
        "sync": {name: [] for name in sync_fns},
        "async": {name: [] for name in async_fns},
    }
    loop = asyncio.new_event_loop()
    try:
        for _ in range(rounds):
            order = list(sync_fns)
            random.shuffle(order)
            for name in order:
                samples["sync"][name].append(time_sync(sync_fns[name], calls))
                samples["async"][name].append(
                    loop.run_until_complete(time_async(async_fns[name], calls))
                )
    finally:
        loop.close()
    return samples


def summarise(samples: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """Per contender: (median seconds per call, median overhead over bare)."""
    bare = statistics.median(samples["bare"])
    return {
        name: (statistics.median(values), statistics.median(values) - bare)
        for name, values in samples.items()
    }


def report(kind: str, summary: dict[str, tuple[float, float]]) -> list[str]:
    ours = summary["opero"][1]
    lines = [
        f"{kind}: median per call, overhead over the bare call, and peer overhead / opero overhead",
        f"  {'contender':<10} {'per call':>10} {'overhead':>10} {'x opero':>9}",
    ]
    for name, (per_call, overhead) in summary.items():
        ratio = "" if name in {"bare", "opero"} else f"{overhead / max(ours, 1e-9):8.1f}x"
        lines.append(f"  {name:<10} {per_call * 1e6:8.3f}us {overhead * 1e6:8.3f}us {ratio:>9}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="a few rounds: checks it runs")
    args = parser.parse_args(argv)
    rounds, calls = (3, 500) if args.quick else (args.rounds, args.calls)
    print(f"Python {sys.version.split()[0]}; {rounds} interleaved rounds x {calls} calls each")
    samples = measure(rounds, calls)
    for kind in ("sync", "async"):
        print("\n".join(report(kind, summarise(samples[kind]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
