"""A map of 1,000,000 tiny items, killed with SIGKILL mid-way and run again.

Proves what `@opmap(resume=path)` promises at scale: the rerun redoes no item the
journal holds, runs every other item exactly once, and returns the same results in the
same order as a map never interrupted. Each item call appends its index to a file (one
unbuffered write, so a kill loses none); the parent's process group is killed at a
random point between 40% and 80% of the time an uninterrupted run took.

    python benchmarks/prove_resume.py                 # 1,000,000 items, process mode
    python benchmarks/prove_resume.py --count 20000   # quicker
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from opero._maps.journal import done_indices

JOB = textwrap.dedent(
    """
    import hashlib, os, sys
    from opero import opmap

    CALLS = ""  # set under the main guard: a fork server imports this module too (3.13+)
    fd = None

    def square(x: int) -> int:
        global fd
        if fd is None:  # one file per worker process, unbuffered appends
            fd = os.open(f"{CALLS}.{os.getpid()}", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, b"%d\\n" % x)
        return x * x

    if __name__ == "__main__":
        MODE, JOURNAL, CALLS, COUNT = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
        mapped = opmap(mode=MODE, workers=2, resume=JOURNAL, progress=False, retries=0,
                       cache=False)(square)
        results = mapped(range(COUNT))
        print(hashlib.sha256(repr(results).encode()).hexdigest())
    """
)


def calls_in(folder: Path, prefix: str) -> list[int]:
    found: list[int] = []
    for path in folder.glob(f"{prefix}.*"):
        found += [int(line) for line in path.read_text().split()]
        path.unlink()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--mode", default="process", choices=["process", "thread"])
    parser.add_argument("--quick", action="store_true", help="20,000 items: checks it runs")
    args = parser.parse_args()
    count = 20_000 if args.quick else args.count
    expected = hashlib.sha256(repr([x * x for x in range(count)]).encode()).hexdigest()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        script, journal = folder / "job.py", folder / "map.journal"
        script.write_text(JOB)
        command = [
            sys.executable,
            str(script),
            args.mode,
            str(journal),
            str(folder / "calls"),
            str(count),
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        # An uninterrupted run first: how long the map takes (the kill comes mid-way).
        began = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, env=env, check=True)
        whole = time.perf_counter() - began
        journal.unlink()
        calls_in(folder, "calls")
        began = time.perf_counter()
        child = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, env=env, start_new_session=True
        )
        time.sleep(random.uniform(0.4, 0.8) * whole)  # a random point, mid-way
        if child.poll() is not None:
            sys.exit("the map ended before it was killed: use a larger --count")
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        killed_after = time.perf_counter() - began
        time.sleep(0.5)  # the workers of a killed parent exit on their own
        done = done_indices(str(journal))
        first = calls_in(folder, "calls")
        began = time.perf_counter()
        rerun = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        rerun_took = time.perf_counter() - began
        second = calls_in(folder, "calls")
        redone = len(set(second) & done)
        missing = set(range(count)) - done - set(second)
        print(
            f"{count:,} items, {args.mode} mode: {whole:.2f} s uninterrupted; "
            f"killed after {killed_after:.2f} s"
        )
        print(f"  journal held {len(done):,} items; the first run had called {len(first):,}")
        print(
            f"  rerun ({rerun_took:.2f} s) called {len(second):,} items "
            f"({len(second) - len(set(second)):,} twice): {redone:,} of them recorded "
            f"done before, {len(missing):,} items never called"
        )
        same = rerun.stdout.strip() == expected
        print(f"  results equal an uninterrupted map's, in order: {same}")
        if redone or missing or not same or len(second) != len(set(second)):
            sys.exit("FAILED")


if __name__ == "__main__":
    main()
