"""Cost of a cache hit: opero against functools, cachetools and diskcache, in one run.

Memory: `@opero` with its defaults (memory backend, retries on) against
`functools.lru_cache`, `cachetools.cached(TTLCache)` and `cachetools.cached(LRUCache)`
with a lock (what thread safety costs there). Disk: `@opero(cache_backend="disk")`
against diskcache's own `Cache.memoize` on the same kind of folder. Every function is
called with an argument it has already cached; rounds are interleaved and medians
compared.

    python benchmarks/bench_cache.py [--rounds N] [--calls N] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import cachetools
import diskcache

from opero import opero


def plain(x: int) -> int:
    return x


def memory_contenders() -> dict[str, Callable[[int], Any]]:
    return {
        "opero": opero(plain),
        "functools.lru_cache": functools.lru_cache(maxsize=1024)(plain),
        "cachetools TTLCache": cachetools.cached(cachetools.TTLCache(1024, 600))(plain),
        "cachetools LRU+lock": cachetools.cached(cachetools.LRUCache(1024), lock=threading.Lock())(
            plain
        ),
    }


def disk_contenders(folder: str) -> dict[str, Callable[[int], Any]]:
    os.environ["OPERO_CACHE_DIR"] = os.path.join(folder, "opero")
    memo = diskcache.Cache(os.path.join(folder, "diskcache"))
    return {
        "opero disk": opero(cache_backend="disk")(plain),
        "diskcache memoize": memo.memoize()(plain),
    }


def time_calls(fn: Callable[[int], Any], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn(1)
    return (time.perf_counter() - started) / calls


def measure(
    contenders: dict[str, Callable[[int], Any]], rounds: int, calls: int
) -> dict[str, float]:
    for fn in contenders.values():
        fn(1)  # fill the cache: everything measured below is a hit
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        order = list(contenders)
        random.shuffle(order)
        for name in order:
            samples[name].append(time_calls(contenders[name], calls))
    return {name: statistics.median(values) for name, values in samples.items()}


def report(title: str, medians: dict[str, float], reference: str) -> None:
    ours = medians[reference]
    print(title)
    print(f"  {'contender':<22} {'per hit':>10} {'vs opero':>9}")
    for name, value in medians.items():
        print(f"  {name:<22} {value * 1e6:8.3f}us {value / ours:8.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="a few rounds: checks it runs")
    args = parser.parse_args(argv)
    rounds, calls = (3, 200) if args.quick else (args.rounds, args.calls)
    print(f"Python {sys.version.split()[0]}; {rounds} interleaved rounds; medians")
    report(
        f"memory hit ({calls} calls a round); 'vs opero' > 1 means slower than opero",
        measure(memory_contenders(), rounds, calls),
        "opero",
    )
    with tempfile.TemporaryDirectory() as folder:
        disk_calls = max(calls // 20, 50)
        report(
            f"disk hit ({disk_calls} calls a round)",
            measure(disk_contenders(folder), rounds, disk_calls),
            "opero disk",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
