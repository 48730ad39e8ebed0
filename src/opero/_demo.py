"""`python -m opero demo`: opero against a simulated flaky service (no network)."""

from __future__ import annotations

import asyncio
import sys
import time

from opero import AllFailedError, opero


class FlakyService:
    """Stands in for a remote API: fails the first `failures` calls of each model."""

    def __init__(self, failures: dict[str, int]) -> None:
        self.failures = dict(failures)
        self.calls: list[str] = []

    def complete(self, prompt: str, model: str) -> str:
        self.calls.append(model)
        left = self.failures.get(model, 0)
        if left == -1:
            raise RuntimeError(f"model {model!r} is down")
        if left > 0:
            self.failures[model] = left - 1
            raise ConnectionError(f"{model!r}: connection reset")
        return f"[{model}] answer to {prompt!r}"


def _say(text: str) -> None:
    print(text, flush=True)


def _retries_scenario() -> None:
    _say("\n1. A call that succeeds after two failed attempts")
    service = FlakyService({"a": 2})

    @opero(cache=False, retries=3, min_delay=0.05, backoff_factor=2)
    def ask(prompt: str, model: str = "a") -> str:
        _say(f"   attempt {len(service.calls) + 1}: calling model {model!r}")
        return service.complete(prompt, model)

    started = time.perf_counter()
    answer = ask("What is opero?")
    elapsed = time.perf_counter() - started
    _say(f"   -> {answer}  ({len(service.calls)} calls in {elapsed:.2f}s)")


def _fallback_scenario() -> None:
    _say('\n2. A fallback from model "a" (down) to model "b"')
    service = FlakyService({"a": -1, "b": 1})

    @opero(cache=False, retries=1, min_delay=0.05, arg_fallback="model")
    def ask(prompt: str, model: list[str] | str = ["a", "b"]) -> str:  # noqa: B006
        assert isinstance(model, str)
        _say(f"   calling model {model!r}")
        return service.complete(prompt, model)

    _say(f"   -> {ask('Summarise the news')}")
    _say(f"   models called, in order: {service.calls}")


def _all_failed_scenario() -> None:
    _say("\n3. Every fallback value fails: AllFailedError keeps each one's last error")
    service = FlakyService({"a": -1, "b": -1, "c": 99})

    @opero(cache=False, retries=1, min_delay=0.02, arg_fallback="model")
    async def ask(prompt: str, model: list[str] | str) -> str:
        assert isinstance(model, str)
        await asyncio.sleep(0)
        return service.complete(prompt, model)

    try:
        asyncio.run(ask("Hello", model=["a", "b", "c"]))
    except AllFailedError as group:
        _say(f"   AllFailedError: {group.message}")
        for index, error in enumerate(group.errors):
            _say(f"     value {index}: {type(error).__name__}: {error}")
    _say(f"   calls made: {len(service.calls)} (1 + 1 retry for each of 3 values)")


def _cache_scenario() -> None:
    _say("\n4. The cache in front of it all: the second call is a hit, no service call")
    service = FlakyService({"a": 1})

    @opero(retries=2, min_delay=0.05)
    def ask(prompt: str, model: str = "a") -> str:
        return service.complete(prompt, model)

    for label in ("first call ", "second call"):
        started = time.perf_counter()
        answer = ask("What is cached?")
        took = (time.perf_counter() - started) * 1000
        _say(f"   {label}: {answer}  ({took:.3f} ms, service calls so far: {len(service.calls)})")
    info = ask.cache_info()
    _say(f"   cache_info: hits={info.hits} misses={info.misses} size={info.size}")


def _rate_limit_scenario() -> None:
    _say("\n5. A rate limit of 10 calls a second, shared by 4 threads: no burst")
    import threading

    starts: list[float] = []

    @opero(cache=False, rate_limit=10)
    def ping(i: int) -> int:
        starts.append(time.monotonic())
        return i

    threads = [threading.Thread(target=lambda: [ping(i) for i in range(2)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    offsets = ", ".join(f"{(t - starts[0]) * 1000:.0f}" for t in sorted(starts))
    _say(f"   8 calls started at (ms): {offsets}")


def _map_scenario() -> None:
    _say("\n6. @opmap over 300 items on 16 threads: retries per item, one item always fails")
    from loguru import logger

    from opero import OpmapError, opmap

    logger.disable("opero")  # 44 retry messages would drown the progress bar

    attempts: dict[int, int] = {}

    @opmap(mode="thread", workers=16, cache=False, retries=2, min_delay=0.01)
    def fetch(item: int) -> int:
        attempts[item] = attempts.get(item, 0) + 1
        time.sleep(0.01)
        if item == 137:
            raise LookupError(f"item {item} does not exist")
        if item % 7 == 0 and attempts[item] == 1:
            raise ConnectionError("connection reset")
        return item * 2

    started = time.perf_counter()
    try:
        fetch(range(300))
    except OpmapError as error:
        took = time.perf_counter() - started
        kept = len(error.results) - len(error.failures)
        _say(f"   OpmapError: {error.message} ({took:.2f}s; a progress bar shows on a terminal)")
        _say(f"   results kept: {kept} of {len(error.results)}; results[10] = {error.results[10]}")
        for index, failure in error.failures.items():
            _say(f"   failed: item {index}: {type(failure).__name__}: {failure}")
    retried = sum(1 for count in attempts.values() if count > 1)
    _say(f"   items that needed a retry: {retried}; attempts in all: {sum(attempts.values())}")
    logger.enable("opero")


def _events_scenario() -> None:
    _say("\n7. The event stream of one call (a hook; no argument values in any event)")
    from opero import Event, current_attempt

    service = FlakyService({"a": -1, "b": 1})
    started = time.perf_counter()

    def show(event: Event) -> None:
        at = (time.perf_counter() - started) * 1000
        details = [f"attempt={event.attempt}"] if event.attempt else []
        if event.fallback_index is not None:
            details.append(f"value={event.fallback_index}")
        if event.delay is not None:
            details.append(f"delay={event.delay * 1000:.0f}ms")
        if event.error:
            details.append(f"error={event.error}")
        _say(f"   {at:6.1f} ms  {event.kind:<18} {' '.join(details)}  [call {event.call_id}]")

    @opero(
        cache=False,
        retries=1,
        min_delay=0.02,
        jitter=False,
        arg_fallback="model",
        on_event=show,
        stats=True,
    )
    def ask(prompt: str, model: list[str]) -> str:
        assert current_attempt() is not None
        return service.complete(prompt, model)  # type: ignore[arg-type]

    from loguru import logger

    logger.disable("opero")  # the events say it all here
    _say(f"   result: {ask('Hello?', ['a', 'b'])}")
    logger.enable("opero")
    _say(f"   ask.stats(): {ask.stats()}")


def run_demo() -> int:
    """Run the scenarios, printing what happens; returns the exit status."""
    from loguru import logger

    # The demo is the application here, so it configures loguru as a host would: one
    # plain sink on stdout, and opero's messages (retries, fallback switches) switched on.
    logger.remove()
    logger.add(sys.stdout, format="   log: {message}", colorize=False)
    logger.enable("opero")
    _say("opero demo: a simulated flaky service, no network needed")
    _retries_scenario()
    _fallback_scenario()
    _all_failed_scenario()
    _cache_scenario()
    _rate_limit_scenario()
    _map_scenario()
    _events_scenario()
    _say("\nDone.")
    return 0
