"""`@opmap(mode="ray")` on a real local Ray runtime (2 CPUs)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from opero import OpmapError, RemoteError, WorkerCrashedError, opmap

ray = pytest.importorskip("ray", reason="ray is not installed")


def test_a_local_ray_is_started_and_shut_down_for_the_call() -> None:
    assert not ray.is_initialized()
    mapped = opmap(mode="ray", workers=2, cache=False, progress=False)(lambda x: x + 1)
    assert mapped(range(30)) == list(range(1, 31))
    assert not ray.is_initialized()  # ours: shut down after the map


@pytest.fixture(scope="module")
def running_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_results_in_order_failures_kept_and_ray_left_running(running_ray: None) -> None:
    def square(x: int, add: int = 0) -> int:
        if x == 4:
            raise KeyError("four")
        return x * x + add

    mapped = opmap(mode="ray", retries=0, progress=False)(square)
    with pytest.raises(OpmapError) as caught:
        mapped(range(12), add=1)
    assert caught.value.failures.keys() == {4}
    assert isinstance(caught.value.failures[4], KeyError)
    assert [caught.value.results[i] for i in (0, 5, 11)] == [1, 26, 122]
    assert ray.is_initialized()  # the caller's Ray is left running


def test_at_most_two_items_at_once_on_two_cpus(running_ray: None) -> None:
    def span(x: int) -> tuple[float, float, int]:
        began = time.time()
        time.sleep(0.05)
        return began, time.time(), os.getpid()

    spans = opmap(mode="ray", chunksize=1, cache=False, progress=False)(span)(range(12))
    assert len({pid for _, _, pid in spans}) >= 2
    edges = sorted([(b, 1) for b, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak == 2


def test_exceptions_that_cannot_travel_arrive_as_remote_errors(running_ray: None) -> None:
    # Defined here, not at module level: Ray workers cannot import this test module, so
    # what the function uses must travel by value.
    class TwoArgs(Exception):
        def __init__(self, code: int, text: str) -> None:
            super().__init__(f"{code}: {text}")

    def fails(x: int) -> int:
        raise TwoArgs(x, "two-argument exception")

    mapped = opmap(mode="ray", retries=0, return_exceptions=True, progress=False)(fails)
    [result] = mapped([5])
    assert isinstance(result, RemoteError)
    assert "5: two-argument exception" in str(result)


def test_a_worker_that_dies_fails_only_its_item(running_ray: None) -> None:
    def maybe_die(x: int) -> int:
        if x == 2:
            os._exit(3)
        return x

    mapped = opmap(
        mode="ray", chunksize=1, retries=0, return_exceptions=True, cache=False, progress=False
    )(maybe_die)
    results = mapped(range(5))
    assert [results[i] for i in (0, 1, 3, 4)] == [0, 1, 3, 4]
    assert isinstance(results[2], WorkerCrashedError)


def test_imap_streams_with_bounded_work_in_flight(running_ray: None) -> None:
    pulled = itertools.count()

    def endless() -> Iterator[int]:
        for n in itertools.count():
            next(pulled)
            yield n

    mapped = opmap(mode="ray", chunksize=4, ordered=False, cache=False, progress=False)(
        lambda x: -x
    )
    seen: list[Any] = []
    for value in mapped.imap(endless()):
        seen.append(value)
        if len(seen) == 10:
            break
    assert len(seen) == 10
    assert next(pulled) < 100


def test_bad_ray_options_fail_at_decoration() -> None:
    with pytest.raises(ValueError, match="address is for mode='ray'"):
        opmap(mode="dask", address="auto")
    with pytest.raises(TypeError, match="address must be a str"):
        opmap(mode="ray", address=6379)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rate_limit_backend='redis'"):
        opmap(mode="ray", rate_limit=5)(lambda x: x)
