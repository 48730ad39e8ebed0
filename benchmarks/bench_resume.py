"""What `@opmap(resume=path)` costs: 1,000,000 tiny items with and without the journal.

Per mode (process on the default start method, thread, and async on fewer items), the
same map with `resume=` on a fresh journal (every record written) and without, in
interleaved rounds; then the resumed run (every item served from the journal). With
`--dask`: a 2-worker Dask map (LocalCluster, processes) killed with SIGKILL mid-way and
resumed, checking that no finished item ran again.

    python benchmarks/bench_resume.py [--rounds N] [--count N] [--dask] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from opero import opmap


def tiny(x: int) -> int:
    return x + 1


async def atiny(x: int) -> int:
    return x + 1


def timed(run: Callable[[], Any]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def overhead(mode: str, count: int, rounds: int) -> None:
    folder = tempfile.mkdtemp(prefix="opero-bench-")
    path = os.path.join(folder, "journal")
    common: dict[str, Any] = {"mode": mode, "progress": False, "cache": False, "retries": 0}
    if mode != "async":
        common["workers"] = 2
    func: Any = atiny if mode == "async" else tiny
    plain, journaled = opmap(**common)(func), opmap(resume=path, **common)(func)

    def run(mapped: Any) -> Any:
        return asyncio.run(mapped(range(count))) if mode == "async" else mapped(range(count))

    def fresh() -> Any:
        if os.path.exists(path):
            os.remove(path)
        return run(journaled)

    times: dict[str, list[float]] = {"without": [], "with": [], "resumed": []}
    for number in range(rounds):
        pair = [("without", lambda: run(plain)), ("with", fresh)]
        for name, contender in pair if number % 2 else pair[::-1]:
            times[name].append(timed(contender))
        times["resumed"].append(timed(lambda: run(journaled)))  # all done: from the file
    medians = {name: statistics.median(values) for name, values in times.items()}
    size = os.path.getsize(path) / 1e6
    print(f"{mode} mode, {count:,} tiny items, medians of {rounds} interleaved rounds:")
    print(f"  without resume          {medians['without'] * 1000:8.1f} ms")
    ratio = medians["with"] / medians["without"]
    print(f"  with resume (recording) {medians['with'] * 1000:8.1f} ms   {ratio - 1:+.1%}")
    print(f"  resumed, all done       {medians['resumed'] * 1000:8.1f} ms   journal {size:.1f} MB")
    os.remove(path)
    os.rmdir(folder)


DASK_JOB = """
import sys, time
from opero import opmap

CALLS = ""  # set under the main guard: spawned workers import this module too

def work(x: int) -> int:
    with open(CALLS, "a") as calls:
        calls.write(f"{x}\\n")
    time.sleep(0.01)
    return x * 3

if __name__ == "__main__":
    import distributed

    JOURNAL, CALLS, COUNT = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    with distributed.Client(cluster) as client:
        mapped = opmap(mode="dask", client=client, chunksize=5, progress=False,
                       resume=JOURNAL)(work)
        assert mapped(range(COUNT)) == [x * 3 for x in range(COUNT)]
        print("ok")
"""


def dask_resume(count: int) -> None:
    from opero._maps.journal import done_indices

    folder = tempfile.mkdtemp(prefix="opero-bench-")
    journal, calls, script = (os.path.join(folder, n) for n in ("journal", "calls", "job.py"))
    with open(script, "w") as file:
        file.write(DASK_JOB)
    command = [sys.executable, script, journal, calls, str(count)]
    child = subprocess.Popen(command, start_new_session=True, stderr=subprocess.DEVNULL)
    while not (os.path.exists(journal) and len(done_indices(journal)) >= count // 4):
        time.sleep(0.01)
    os.killpg(child.pid, signal.SIGKILL)  # the map, the scheduler and both workers
    child.wait()
    done = done_indices(journal)
    first = _lines(calls)
    os.remove(calls)
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    seconds = time.perf_counter() - started
    second = _lines(calls)
    print(f"dask, 2 workers, {count} items of 10 ms, killed with {len(done)} recorded:")
    print(f"  first run called {len(first)}, the resumed run {len(second)} ({seconds:.1f} s)")
    print(
        f"  finished items run again: {len(done & set(second))} (must be 0); "
        f"every item ran: {set(first) | set(second) == set(range(count))}; "
        f"results right: {out.stdout.strip() == 'ok'}"
    )


def _lines(path: str) -> list[int]:
    with open(path) as file:
        return [int(line) for line in file.read().split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--modes", default="process,thread,async")
    parser.add_argument("--dask", action="store_true", help="the Dask kill-and-resume run")
    parser.add_argument("--quick", action="store_true", help="a smoke run, for the tests")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.count = 1, 20_000
    for mode in args.modes.split(","):
        # Async mode runs one task per item (~20 us each): a tenth of the items.
        overhead(mode, args.count // 10 if mode == "async" else args.count, args.rounds)
    if args.dask:
        dask_resume(200)


if __name__ == "__main__":
    main()
