"""`@opmap`: results, failures, workers, supervision, streaming, cache, rate limit, progress."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import ctrl_c_after, live_processes, max_starts_in_window, peak_overlap, start_methods
from opero import OpmapError, RemoteError, WorkerCrashedError, opmap
from opero import opero as opero_

POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and sessions")
FAST = {"retries": 0, "progress": False}
# Process mode once per start method, and thread mode.
MODES = [*start_methods(), "thread"]


def on(mode: str) -> dict[str, Any]:
    """opmap's options for a name of MODES (a start method means process mode)."""
    return {"mode": mode} if mode == "thread" else {"mode": "process", "start_method": mode}


def child_pids() -> set[int]:
    """Live (not zombie) child processes of this test process, but for the fork server
    and the resource tracker, which serve the whole test session."""
    return live_processes(parent=os.getpid())


@pytest.fixture(autouse=True)
def no_child_left() -> Any:
    """Every test here ends with no worker process left over."""
    before = child_pids()
    yield
    deadline = time.monotonic() + 2
    while child_pids() - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child_pids() - before == set()


def square(x: int) -> int:
    return x * x


def fails_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x * 10


# --- options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"mode": "gpu"}, ValueError, "mode"),
        ({"mode": 1}, TypeError, "mode"),
        ({"workers": 0}, ValueError, "workers"),
        ({"workers": 1.5}, TypeError, "workers"),
        ({"chunksize": 0}, ValueError, "chunksize"),
        ({"ordered": "yes"}, TypeError, "ordered"),
        ({"progress": "sometimes"}, ValueError, "progress"),
        ({"return_exceptions": 1}, TypeError, "return_exceptions"),
        ({"retries": -1}, ValueError, "retries"),
        ({"wrokers": 2}, TypeError, "wrokers"),
    ],
)
def test_bad_options_fail_at_decoration(options: dict[str, Any], error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        opmap(**options)(square)


def test_async_mode_needs_an_async_function_and_no_chunksize() -> None:
    with pytest.raises(TypeError, match="async def"):
        opmap(mode="async")(square)

    async def coro(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="chunksize"):
        opmap(mode="async", chunksize=4)(coro)


def test_keeps_the_functions_identity() -> None:
    mapped = opmap(square)
    assert mapped.__name__ == "square"
    assert mapped.__wrapped__ is square  # type: ignore[attr-defined]


# --- results ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_results_in_input_order_with_extra_arguments(mode: str) -> None:
    def power(x: int, exponent: int, *, offset: int = 0) -> int:
        return x**exponent + offset

    mapped = opmap(**on(mode), workers=2, **FAST)(power)
    assert mapped(range(50), 3, offset=1) == [x**3 + 1 for x in range(50)]
    assert mapped((x for x in range(5)), 2) == [0, 1, 4, 9, 16]  # a generator
    assert mapped([], 2) == []


async def test_async_mode_results_and_arguments() -> None:
    async def scaled(x: int, factor: int) -> int:
        await asyncio.sleep(0.001 * (x % 3))
        return x * factor

    mapped = opmap(mode="async", workers=4, **FAST)(scaled)
    assert await mapped(range(20), 3) == [x * 3 for x in range(20)]

    async def numbers() -> Any:
        for x in range(5):
            yield x

    assert await mapped(numbers(), 2) == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("mode", MODES)
def test_async_function_in_pool_modes(mode: str) -> None:
    async def halve(x: int) -> float:
        await asyncio.sleep(0)
        return x / 2

    assert opmap(**on(mode), workers=2, **FAST)(halve)(range(6)) == [0, 0.5, 1, 1.5, 2, 2.5]


@pytest.mark.parametrize("mode", [*MODES, "async"])
def test_unordered_gives_every_result_in_completion_order(mode: str) -> None:
    def slow_first(x: int) -> int:
        time.sleep(0.2 if x == 0 else 0.001)
        return x

    async def aslow_first(x: int) -> int:
        await asyncio.sleep(0.2 if x == 0 else 0.001)
        return x

    if mode == "async":
        mapped = opmap(mode=mode, workers=2, ordered=False, **FAST)(aslow_first)
        results = asyncio.run(mapped(range(10)))
    else:
        mapped = opmap(**on(mode), workers=2, ordered=False, chunksize=1, **FAST)(slow_first)
        results = mapped(range(10))
    assert sorted(results) == list(range(10))
    assert results[-1] == 0  # the slow one finished last


# --- failures --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_one_failure_keeps_every_other_result(mode: str) -> None:
    mapped = opmap(**on(mode), workers=2, **FAST)(fails_on_three)
    with pytest.raises(OpmapError) as caught:
        mapped(range(8))
    error = caught.value
    assert error.results[:3] == [0, 10, 20]
    assert error.results[4:] == [40, 50, 60, 70]
    assert isinstance(error.results[3], ValueError)
    assert list(error.failures) == [3]
    assert str(error.failures[3]) == "three"
    assert error.exceptions == (error.failures[3],)

    kept = opmap(**on(mode), workers=2, return_exceptions=True, **FAST)(fails_on_three)(range(5))
    assert kept[:3] == [0, 10, 20]
    assert isinstance(kept[3], ValueError)


async def test_async_failure_keeps_every_other_result() -> None:
    async def afails(x: int) -> int:
        return fails_on_three(x)

    with pytest.raises(OpmapError) as caught:
        await opmap(mode="async", workers=3, **FAST)(afails)(range(6))
    assert caught.value.results[:3] == [0, 10, 20]
    assert list(caught.value.failures) == [3]


@pytest.mark.parametrize("mode", MODES)
def test_retries_apply_per_item(mode: str) -> None:
    def flaky_once(x: int, seen: Any) -> int:
        # Fails on its first attempt for each item: the worker's own record of items.
        if x not in seen:
            seen.add(x)
            raise ConnectionError(x)
        return x

    seen: set[int] = set()
    mapped = opmap(**on(mode), workers=2, retries=1, min_delay=0, progress=False)(flaky_once)
    assert mapped(range(6), seen) == list(range(6))


class TwoArgumentError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


def misbehaves(x: int) -> object:
    if x == 1:
        raise TwoArgumentError(404, "gone")  # pickles, but cannot be unpickled
    if x == 2:
        os._exit(3)
    if x == 3:
        sys.exit(4)
    if x == 4:
        raise KeyboardInterrupt
    if x == 5:
        return (i for i in range(3))  # a result that cannot be pickled, by dill either
    return x


def test_process_failure_modes_end_quickly_and_keep_the_rest(start_method: str) -> None:
    mapped = opmap(**on(start_method), workers=2, return_exceptions=True, **FAST)(misbehaves)
    started = time.monotonic()
    results = mapped(range(10))
    assert time.monotonic() - started < 5
    assert results[0] == 0
    assert results[6:] == [6, 7, 8, 9]
    remote = results[1]
    if isinstance(remote, TwoArgumentError):
        # Importing `distributed` (test_dask.py) installs tblib's exception pickling
        # process-wide: the exception then survives the trip and comes back as itself.
        assert "tblib" in sys.modules
        assert str(remote) == "404: gone"
    else:
        assert isinstance(remote, RemoteError)
        assert remote.type_name.endswith("TwoArgumentError")
        assert "404: gone" in str(remote)
        assert "Traceback" in remote.traceback_text
    assert isinstance(results[2], WorkerCrashedError)
    assert "exited with code 3" in str(results[2])
    assert isinstance(results[3], WorkerCrashedError)
    assert "SystemExit" in str(results[3])
    assert isinstance(results[4], WorkerCrashedError)
    assert "KeyboardInterrupt" in str(results[4])
    assert isinstance(results[5], RemoteError)
    assert "could not be sent back" in str(results[5])


@POSIX_ONLY
def test_a_worker_killed_by_a_signal_fails_its_item_and_the_map_goes_on(start_method: str) -> None:
    def killer(x: int) -> int:
        if x == 7:
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    mapped = opmap(**on(start_method), workers=2, return_exceptions=True, chunksize=4, **FAST)(
        killer
    )
    results = mapped(range(20))
    assert isinstance(results[7], WorkerCrashedError)
    assert "signal 9" in str(results[7])
    assert [r for i, r in enumerate(results) if i != 7] == [i for i in range(20) if i != 7]


def test_exceptions_that_travel_keep_their_type_and_worker_traceback(start_method: str) -> None:
    with pytest.raises(OpmapError) as caught:
        opmap(**on(start_method), workers=2, **FAST)(fails_on_three)(range(5))
    error = caught.value.failures[3]
    assert type(error) is ValueError
    assert any("Traceback in worker process" in note for note in error.__notes__)


def test_lambdas_and_closures_run_in_process_mode(start_method: str) -> None:
    base = 100
    assert opmap(**on(start_method), workers=2, **FAST)(lambda x: x + base)(range(3)) == [
        100,
        101,
        102,
    ]


def test_an_error_in_the_input_stops_the_map_and_propagates(start_method: str) -> None:
    def broken() -> Any:
        yield 1
        raise LookupError("input broke")

    with pytest.raises(LookupError, match="input broke"):
        opmap(**on(start_method), workers=2, **FAST)(square)(broken())


def test_thread_mode_base_exception_propagates() -> None:
    def stop(x: int) -> int:
        if x == 2:
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        opmap(mode="thread", workers=2, **FAST)(stop)(range(5))


# --- workers honoured exactly ----------------------------------------------------------


def _span(x: int) -> tuple[float, float, int]:
    """When this item ran (system-wide monotonic clock), and in which process/thread."""
    start = time.monotonic()
    time.sleep(0.05)
    return start, time.monotonic(), os.getpid() * 1_000_000 + threading.get_ident() % 1_000_000


@pytest.mark.parametrize(
    ("mode", "workers"), [*((m, w) for m in start_methods() for w in (2, 3)), ("thread", 5)]
)
def test_workers_is_exact(mode: str, workers: int) -> None:
    mapped = opmap(**on(mode), workers=workers, chunksize=1, **FAST)(_span)
    spans = mapped(range(workers * 4))
    assert peak_overlap([(start, end) for start, end, _ in spans]) == workers
    ids = [who for _, _, who in spans]
    if mode != "thread":
        assert len({i // 1_000_000 for i in ids}) == workers  # process ids
    else:
        assert len(set(ids)) == workers  # thread ids in one process


async def test_async_workers_is_exact() -> None:
    running = peak = 0

    async def track(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return x

    assert await opmap(mode="async", workers=7, **FAST)(track)(range(40)) == list(range(40))
    assert peak == 7


# --- interruption ----------------------------------------------------------------------


@POSIX_ONLY
def test_ctrl_c_to_the_process_group_stops_the_map_and_leaves_no_worker(
    start_method: str,
) -> None:
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from opero import opmap

        def slow(x):
            os.write(1, f"worker {{os.getpid()}}\\n".encode())  # one write: no interleaving
            time.sleep(30)
            return x

        try:
            opmap(
                mode="process", start_method={start_method!r}, workers=2, chunksize=1,
                progress=False,
            )(slow)(range(6))
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
        """
    )
    seen = ctrl_c_after(code, lines=2)  # both workers started
    workers = {int(line.split()[1]) for line in seen.first}
    assert seen.seconds < 5
    assert seen.returncode == 130, seen.err
    assert "interrupted" in seen.out
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    # Nothing of the child's is left: no worker, no fork server, no resource tracker.
    deadline = time.monotonic() + 5
    while live_processes(group=seen.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_processes(group=seen.pid) == set()


@pytest.mark.parametrize("mode", MODES)
def test_breaking_out_of_imap_stops_the_pool(mode: str) -> None:
    pulled = 0

    def endless() -> Any:
        nonlocal pulled
        for x in itertools.count():
            pulled += 1
            yield x

    mapped = opmap(**on(mode), workers=2, **FAST)(square)
    stream = mapped.imap(endless())
    assert [next(stream) for _ in range(100)] == [x * x for x in range(100)]
    stream.close()
    assert pulled < 100 + 2 * 2 * 1024  # in flight: at most 2 chunks per worker


async def test_cancelling_an_async_map_cancels_its_items() -> None:
    finished = 0

    async def sleepy(x: int) -> int:
        nonlocal finished
        await asyncio.sleep(10)
        finished += 1
        return x

    task = asyncio.ensure_future(opmap(mode="async", workers=4, **FAST)(sleepy)(range(100)))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1
    assert finished == 0
    assert len(asyncio.all_tasks()) == 1  # only this test's own task is left


# --- streaming -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_imap_streams_in_order_and_raises_failures_at_the_end(mode: str) -> None:
    mapped = opmap(**on(mode), workers=2, **FAST)(fails_on_three)
    seen: list[int] = []

    def consume() -> None:
        seen.extend(mapped.imap(range(6)))

    with pytest.raises(OpmapError) as caught:
        consume()
    assert seen == [0, 10, 20, 40, 50]
    assert list(caught.value.failures) == [3]
    kept = list(
        opmap(**on(mode), workers=2, return_exceptions=True, **FAST)(fails_on_three).imap(range(5))
    )
    assert isinstance(kept[3], ValueError)


async def test_async_imap_streams() -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    mapped = opmap(mode="async", workers=3, **FAST)(double)
    assert [value async for value in mapped.imap(range(10))] == [2 * x for x in range(10)]


# --- cache and rate limit --------------------------------------------------------------


def _counted_square(x: int, log: str) -> int:
    with open(log, "a") as calls:  # one short append per call: whole lines
        calls.write(f"{x}\n")
    return x * x


@pytest.mark.parametrize("mode", MODES)
def test_cache_computes_duplicates_once_and_serves_the_next_map(mode: str, tmp_path: Path) -> None:
    log = str(tmp_path / "calls")
    Path(log).touch()

    def calls() -> int:
        return len(Path(log).read_text().splitlines())

    mapped = opmap(**on(mode), workers=2, cache=True, **FAST)(_counted_square)
    items = [1, 2, 3, 1, 2, 3, 4, 1]
    assert mapped(items, log) == [x * x for x in items]
    assert calls() == 4
    assert mapped(items, log) == [x * x for x in items]
    assert calls() == 4  # every item a hit, in the parent
    info = mapped.cache_info()  # type: ignore[attr-defined]
    assert info.misses == 4
    mapped.cache_clear()  # type: ignore[attr-defined]
    mapped([1], log)
    assert calls() == 5


def _start_time(x: int) -> float:
    return time.monotonic()


def test_process_mode_rate_limit_holds_over_all_workers(start_method: str) -> None:
    mapped = opmap(**on(start_method), workers=2, rate_limit=20, chunksize=1, **FAST)(_start_time)
    starts = mapped(range(30))
    assert max_starts_in_window(starts) <= 21
    gaps = [b - a for a, b in itertools.pairwise(sorted(starts))]
    assert min(gaps) >= 0.9 / 20


# --- progress --------------------------------------------------------------------------


def test_progress_bar_shows_count_and_failures_when_forced(
    capsys: pytest.CaptureFixture[str],
) -> None:
    opmap(mode="thread", workers=2, retries=0, progress="always", return_exceptions=True)(
        fails_on_three
    )(range(10))
    err = capsys.readouterr().err
    assert "10/10" in err
    assert "failed=1" in err


def test_process_mode_progress_counts_every_item(
    capsys: pytest.CaptureFixture[str], start_method: str
) -> None:
    opmap(**on(start_method), workers=2, retries=0, progress="always", return_exceptions=True)(
        fails_on_three
    )(range(10))
    err = capsys.readouterr().err
    assert "10/10" in err
    assert "failed=1" in err


def test_progress_bar_stays_hidden_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    opmap(mode="thread", workers=2, retries=0)(square)(range(10))
    assert capsys.readouterr().err == ""


def test_process_mode_attempt_timeout_stops_the_work_for_real(
    tmp_path: Path, start_method: str
) -> None:
    marker = tmp_path / "finished"

    @opmap(
        **on(start_method),
        workers=1,
        chunksize=1,
        timeout=0.2,
        retries=0,
        return_exceptions=True,
    )
    def item(x: int) -> int:
        if x == 0:
            time.sleep(0.5)
            marker.write_text("the abandoned work went on")  # must never happen
        else:
            time.sleep(0.15)  # the worker lives on, busy, past the 0.5 s above
        return x

    begin = time.monotonic()
    results = item(range(6))
    assert time.monotonic() - begin >= 0.2 + 5 * 0.15
    assert isinstance(results[0], TimeoutError)
    assert "timed out after 0.2s" in str(results[0])
    assert results[1:] == [1, 2, 3, 4, 5]
    assert not marker.exists()


def test_policies_apply_per_item_in_thread_mode() -> None:
    lock = threading.Lock()
    in_flight = [0]
    peak = [0]

    @opmap(mode="thread", workers=8, max_concurrency=2, retry_if_result=lambda r: r < 0)
    def item(x: int) -> int:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.01)
        with lock:
            in_flight[0] -= 1
        return x

    assert item(range(16)) == list(range(16))
    assert peak[0] == 2  # the bulkhead holds across the map's 8 threads


@pytest.mark.parametrize("mode", ["thread", *start_methods()])
def test_ordered_imap_behind_a_slow_item_pulls_a_bounded_window(mode: str) -> None:
    pulled = itertools.count()

    def endless() -> Any:
        for n in itertools.count():
            next(pulled)
            yield n

    def slow_first(x: int) -> int:
        if x == 0:
            time.sleep(0.5)
        return x

    mapped = opmap(**on(mode), workers=2, chunksize=4, cache=False, progress=False)(slow_first)
    seen = []
    for value in mapped.imap(endless()):
        seen.append(value)
        if len(seen) == 5:
            break
    assert seen == [0, 1, 2, 3, 4]
    # At most 2 chunks per worker ahead of the item awaited (with slack);
    # without the window the other worker runs thousands of items in those 0.5 s.
    assert next(pulled) <= 4 * 4 * 4 + 4 * 4 + 8


@pytest.mark.parametrize("source", ["sync", "async"])
async def test_async_ordered_imap_behind_a_slow_item_pulls_a_bounded_window(source: str) -> None:
    pulled = itertools.count()

    def endless() -> Any:
        for n in itertools.count():
            next(pulled)
            yield n

    async def aendless() -> Any:
        for n in endless():
            yield n

    async def slow_first(x: int) -> int:
        await asyncio.sleep(0.3 if x == 0 else 0)
        return x

    mapped = opmap(mode="async", workers=4, cache=False, progress=False)(slow_first)
    seen = []
    async for value in mapped.imap(endless() if source == "sync" else aendless()):
        seen.append(value)
        if len(seen) == 5:
            break
    assert seen == [0, 1, 2, 3, 4]
    # At most 2 items per worker ahead of the item awaited (with slack); without the
    # window the other workers run through thousands of items in those 0.3 s.
    assert next(pulled) <= 2 * 4 + 5 + 4


# --- tiny items: the direct call, chunk sizes, chunks in flight ------------------------

from opero._pipeline.direct import direct_of  # noqa: E402 - next to the tests that use it


def _outcomes_both_ways(func: Any, options: dict[str, Any], *args: Any) -> list[Any]:
    """A chunk run through the item pipeline and through its direct call, with the
    attempts each made."""
    from opero._maps.worker import Job, run_items
    from opero._pipeline.build import decorate
    from opero._pipeline.options import build_options

    validated = build_options("opmap", {"cache": False, **options})
    pipeline = decorate(func, validated)
    direct = direct_of(pipeline)
    assert direct is not None
    runs = []
    for way in (None, direct):
        _attempts.clear()
        job = Job(pipeline, args, {}, is_async=False, direct=way)
        outcome = run_items(job, list(range(6)))
        failures = {
            offset: (type(error), str(error), type(error.__cause__), type(error.__context__))
            for offset, error in outcome.failures.items()
        }
        runs.append((outcome.results, failures, dict(_attempts)))
    return runs


_attempts: dict[int, int] = {}


def _flaky(x: int, fail_until: int = 2) -> int:
    """Fails its first `fail_until` attempts for odd items; 4 raises a TypeError."""
    _attempts[x] = _attempts.get(x, 0) + 1
    if x == 4:
        raise TypeError("four")
    if x % 2 and _attempts[x] <= fail_until:
        raise ConnectionError(f"attempt {_attempts[x]} of {x}")
    return x * 10


@pytest.mark.parametrize(
    ("options", "args"),
    [
        ({"retries": 0}, ()),
        ({"retries": 1, "min_delay": 0}, ()),  # odd items still fail, after 2 attempts
        ({"retries": 3, "min_delay": 0}, ()),  # odd items succeed on their third attempt
        ({"retries": 3, "min_delay": 0, "retry_on": TypeError}, ()),  # no retry of odd ones
        ({"retries": 3, "min_delay": 0}, (1,)),  # an extra argument
    ],
)
def test_the_direct_call_gives_what_the_pipeline_gives(
    options: dict[str, Any], args: tuple[Any, ...]
) -> None:
    through_pipeline, direct = _outcomes_both_ways(_flaky, options, *args)
    assert direct == through_pipeline


def _keyed(x: int, key: Any = ("a", "b")) -> int:
    return x


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, True),
        ({"retries": 5, "min_delay": 0.5, "retry_on": ValueError, "jitter": False}, True),
        ({"on_event": print, "stats": True}, True),  # observed: the pipeline, per item
        ({"cache": True}, False),
        ({"timeout": 1.0}, False),
        ({"total_timeout": 5.0}, False),
        ({"rate_limit": 10.0}, False),
        ({"circuit_breaker": True}, False),
        ({"max_concurrency": 2}, False),
        ({"retry_if_result": lambda result: result is None}, False),
        ({"retry_budget": 0.2}, False),
        ({"arg_fallback": "key"}, False),
    ],
)
def test_the_direct_call_is_for_pipelines_with_no_step_around_the_attempt(
    options: dict[str, Any], expected: bool
) -> None:
    from opero._pipeline.build import decorate
    from opero._pipeline.options import build_options

    validated = build_options("opmap", {"cache": False, **options})
    assert (direct_of(decorate(_keyed, validated)) is not None) is expected

    async def asynchronous(x: int, key: Any = ("a", "b")) -> int:
        return x

    assert direct_of(decorate(asynchronous, validated)) is None


@pytest.mark.parametrize("mode", MODES)
def test_items_know_their_attempt(mode: str) -> None:
    from opero import current_attempt

    def attempt_of(x: int) -> int | None:
        attempt = current_attempt()
        if x % 2 and attempt == 1:
            raise ConnectionError(x)  # odd items succeed on their retry
        return attempt

    mapped = opmap(**on(mode), workers=2, cache=False, retries=1, min_delay=0, progress=False)
    assert mapped(attempt_of)(range(4)) == [1, 2, 1, 2]


def test_direct_items_are_observed_from_the_moment_anyone_listens() -> None:
    from opero import add_hook

    seen: list[str] = []
    removers = []

    def listens_at_three(x: int) -> int:
        if x == 3:
            removers.append(add_hook(lambda event: seen.append(event.kind)))
        return x

    mapped = opmap(mode="thread", workers=1, chunksize=10, cache=False, **FAST)(listens_at_three)
    try:
        assert mapped(range(6)) == list(range(6))
    finally:
        for remove in removers:
            remove()
    # Items 4 and 5; item 3 began unobserved, as a call through the pipeline would.
    assert seen.count("call_started") == seen.count("call_succeeded") == 2


def test_chunks_of_a_known_length_start_as_pool_map_and_grow_for_fast_items() -> None:
    from opero._maps.dispatch import MAX_CHUNK, MAX_FIRST_CHUNK, MAX_GROWN_CHUNK, ChunkSizer

    sizer = ChunkSizer(workers=2, total=10_000, fixed=None, target=0.02)
    assert sizer.size == 1250  # a quarter of each worker's share, as Pool.map
    big = ChunkSizer(workers=2, total=10**7, fixed=None, target=0.02)
    assert big.size == MAX_FIRST_CHUNK
    big.observe(1024, 0.0001)  # 0.1 µs an item
    assert big.size == MAX_GROWN_CHUNK
    big.observe(10, 0.1)  # 10 ms an item: about 20 ms a chunk
    assert big.size == 2
    stream = ChunkSizer(workers=2, total=None, fixed=None, target=0.02)
    assert stream.size == 1
    stream.observe(10, 0.000001)
    assert stream.size == MAX_CHUNK  # a stream never goes past it
    assert ChunkSizer(workers=2, total=10_000, fixed=7, target=0.02).size == 7


class _SilentEngine:
    """Takes chunks and never answers: what the dispatcher has in flight stays put."""

    target = 0.02

    def __init__(self) -> None:
        import queue

        self.results: Any = queue.SimpleQueue()
        self.sent: list[list[Any]] = []

    def submit(self, number: int, items: list[Any]) -> None:
        self.sent.append(items)


@pytest.mark.parametrize(
    ("depth", "sized", "expected"), [(4, True, 8), (2, True, 4), (2, False, 4)]
)
def test_chunks_in_flight(depth: int, sized: bool, expected: int) -> None:
    from opero._maps.dispatch import ChunkSizer, Dispatcher

    items = range(100_000)
    engine = _SilentEngine()
    total = len(items) if sized else None
    sizer = ChunkSizer(workers=2, total=total, fixed=16, target=0.02)
    dispatcher = Dispatcher(engine, items if sized else iter(items), sizer, 2, depth=depth)
    assert list(dispatcher._fill()) == []
    assert len(engine.sent) == expected
    assert engine.sent[1] == list(range(16, 32))


def test_process_mode_has_4_chunks_per_worker_in_flight_for_a_known_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opero._maps import dispatch

    depths = []
    original = dispatch.Dispatcher.__init__

    def spy(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        depths.append(self.limit)

    monkeypatch.setattr(dispatch.Dispatcher, "__init__", spy)
    mapped = opmap(mode="process", workers=2, **FAST)(square)
    assert mapped(range(10)) == [x * x for x in range(10)]
    assert list(mapped.imap(iter(range(10)))) == [x * x for x in range(10)]
    assert depths == [8, 4]  # a generator keeps 2 chunks per worker


def test_process_mode_runs_on_the_stdlib_pool_too(
    monkeypatch: pytest.MonkeyPatch, start_method: str
) -> None:
    from opero._maps import pool

    kinds = []
    original = pool.ProcessEngine.__init__

    def spy(self: Any, start: Any, workers: int, kind: str, method: str) -> None:
        kinds.append(kind)
        original(self, start, workers, kind, method)

    monkeypatch.setattr(pool.ProcessEngine, "__init__", spy)
    monkeypatch.setattr(pool, "PROCESS_POOL", "stdlib")
    with pytest.raises(OpmapError) as caught:
        opmap(**on(start_method), workers=2, **FAST)(fails_on_three)(range(6))
    assert caught.value.results[4:] == [40, 50]
    assert kinds == ["stdlib"]


def test_workers_leave_the_timeout_module_alone_when_no_item_has_a_timeout() -> None:
    # Importing it (~1-8 ms) held up each worker's first chunk; a timeout imports it in
    # the parent, before the fork (test_process_mode_attempt_timeout_... covers those).
    code = textwrap.dedent(
        """
        import sys
        from opero import opmap

        def loaded(x):
            return "opero._timeouts.attempt" in sys.modules

        if __name__ == "__main__":
            mapped = opmap(mode="process", workers=2, progress=False)
            print(loaded(0), mapped(loaded)(range(4)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False [False, False, False, False]"  # parent, workers


def test_a_timeout_first_used_inside_a_worker_still_stops_the_work() -> None:
    # The parent never imported the timeout module: the worker turns SIGALRM on at
    # the first timed attempt, so no attempt is left running on a helper thread.
    code = textwrap.dedent(
        """
        import sys, threading, time
        from opero import opero, opmap

        def item(x):
            @opero(cache=False, retries=0, timeout=0.05)
            def slow():
                time.sleep(0.3)
                return "finished"

            try:
                slow()
            except TimeoutError:
                pass
            return sorted(thread.name for thread in threading.enumerate())

        if __name__ == "__main__":
            mapped = opmap(mode="process", workers=1, cache=False, progress=False)(item)
            print("opero._timeouts.attempt" in sys.modules, mapped([1])[0])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    # No attempt left running on a helper thread: the worker's main thread, and the
    # thread that waits for the parent's death (on POSIX a bare thread blocked in one
    # read of the parent's pipe, which `threading` does not list).
    watcher = "" if os.name == "posix" else ", 'opero-parent-watch'"
    assert done.stdout.strip() == f"False ['MainThread'{watcher}]"


def test_the_direct_call_lets_go_of_a_retried_items_first_failure() -> None:
    import gc
    import weakref

    class Payload:
        pass

    refs: list[weakref.ref[Payload]] = []
    calls: dict[int, int] = {}

    def item(x: int) -> Any:
        calls[x] = calls.get(x, 0) + 1
        if x == 0 and calls[x] == 1:
            payload = Payload()  # held by this failed frame, through the traceback
            refs.append(weakref.ref(payload))
            raise ConnectionError("first attempt")
        if x == 3:
            gc.collect()
            return refs[0]() is None
        return x

    mapped = opmap(
        mode="thread", workers=1, chunksize=10, cache=False, retries=1, min_delay=0, progress=False
    )(item)
    assert mapped(range(5)) == [0, 1, 2, True, 4]


async def test_an_items_own_cancelled_error_stops_the_async_map() -> None:
    async def item(x: int) -> int:
        if x == 1:
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future  # CancelledError, while the worker task itself is not cancelled
        return x

    mapped = opmap(mode="async", workers=2, cache=False, progress=False)(item)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(mapped(range(4)), 5)


def test_process_workers_send_their_events_to_the_parents_hooks(start_method: str) -> None:
    from opero import Event, add_hook

    global_seen: list[tuple[str, str, int]] = []
    own_seen: list[str] = []
    remove = add_hook(lambda event: global_seen.append((event.kind, event.function, os.getpid())))

    @opero_(cache=False, retries=0)
    def inner(x: int) -> int:
        return x

    def item(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return inner(x) * 2

    def own(event: Event) -> None:
        own_seen.append(event.kind)

    mapped = opmap(**on(start_method), workers=2, chunksize=2, cache=False, on_event=own, **FAST)(
        item
    )
    try:
        results = mapped(range(6))
    except OpmapError as error:
        results = error.results
    finally:
        remove()
    assert results[:3] + results[4:] == [0, 2, 4, 8, 10]
    assert {pid for _, _, pid in global_seen} == {os.getpid()}  # hooks ran in the parent
    mapped_kinds = [kind for kind, function, _ in global_seen if function.endswith("item")]
    assert mapped_kinds.count("call_started") == 6
    assert mapped_kinds.count("call_succeeded") == 5
    assert mapped_kinds.count("call_failed") == 1
    assert sorted(own_seen) == sorted(mapped_kinds)  # on_event: the mapped function's
    inner_kinds = [kind for kind, function, _ in global_seen if function.endswith("inner")]
    assert inner_kinds.count("call_succeeded") == 5  # a nested function: global hooks only


def test_a_cluster_task_failed_as_a_whole_sends_its_items_once_more_alone() -> None:
    # Dask fails every task that was on workers that kept dying, the innocent ones too.
    import queue

    from opero._maps.dispatch import Batch, ChunkSizer, Dispatcher
    from opero._maps.worker import Outcome

    class FakeCluster:
        resends_crashed = True
        target = 0.05

        def __init__(self) -> None:
            self.results: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
            self.sent: list[list[int]] = []

        def submit(self, number: int, items: list[int]) -> None:
            self.sent.append(list(items))
            # The first task (items 0-2) dies as a whole; item 1 alone kills workers again.
            if len(self.sent) == 1 or items == [1]:
                self.results.put((number, WorkerCrashedError("KilledWorker")))
            else:
                self.results.put((number, Outcome([x * 10 for x in items], {}, 0.0)))

        def decode(self, answer: Outcome) -> Outcome:
            return answer

        def supervise(self, inflight: dict[int, Any]) -> list[tuple[int, Exception]]:
            return []

    engine = FakeCluster()
    sizer = ChunkSizer(1, 3, 3, engine.target)
    batches: list[Batch] = list(Dispatcher(engine, [0, 1, 2], sizer, 1))  # type: ignore[arg-type]
    found: dict[int, Any] = {}
    for batch in batches:
        for offset, index in enumerate(batch.indices):
            found[index] = batch.failures.get(offset, batch.values[offset])
    assert engine.sent == [[0, 1, 2], [0], [1], [2]]
    assert found[0] == 0
    assert found[2] == 20
    assert isinstance(found[1], WorkerCrashedError)


@pytest.mark.parametrize("mode", [start_methods()[0], "thread"])
def test_a_map_starts_no_more_workers_than_it_has_items(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    from opero._maps import pool

    started: list[int] = []
    original = pool.engine_for

    def spy(kind: str, job: Any, workers: int, where: Any = None) -> Any:
        started.append(workers)
        return original(kind, job, workers, where)

    monkeypatch.setattr(pool, "engine_for", spy)
    mapped = opmap(**on(mode), workers=16, **FAST)(square)
    assert mapped([1, 2, 3]) == [1, 4, 9]
    assert mapped(iter([1, 2, 3])) == [1, 4, 9]  # no length: all 16
    assert mapped([]) == []
    assert started == [3, 16, 1]
    with pytest.raises(ValueError, match="workers must be at most 4,096 in mode='thread'"):
        opmap(mode="thread", workers=4097)


def test_process_mode_total_timeout_alone_stops_the_work_for_real(
    tmp_path: Path, start_method: str
) -> None:
    # Outside workers a sync total_timeout cuts no running attempt (no helper thread);
    # a worker process owns its main thread, so a timer signal cuts it there.
    from opero import DeadlineExceededError

    marker = tmp_path / "finished"

    @opmap(**on(start_method), workers=1, total_timeout=0.2, retries=0, return_exceptions=True)
    def item(x: int) -> int:
        time.sleep(0.6)
        marker.write_text("the work went on past the deadline")  # must never happen
        return x

    begin = time.monotonic()
    results = item([0])
    assert isinstance(results[0], DeadlineExceededError)
    assert time.monotonic() - begin < 0.6 + 0.5  # cut at ~0.2 s (plus the pool's start)
    time.sleep(0.5)
    assert not marker.exists()
