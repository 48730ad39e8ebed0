"""Cost of a cache hit: opero against functools, cachetools and diskcache, in one run.

Memory: `@opero` with its defaults (memory backend, retries on), called positionally
(`f(1)`), by keyword (`f(x=1)`) and with `cache_ttl=`, against `functools.lru_cache`,
`cachetools.cached(TTLCache)` and `cachetools.cached(LRUCache)` with a lock (what thread
safety costs there); ratios are against `lru_cache` and the locked cachetools LRU, both
called positionally. Disk: `@opero(cache_backend="disk")` against diskcache's own
`Cache.memoize` on the same kind of folder. Every function is called with an argument it
has already cached; rounds are interleaved and medians compared.

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


# Names of contenders called by keyword, `f(x=1)`; the others are called `f(1)`.
KEYWORD = "by keyword"
LRU_CACHE = "functools.lru_cache"
CACHETOOLS = "cachetools LRU+lock"


def memory_contenders() -> dict[str, Callable[..., Any]]:
    return {
        "opero": opero(plain),
        f"opero {KEYWORD}": opero(plain),
        "opero cache_ttl": opero(cache_ttl=600)(plain),
        f"opero cache_ttl {KEYWORD}": opero(cache_ttl=600)(plain),
        LRU_CACHE: functools.lru_cache(maxsize=1024)(plain),
        f"{LRU_CACHE} {KEYWORD}": functools.lru_cache(maxsize=1024)(plain),
        "cachetools TTLCache": cachetools.cached(cachetools.TTLCache(1024, 600))(plain),
        CACHETOOLS: cachetools.cached(cachetools.LRUCache(1024), lock=threading.Lock())(plain),
    }


def disk_contenders(folder: str) -> dict[str, Callable[[int], Any]]:
    os.environ["OPERO_CACHE_DIR"] = os.path.join(folder, "opero")
    memo = diskcache.Cache(os.path.join(folder, "diskcache"))
    return {
        "opero disk": opero(cache_backend="disk")(plain),
        "diskcache memoize": memo.memoize()(plain),
    }


def time_calls(fn: Callable[..., Any], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn(1)
    return (time.perf_counter() - started) / calls


def time_keyword_calls(fn: Callable[..., Any], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn(x=1)
    return (time.perf_counter() - started) / calls


def measure(contenders: dict[str, Callable[..., Any]], rounds: int, calls: int) -> dict[str, float]:
    for fn in contenders.values():
        fn(1)  # fill the cache: everything measured below is a hit
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        order = list(contenders)
        random.shuffle(order)
        for name in order:
            timer = time_keyword_calls if name.endswith(KEYWORD) else time_calls
            samples[name].append(timer(contenders[name], calls))
    return {name: statistics.median(values) for name, values in samples.items()}


def report(title: str, medians: dict[str, float], references: dict[str, str]) -> None:
    """One line per contender: its median per hit, and how many times each reference's
    (`references`: column label -> contender)."""
    print(title)
    ratios = "".join(f" {'vs ' + label:>14}" for label in references)
    print(f"  {'contender':<32} {'per hit':>10}{ratios}")
    for name, value in medians.items():
        cells = "".join(f" {value / medians[ref]:13.2f}x" for ref in references.values())
        print(f"  {name:<32} {value * 1e6:8.3f}us{cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="a few rounds: checks it runs")
    args = parser.parse_args(argv)
    rounds, calls = (3, 200) if args.quick else (args.rounds, args.calls)
    print(f"Python {sys.version.split()[0]}; {rounds} interleaved rounds; medians")
    report(
        f"memory hit ({calls} calls a round); 'vs X' > 1 means slower than X positionally",
        measure(memory_contenders(), rounds, calls),
        {"lru_cache": LRU_CACHE, "cachetools": CACHETOOLS},
    )
    with tempfile.TemporaryDirectory() as folder:
        disk_calls = max(calls // 20, 50)
        report(
            f"disk hit ({disk_calls} calls a round)",
            measure(disk_contenders(folder), rounds, disk_calls),
            {"opero disk": "opero disk"},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
