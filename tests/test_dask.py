"""`@opmap(mode="dask")` against a real `distributed.LocalCluster` of 2 worker processes."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import max_starts_in_window
from opero import OpmapError, RemoteError, WorkerCrashedError, opmap

distributed = pytest.importorskip("distributed", reason="distributed is not installed")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    with distributed.Client(cluster) as connected:
        yield connected
    cluster.close()


class TwoArgs(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code}: {text}")


def test_results_in_order_with_extra_arguments_and_failures_kept(client: Any) -> None:
    def square(x: int, add: int = 0) -> int:
        if x == 7:
            raise KeyError("seven")
        return x * x + add

    mapped = opmap(mode="dask", client=client, retries=0, progress=False)(square)
    with pytest.raises(OpmapError) as caught:
        mapped(range(20), add=1)
    error = caught.value
    assert error.failures.keys() == {7}
    assert isinstance(error.failures[7], KeyError)
    assert error.results[:7] == [x * x + 1 for x in range(7)]
    assert error.results[8:] == [x * x + 1 for x in range(8, 20)]


def test_unordered_return_exceptions_and_a_generator(client: Any) -> None:
    def half(x: int) -> float:
        if x == 3:
            raise ValueError("three")
        return x / 2

    mapped = opmap(
        mode="dask",
        client=client,
        ordered=False,
        return_exceptions=True,
        retries=0,
        progress=False,
    )(half)
    results = mapped(x for x in range(10))
    assert len(results) == 10
    assert sorted(r for r in results if not isinstance(r, Exception)) == [
        x / 2 for x in range(10) if x != 3
    ]
    assert [type(r) for r in results if isinstance(r, Exception)] == [ValueError]


def test_items_run_on_both_workers_and_retries_run_there(client: Any) -> None:
    attempts: dict[str, int] = {}

    def where(x: int) -> int:
        key = f"{os.getpid()}-{x}"
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] == 1:
            raise ConnectionError("first attempt fails")  # retried on the worker
        time.sleep(0.05)  # long enough for the scheduler to use both workers
        return os.getpid()

    mapped = opmap(mode="dask", client=client, chunksize=1, min_delay=0, progress=False)(where)
    pids = set(mapped(range(20)))
    assert len(pids) == 2
    assert os.getpid() not in pids


def test_exceptions_that_cannot_travel_arrive_as_remote_errors(client: Any) -> None:
    def fails(x: int) -> int:
        raise TwoArgs(x, "two-argument exception")

    mapped = opmap(mode="dask", client=client, retries=0, return_exceptions=True, progress=False)(
        fails
    )
    [result] = mapped([5])
    assert isinstance(result, RemoteError)
    assert result.type_name.endswith("TwoArgs")
    assert "5: two-argument exception" in str(result)


def test_imap_streams_and_an_early_break_cancels_the_rest(client: Any) -> None:
    pulled = itertools.count()

    def endless() -> Iterator[int]:
        for n in itertools.count():
            next(pulled)
            yield n

    mapped = opmap(mode="dask", client=client, chunksize=4, cache=False, progress=False)(
        lambda x: x * 10
    )
    seen = []
    for value in mapped.imap(endless()):
        seen.append(value)
        if len(seen) == 12:
            break
    assert seen == [x * 10 for x in range(12)]
    assert next(pulled) < 100  # bounded work in flight, not the whole stream


def test_parent_cache_computes_duplicates_once(client: Any) -> None:
    def double(x: int) -> int:
        return 2 * x

    mapped = opmap(mode="dask", client=client, progress=False)(double)
    assert mapped([1, 2, 1, 2, 3]) == [2, 4, 2, 4, 6]
    info = mapped.cache_info()
    assert info.misses == 3


def test_a_worker_that_dies_fails_only_its_item(client: Any) -> None:
    def maybe_die(x: int) -> int:
        if x == 2:
            os._exit(3)
        return x

    mapped = opmap(
        mode="dask", client=client, chunksize=1, retries=0, return_exceptions=True, progress=False
    )(maybe_die)
    begin = time.monotonic()
    results = mapped(range(5))
    assert time.monotonic() - begin < 60
    assert [results[i] for i in (0, 1, 3, 4)] == [0, 1, 3, 4]
    assert isinstance(results[2], WorkerCrashedError)
    assert "KilledWorker" in str(results[2])


def test_an_item_that_shared_a_worker_with_a_killer_is_not_failed_with_it() -> None:
    # One worker with one thread holds two tasks (one running, one queued), and with
    # allowed-failures=0 the first death fails both. Resent together they would share
    # the worker again; resent one at a time, only the killer fails.
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        try:
            with distributed.Client(cluster) as one:

                def maybe_die(x: int) -> int:
                    if x == 2:
                        os._exit(3)
                    time.sleep(0.05)  # the next task is queued on the worker by then
                    return x

                mapped = opmap(
                    mode="dask",
                    client=one,
                    chunksize=1,
                    retries=0,
                    return_exceptions=True,
                    progress=False,
                )(maybe_die)
                results = mapped(range(6))
        finally:
            cluster.close()
    assert [results[i] for i in (0, 1, 3, 4, 5)] == [0, 1, 3, 4, 5]
    assert isinstance(results[2], WorkerCrashedError)


def test_a_local_cluster_is_started_and_closed_for_the_call() -> None:
    mapped = opmap(mode="dask", workers=2, cache=False, progress=False)(lambda x: x + 1)
    assert mapped(range(50)) == list(range(1, 51))


def test_bad_dask_options_fail_at_decoration() -> None:
    with pytest.raises(ValueError, match="client is for mode='dask'"):
        opmap(mode="thread", client="tcp://localhost:8786")
    with pytest.raises(TypeError, match="client must be"):
        opmap(mode="dask", client=42)
    with pytest.raises(ValueError, match="rate_limit_backend='redis'"):
        opmap(mode="dask", rate_limit=5)(lambda x: x)


def test_two_dask_workers_share_one_redis_rate_limit(redis_env: str) -> None:
    # Workers start after OPERO_REDIS_URL is set, so they reach the test's Redis.
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    try:
        with distributed.Client(cluster) as client:

            def stamp(x: int) -> tuple[float, int]:
                return time.time(), os.getpid()

            mapped = opmap(
                mode="dask",
                client=client,
                chunksize=1,
                cache=False,
                rate_limit=10,
                rate_limit_backend="redis",
                progress=False,
            )(stamp)
            stamps = mapped(range(25))
    finally:
        cluster.close()
    assert len({pid for _, pid in stamps}) == 2
    starts = [at for at, _ in stamps]
    assert max_starts_in_window(starts) <= 11
    assert max(starts) - min(starts) >= 2.2  # 25 starts at 10/s: about 2.4 s
