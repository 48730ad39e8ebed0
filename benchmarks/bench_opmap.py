"""`@opmap` against its peers, in one run, pool start included (each map owns its pool).

- process, 10,000 trivial items: multiprocessing.Pool.map, ProcessPoolExecutor.map
  (chunksize as Pool.map picks it), joblib (loky), mpire, and opmap on its two process
  engines (twat-mp/pathos, the default, and the stdlib pool);
- process, per start method (fork, forkserver, spawn): pool start-up (a map of one item
  per worker) and 10,000 trivial items, against multiprocessing.Pool.map on the same
  start method and joblib (loky, its own spawn-like start method, workers reused);
- process, fork: minor page faults per map in the parent and the workers, against
  Pool.map (`--only faults`: where fork's remaining gap goes);
- process, 8 CPU-bound items on `--workers` workers: speed-up over a serial loop;
- thread, 200 items of 2 ms I/O (sleep) on 8 workers: ThreadPoolExecutor.map;
- async, 2,000 items of 1 ms I/O on 100 workers: asyncio.gather with a semaphore.

Medians of `--rounds` runs; ratios are opero / peer (below 1: opero is faster).

    python benchmarks/bench_opmap.py [--rounds N] [--workers N] [--quick]
        [--only start-methods|faults]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import opero._maps.pool as pool_module
from opero import opmap

# The peers of the first sections fork where the platform can (Windows: spawn).
FORK = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def trivial(x: int) -> int:
    return x * x


def cpu_bound(x: int) -> int:
    total = 0
    for i in range(1_500_000):
        total += i % (x + 3)
    return total


def io_bound(x: int) -> int:
    time.sleep(0.002)
    return x


async def aio_bound(x: int) -> int:
    await asyncio.sleep(0.001)
    return x


def median_ms(run: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def interleaved_medians(contenders: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median milliseconds per contender over interleaved rounds, so that a noisy moment
    of this shared machine hits every one, in an order rotated each round: the map that
    follows mpire's or joblib's runs while their workers wind down (about 15% slower
    here), so no contender may always be it."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(median_ms(contenders[name], 1))
    return {name: statistics.median(values) for name, values in times.items()}


def process_trivial(rounds: int, workers: int, count: int) -> None:
    items = range(count)
    chunksize = max(1, -(-count // (workers * 4)))
    # Fork for all here, as the peers below use it; per start method: process_start_methods.
    opero_map = opmap(
        mode="process", workers=workers, start_method=FORK, cache=False, progress=False
    )(trivial)

    def opero_on(kind: str) -> Callable[[], Any]:
        def run() -> Any:
            pool_module.PROCESS_POOL = kind
            try:
                return opero_map(items)
            finally:
                pool_module.PROCESS_POOL = "twat-mp"

        return run

    def mp_pool() -> Any:
        with multiprocessing.get_context(FORK).Pool(workers) as pool:
            return pool.map(trivial, items)

    def executor() -> Any:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(FORK)) as ex:
            return list(ex.map(trivial, items, chunksize=chunksize))

    def joblib_map() -> Any:
        from joblib import Parallel, delayed

        return Parallel(n_jobs=workers)(delayed(trivial)(x) for x in items)

    def mpire_map() -> Any:
        from mpire import WorkerPool

        with WorkerPool(n_jobs=workers) as pool:
            return pool.map(trivial, items)

    contenders = {
        "opmap (twat-mp)": opero_on("twat-mp"),
        "opmap (stdlib pool)": opero_on("stdlib"),
        "multiprocessing.Pool.map": mp_pool,
        "ProcessPoolExecutor.map": executor,
        "joblib": joblib_map,
        "mpire": mpire_map,
    }
    medians = interleaved_medians(contenders, rounds)
    print(f"process mode, {count:,} trivial items, {workers} workers, pool start included:")
    mine = medians["opmap (twat-mp)"]
    for name, value in medians.items():
        ratio = "" if name.startswith("opmap (twat") else f"   opmap/this = {mine / value:.2f}"
        print(f"  {name:26} {value:8.1f} ms{ratio}")


def process_start_methods(rounds: int, workers: int, count: int) -> None:
    from joblib import Parallel, delayed

    methods = [
        m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods()
    ]
    small, items = range(workers), range(count)

    def opero_run(method: str, inputs: range) -> Callable[[], Any]:
        mapped = opmap(
            mode="process", workers=workers, start_method=method, cache=False, progress=False
        )(trivial)
        return lambda: mapped(inputs)

    def pool_run(method: str, inputs: range) -> Callable[[], Any]:
        def run() -> Any:
            with multiprocessing.get_context(method).Pool(workers) as pool:
                return pool.map(trivial, inputs)

        return run

    def joblib_run() -> Any:
        return Parallel(n_jobs=workers)(delayed(trivial)(x) for x in items)

    def joblib_cold() -> Any:  # its workers started for this map, as opmap's are
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
        return joblib_run()

    contenders: dict[str, Callable[[], Any]] = {"joblib": joblib_run, "joblib cold": joblib_cold}
    for method in methods:
        for size, inputs in (("start", small), ("items", items)):
            contenders[f"opmap {method} {size}"] = opero_run(method, inputs)
            contenders[f"Pool {method} {size}"] = pool_run(method, inputs)
    med = interleaved_medians(contenders, rounds)
    print(
        f"process mode per start method, {workers} workers, medians of {rounds} rounds"
        f" (start: a map of {workers} items; items: {count:,} trivial items):"
    )
    print(
        f"  {'':11} {'opmap start':>11} {'Pool start':>10} {'ratio':>6}"
        f" {'opmap items':>11} {'Pool items':>10} {'ratio':>6} {'/joblib':>8} {'/cold':>6}"
    )
    for method in methods:
        o_start, p_start = med[f"opmap {method} start"], med[f"Pool {method} start"]
        o_items, p_items = med[f"opmap {method} items"], med[f"Pool {method} items"]
        print(
            f"  {method:11} {o_start:9.1f}ms {p_start:8.1f}ms {o_start / p_start:6.2f}"
            f" {o_items:9.1f}ms {p_items:8.1f}ms {o_items / p_items:6.2f}"
            f" {o_items / med['joblib']:8.2f} {o_items / med['joblib cold']:6.2f}"
        )
    print(
        f"  joblib (loky) for the items: {med['joblib']:.1f} ms with its workers reused"
        f" across rounds (/joblib), {med['joblib cold']:.1f} ms started for the map (/cold)"
    )


def process_faults(rounds: int, workers: int, count: int) -> None:
    """Minor page faults per map under fork, opmap against Pool.map: after a fork every
    page either process writes first costs a fault (a copy while the other is alive),
    which is where fork's remaining gap to Pool.map goes (issue 20)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return
    import resource  # POSIX only, as fork is

    items = range(count)
    mapped = opmap(
        mode="process", workers=workers, start_method="fork", cache=False, progress=False
    )(trivial)

    def pool_map() -> Any:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return pool.map(trivial, items)

    def faults(who: int) -> int:
        return resource.getrusage(who).ru_minflt

    counts: dict[str, tuple[list[int], list[int]]] = {"opmap": ([], []), "Pool.map": ([], [])}
    for _ in range(rounds):
        for name, run in (("opmap", lambda: mapped(items)), ("Pool.map", pool_map)):
            parent, children = faults(resource.RUSAGE_SELF), faults(resource.RUSAGE_CHILDREN)
            run()
            counts[name][0].append(faults(resource.RUSAGE_SELF) - parent)
            counts[name][1].append(faults(resource.RUSAGE_CHILDREN) - children)
    print(f"minor page faults per map, fork, {count:,} trivial items, {workers} workers:")
    for name, (mine, theirs) in counts.items():
        print(
            f"  {name:10} parent {statistics.median(mine):7.0f}"
            f"   workers {statistics.median(theirs):7.0f}"
        )
    copy, reuse = fault_costs()
    print(f"  a fault costs {copy:.1f} us while the other process lives, {reuse:.1f} us after")
    after, alone = bookkeeping_faults(rounds)
    print(
        f"  opmap's own bookkeeping (a map of 2 items, its pool answering at once) writes"
        f" {after:.0f} pages after a fork, {alone:.0f} without one"
    )


def fault_costs(pages: int = 2000) -> tuple[float, float]:
    """Microseconds per first write to a page after a fork: with the child alive (the
    page is copied), and after it exited (the page is only made writable again)."""
    import os

    buffer = bytearray(4096 * pages)
    step = range(0, len(buffer), 4096)

    def touch(value: int) -> float:
        started = time.perf_counter()
        for offset in step:
            buffer[offset] = value
        return (time.perf_counter() - started) / pages * 1e6

    touch(1)
    child = os.fork()
    if child == 0:
        time.sleep(2)
        os._exit(0)
    alive = touch(2)
    os.kill(child, 9)
    os.waitpid(child, 0)
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    return alive, touch(3)


def bookkeeping_faults(rounds: int) -> tuple[float, float]:
    """Pages opmap's parent-side machinery writes, its pool replaced by one that answers
    each chunk at once: right after a fork (a child alive), and with no fork before."""
    import contextlib
    import os
    import queue
    import resource

    from opero._maps.worker import Outcome, decode_outcome, encode_outcome

    class Answering:
        target = 0.02

        def __init__(self) -> None:
            self.results: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()

        def submit(self, number: int, items: list[Any]) -> None:
            outcome = Outcome([trivial(x) for x in items], {}, 0.0)
            self.results.put((number, encode_outcome(outcome)))

        def decode(self, answer: Any) -> Any:
            return decode_outcome(answer)

        def supervise(self, inflight: Any) -> list[Any]:
            return []

        def close(self, *, clean: bool) -> None:
            pass

    @contextlib.contextmanager
    def answering(*_: Any) -> Any:
        yield Answering()

    mapped = opmap(mode="process", workers=2, start_method="fork", cache=False, progress=False)(
        trivial
    )
    real, pool_module.engine_for = pool_module.engine_for, answering  # type: ignore[assignment]
    after, alone = [], []
    try:
        mapped(range(2))
        for _ in range(rounds):
            child = os.fork()
            if child == 0:
                time.sleep(1)
                os._exit(0)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            mapped(range(2))
            after.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            os.kill(child, 9)
            os.waitpid(child, 0)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            mapped(range(2))
            alone.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    finally:
        pool_module.engine_for = real
    return statistics.median(after), statistics.median(alone)


def process_cpu(rounds: int, workers: int) -> None:
    items = list(range(8))
    mapped = opmap(mode="process", workers=workers, start_method=FORK, cache=False, progress=False)(
        cpu_bound
    )

    # Serial and parallel back to back in each round, and the median of the per-round
    # speed-ups: this machine's speed drifts by a third between minutes.
    def pool_map() -> Any:
        with multiprocessing.get_context(FORK).Pool(workers) as pool:
            return pool.map(cpu_bound, items, chunksize=1)

    serial, parallel, speedups, reference = [], [], [], []
    for _ in range(max(1, rounds // 2)):
        serial.append(median_ms(lambda: [cpu_bound(x) for x in items], 1))
        parallel.append(median_ms(lambda: mapped(items), 1))
        speedups.append(serial[-1] / parallel[-1])
        reference.append(serial[-1] / median_ms(pool_map, 1))
    print(f"process mode, 8 CPU-bound items, {workers} workers (median of per-round ratios):")
    print(
        f"  serial {statistics.median(serial):.0f} ms, opmap {statistics.median(parallel):.0f} ms,"
        f" speed-up {statistics.median(speedups):.2f}x"
        f" (multiprocessing.Pool.map: {statistics.median(reference):.2f}x)"
    )


def thread_io(rounds: int) -> None:
    items = range(200)
    mapped = opmap(mode="thread", workers=8, cache=False, progress=False)(io_bound)

    def executor() -> Any:
        with ThreadPoolExecutor(8) as ex:
            return list(ex.map(io_bound, items))

    mine = median_ms(lambda: mapped(items), rounds)
    peer = median_ms(executor, rounds)
    print("thread mode, 200 items x 2 ms sleep, 8 workers:")
    print(f"  opmap {mine:.1f} ms, ThreadPoolExecutor {peer:.1f} ms, ratio {mine / peer:.2f}")


def async_io(rounds: int) -> None:
    items = range(2000)
    mapped = opmap(mode="async", workers=100, cache=False, progress=False)(aio_bound)

    async def gather() -> Any:
        semaphore = asyncio.Semaphore(100)

        async def one(x: int) -> int:
            async with semaphore:
                return await aio_bound(x)

        return await asyncio.gather(*(one(x) for x in items))

    mine = median_ms(lambda: asyncio.run(mapped(items)), rounds)
    peer = median_ms(lambda: asyncio.run(gather()), rounds)
    print("async mode, 2,000 items x 1 ms sleep, 100 at once:")
    print(f"  opmap {mine:.1f} ms, gather+semaphore {peer:.1f} ms, ratio {mine / peer:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run, for the tests")
    parser.add_argument(
        "--only", choices=["start-methods", "faults"], help="run this section alone"
    )
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    count = 1000 if args.quick else 10_000
    if args.only == "start-methods":
        process_start_methods(rounds, args.workers, count)
        return
    if args.only == "faults":
        process_faults(rounds, args.workers, count)
        return
    process_trivial(rounds, args.workers, count)
    process_start_methods(rounds, args.workers, count)
    if not args.quick:
        process_cpu(rounds, args.workers)
    thread_io(rounds)
    async_io(rounds)


if __name__ == "__main__":
    main()
