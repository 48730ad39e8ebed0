"""Tail latency of hedged fallback against plain fallback, in one run.

Each call has two equivalent backends (fallback values). A backend answers in ~10 ms,
except for a slow tail: 5% of requests take 300 ms. Plain fallback waits out a slow
answer; `hedge_after=0.03` starts the second backend beside it after 30 ms. Printed: p50,
p95, p99 and max latency per strategy, and the extra requests hedging sends.

    python benchmarks/bench_hedge.py              # 400 calls per strategy
    python benchmarks/bench_hedge.py --quick      # smoke run (used by the test suite)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

from opero import opero

FAST, SLOW, SLOW_SHARE = 0.010, 0.300, 0.05


def build(hedge: float | None, sent: list[str], seed: int) -> object:
    chance = random.Random(seed)

    @opero(cache=False, retries=0, arg_fallback="backend", hedge_after=hedge)
    async def call(request: int, backend: str | list[str] = ["a", "b"]) -> int:  # noqa: B006
        assert isinstance(backend, str)
        sent.append(backend)
        await asyncio.sleep(SLOW if chance.random() < SLOW_SHARE else FAST)
        return request

    return call


async def measure(call: object, calls: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(request: int) -> None:
        async with gate:
            began = time.perf_counter()
            assert await call(request) == request  # type: ignore[operator]
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(one(i) for i in range(calls)))
    return latencies


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="a few calls: checks it runs")
    args = parser.parse_args()
    calls = 40 if args.quick else args.calls
    print(
        f"{calls} calls per strategy, {args.concurrency} at a time; backends answer in "
        f"{FAST * 1000:.0f} ms, {SLOW_SHARE:.0%} of requests in {SLOW * 1000:.0f} ms"
    )
    print(f"  {'strategy':<24}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'requests':>10}")
    rows = {}
    for label, hedge in (("plain fallback", None), ("hedge_after=0.03", 0.03)):
        sent: list[str] = []
        latencies = asyncio.run(measure(build(hedge, sent, seed=7), calls, args.concurrency))
        cells = [percentile(latencies, q) for q in (0.5, 0.95, 0.99)] + [max(latencies)]
        rows[label] = cells
        shown = "".join(f"{cell * 1000:>7.1f}ms" for cell in cells)
        print(f"  {label:<24}{shown}{len(sent) / calls:>9.2f}x")
    plain, hedged = rows["plain fallback"], rows["hedge_after=0.03"]
    print(
        f"p99: hedged / plain = {hedged[2] / plain[2]:.2f}; "
        f"median: {hedged[0] / plain[0]:.2f} (mean of plain "
        f"{statistics.fmean([plain[0], plain[1]]) * 1000:.1f} ms at p50/p95)"
    )


if __name__ == "__main__":
    main()
