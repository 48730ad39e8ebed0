"""Success-path cost of the policies beyond retry, against peers, in one run.

The function never fails and no policy triggers, so what is measured is what the policies
cost on every healthy call. Contenders:

- ``opero retry``: `@opero(cache=False)` alone (the reference of bench_overhead.py);
- ``opero policies``: plus circuit breaker, bulkhead, `retry_if_result` and retry budget;
- ``opero +timeouts``: plus `timeout` and `total_timeout` (a sync attempt then runs on a
  helper thread; an async one under opero's per-loop deadline watch);
- ``opero timeout (abandon)`` / ``opero timeout (interrupt)``: `@opero(cache=False,
  retries=3, timeout=5)` in each `timeout_mode`: a sync attempt handed to a helper thread
  (the default), or run in place under a SIGALRM timer (this, the main thread); what
  `timeout=` alone costs over ``opero retry``. Async attempts ignore the mode;
- ``opero total_timeout``: `@opero(cache=False, retries=3, total_timeout=10)`, against
  ``stamina timeout`` (`stamina.retry(..., attempts=4, timeout=10)`) and ``tenacity
  stop_after_delay`` (`stop_after_attempt(4) | stop_after_delay(10)`): a deadline over
  the retries, the option people set most after `retries`;
- ``tenacity+pybreaker`` / ``tenacity+circuitbreaker``: a retry decorator around a breaker;
- ``pyresilience``: one decorator with retry, breaker, bulkhead and budget (and with its
  timeout in the +timeouts line).

Rounds are interleaved and shuffled; medians over rounds are compared. Overheads are over
the bare call of the same round.

    python benchmarks/bench_policies.py            # full run
    python benchmarks/bench_policies.py --quick    # smoke run (used by the test suite)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
from collections.abc import Callable
from typing import Any

import circuitbreaker
import pybreaker
import pyresilience as pr
import stamina
import tenacity

from bench_overhead import plain, plain_async, time_async, time_sync  # same timing loops
from opero import CircuitBreakerOptions, opero

# Peers of `total_timeout` alone: their overhead is compared with that line.
DEADLINE_PEERS = {"stamina timeout", "tenacity stop_after_delay"}
# Calls per round: thread hand-offs are ~100x slower than the rest, so fewer of them.
SLOW = {"opero +timeouts", "opero timeout (abandon)", "pyresilience +timeouts"}


def policies() -> dict[str, Any]:
    return {
        "cache": False,
        "retries": 3,
        "circuit_breaker": CircuitBreakerOptions(),
        "max_concurrency": 8,
        "retry_if_result": lambda result: result is None,
        "retry_budget": 0.2,
    }


def pyresilience_config(*, timeouts: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "retry": pr.RetryConfig(max_attempts=4, retry_on_result=lambda result: result is None),
        "circuit_breaker": pr.CircuitBreakerConfig(),
        "bulkhead": pr.BulkheadConfig(max_concurrent=8),
        "retry_budget": pr.RetryBudgetConfig(),
    }
    if timeouts:
        config["timeout"] = pr.TimeoutConfig(seconds=5)
    return config


def tenacity_retry() -> Any:
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_exponential(min=0.1)
    )


def contenders(fn: Callable[..., Any], *, is_async: bool) -> dict[str, Callable[..., Any]]:
    breaker = pybreaker.CircuitBreaker()
    deadline_retry = tenacity.retry(
        stop=tenacity.stop_after_attempt(4) | tenacity.stop_after_delay(10),
        wait=tenacity.wait_exponential(min=0.1),
    )
    found: dict[str, Callable[..., Any]] = {
        "bare": fn,
        "opero retry": opero(cache=False, retries=3)(fn),
        "opero total_timeout": opero(cache=False, retries=3, total_timeout=10)(fn),
        "opero timeout (abandon)": opero(cache=False, retries=3, timeout=5)(fn),
        "opero timeout (interrupt)": opero(
            cache=False, retries=3, timeout=5, timeout_mode="interrupt"
        )(fn),
        "stamina timeout": stamina.retry(on=Exception, attempts=4, timeout=10)(fn),
        "tenacity stop_after_delay": deadline_retry(fn),
        "opero policies": opero(**policies())(fn),
        "opero +timeouts": opero(**policies(), timeout=5, total_timeout=10)(fn),
        "tenacity+circuitbreaker": tenacity_retry()(circuitbreaker.circuit()(fn)),
        "pyresilience": pr.resilient(**pyresilience_config(timeouts=False))(fn),
        "pyresilience +timeouts": pr.resilient(**pyresilience_config(timeouts=True))(fn),
    }
    if not is_async:  # pybreaker's async support needs tornado
        found["tenacity+pybreaker"] = tenacity_retry()(breaker(fn))
    return found


def measure(rounds: int, calls: int) -> dict[str, dict[str, list[float]]]:
    """Per kind and contender: seconds per call, one sample per round."""
    sync_fns = contenders(plain, is_async=False)
    async_fns = contenders(plain_async, is_async=True)
    samples: dict[str, dict[str, list[float]]] = {
        "sync": {name: [] for name in sync_fns},
        "async": {name: [] for name in async_fns},
    }
    loop = asyncio.new_event_loop()
    try:
        for _ in range(rounds):
            jobs = [("sync", name) for name in sync_fns] + [("async", name) for name in async_fns]
            random.shuffle(jobs)
            for kind, name in jobs:
                n = max(calls // 50, 20) if name in SLOW else calls
                if kind == "sync":
                    samples[kind][name].append(time_sync(sync_fns[name], n))
                else:
                    sample = loop.run_until_complete(time_async(async_fns[name], n))
                    samples[kind][name].append(sample)
    finally:
        loop.close()
    return samples


def report(kind: str, samples: dict[str, list[float]]) -> list[str]:
    bare = statistics.median(samples["bare"])
    overhead = {name: statistics.median(values) - bare for name, values in samples.items()}
    lines = [
        f"{kind}: median per call; overhead over the bare call; peer overhead / opero's "
        "(same policies)",
        f"  {'contender':<26} {'per call':>10} {'overhead':>10} {'peer/opero':>11}",
    ]
    for name, values in samples.items():
        ours = "opero +timeouts" if "timeouts" in name else "opero policies"
        if name in DEADLINE_PEERS:
            ours = "opero total_timeout"
        ratio = ""
        if not name.startswith(("opero", "bare")):
            ratio = f"{overhead[name] / max(overhead[ours], 1e-9):10.1f}x"
        per_call = statistics.median(values) * 1e6
        lines.append(f"  {name:<26} {per_call:8.3f}us {overhead[name] * 1e6:8.3f}us {ratio:>11}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="a few rounds: checks it runs")
    args = parser.parse_args(argv)
    rounds, calls = (3, 1000) if args.quick else (args.rounds, args.calls)
    print(f"Python {sys.version.split()[0]}; {rounds} interleaved rounds x {calls} calls")
    print(f"(x 1/50 for the {', '.join(sorted(SLOW))} lines)")
    samples = measure(rounds, calls)
    for kind in ("sync", "async"):
        print("\n".join(report(kind, samples[kind])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
