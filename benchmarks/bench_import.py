"""What `import opero` adds to a bare interpreter, against the imports it avoids.

Each command runs in a fresh interpreter, interleaved over rounds; medians of wall time
minus the median of `python -c pass`.

    python benchmarks/bench_import.py [--rounds N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time

STATEMENTS = {
    "bare": "pass",
    "opero": "import opero",
    "tenacity": "import tenacity",
    "loguru": "import loguru",
    "stamina": "import stamina",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args(argv)
    samples: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    for _ in range(args.rounds):
        order = list(STATEMENTS)
        random.shuffle(order)
        for name in order:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", STATEMENTS[name]], check=True)
            samples[name].append(time.perf_counter() - started)
    bare = statistics.median(samples["bare"])
    print(f"Python {sys.version.split()[0]}; {args.rounds} interleaved rounds; medians")
    for name, values in samples.items():
        added = (statistics.median(values) - bare) * 1000
        print(f"  {STATEMENTS[name]:<16} adds {added:6.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
