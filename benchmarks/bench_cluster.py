"""`@opmap(mode="dask")` and `mode="ray"` against local process mode, in one run.

Two workloads: 10,000 trivial items (scheduling overhead dominates) and 200 items of
50 ms of I/O (the work dominates). Dask runs on a `LocalCluster` of 2 worker processes,
either started per map (as `@opmap(mode="dask")` does without `client=`) or kept
running and passed as `client=`; Ray on a local runtime of 2 CPUs kept running (its
start and shutdown per map are timed once, after the rounds). Rounds are interleaved;
medians are compared.

    python benchmarks/bench_cluster.py            # full run
    python benchmarks/bench_cluster.py --quick    # smoke run (used by the test suite)
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from opero import opmap


def trivial(x: int) -> int:
    return x + 1


def io_bound(x: int) -> int:
    time.sleep(0.05)
    return x


COMMON: dict[str, Any] = {"cache": False, "retries": 0, "progress": False}


def contenders(
    client: Any, workers: int, *, own: bool
) -> dict[str, Callable[[Callable[[int], int]], Any]]:
    common = COMMON
    found = {
        "process": functools.partial(opmap, mode="process", workers=workers, **common),
        "dask, own cluster": functools.partial(opmap, mode="dask", workers=workers, **common),
        "dask, running cluster": functools.partial(opmap, mode="dask", client=client, **common),
        "ray, running runtime": functools.partial(opmap, mode="ray", **common),
    }
    if not own:
        del found["dask, own cluster"]
    return found


def measure(
    rounds: int, trivial_items: int, io_items: int, *, own: bool
) -> dict[str, dict[str, list[float]]]:
    import distributed
    import ray

    workers = 2
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    cluster = distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = distributed.Client(cluster)
    makers = contenders(client, workers, own=own)
    workloads: dict[str, tuple[Callable[[int], int], int]] = {
        f"{trivial_items:,} trivial items": (trivial, trivial_items),
        f"{io_items} x 50 ms I/O": (io_bound, io_items),
    }
    samples = {load: {name: [] for name in makers} for load in workloads}
    try:
        for _ in range(rounds):
            jobs = [(load, name) for load in workloads for name in makers]
            random.shuffle(jobs)
            for load, name in jobs:
                fn, count = workloads[load]
                mapped = makers[name](fn)
                started = time.perf_counter()
                mapped(range(count))
                samples[load][name].append(time.perf_counter() - started)
    finally:
        client.close()
        cluster.close()
        ray.shutdown()
    if own:  # a local Ray started and shut down by the map itself, timed once
        fn, count = workloads[next(iter(workloads))]
        started = time.perf_counter()
        opmap(mode="ray", workers=workers, **COMMON)(fn)(range(count))
        elapsed = time.perf_counter() - started
        samples[next(iter(workloads))]["ray, own runtime (once)"] = [elapsed]
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one small round: checks it runs")
    args = parser.parse_args(argv)
    rounds, trivial_items, io_items = (1, 500, 10) if args.quick else (args.rounds, 10_000, 200)
    print(f"Python {sys.version.split()[0]}; {rounds} interleaved rounds, 2 workers, medians")
    results = measure(rounds, trivial_items, io_items, own=not args.quick)
    for load, by_name in results.items():
        reference = statistics.median(by_name["process"])
        print(f"{load}:")
        for name, values in by_name.items():
            median = statistics.median(values)
            print(f"  {name:<22} {median * 1000:9.1f} ms  {median / reference:6.2f}x process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
