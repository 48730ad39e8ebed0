"""Retry budgets: validation, the floor, the ratio, ageing out, threads, memory."""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import FakeClock
from opero._policies.budget import BudgetTracker, RetryBudget

# Each test on the fast pipeline and on its observed twin (see conftest.both_pipelines).
pytestmark = pytest.mark.usefixtures("both_pipelines")


def grants(tracker: BudgetTracker, limit: int = 10_000) -> int:
    """Take retries until refused; how many were granted."""
    for granted in range(limit):
        if not tracker.try_retry():
            return granted
    raise AssertionError(f"more than {limit} retries granted")


def tracker_at(
    clock: FakeClock, ratio: float = 0.2, floor: float = 1.0, window: float = 10.0
) -> BudgetTracker:
    budget = RetryBudget(ratio=ratio, min_retries_per_second=floor, window=window)
    return BudgetTracker(budget, clock=clock)


# --- validation ---------------------------------------------------------------------------


def test_defaults() -> None:
    budget = RetryBudget()
    assert (budget.ratio, budget.min_retries_per_second, budget.window) == (0.2, 1.0, 10.0)


def test_frozen() -> None:
    budget = RetryBudget()
    with pytest.raises(dataclasses.FrozenInstanceError):
        budget.ratio = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("field", ["ratio", "min_retries_per_second", "window"])
@pytest.mark.parametrize("value", ["1", None, True, False, 1j, [1]], ids=repr)
def test_wrong_type_is_type_error(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=rf"^RetryBudget: {field} must be a number, got "):
        RetryBudget(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ratio", 0),
        ("ratio", 0.0),
        ("ratio", -1),
        ("ratio", math.nan),
        ("ratio", math.inf),
        ("min_retries_per_second", -1),
        ("min_retries_per_second", -0.001),
        ("min_retries_per_second", math.nan),
        ("min_retries_per_second", math.inf),
        ("window", 0),
        ("window", -10),
        ("window", math.nan),
        ("window", math.inf),
        ("window", -math.inf),
    ],
)
def test_out_of_range_is_value_error(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"^RetryBudget: {field} must be .*, got {value!r}$"):
        RetryBudget(**{field: value})


def test_message_names_field_and_value() -> None:
    with pytest.raises(
        ValueError, match=r"^RetryBudget: ratio must be a finite number > 0, got -1$"
    ):
        RetryBudget(ratio=-1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ratio": 5.0},  # more retries than calls is allowed
        {"ratio": 1},
        {"ratio": 1e-9},
        {"min_retries_per_second": 0},
        {"min_retries_per_second": 0.0},
        {"window": 0.001},
        {"window": 3600},
    ],
)
def test_in_range_values_accepted(kwargs: dict[str, float]) -> None:
    budget = RetryBudget(**kwargs)
    for name, value in kwargs.items():
        assert getattr(budget, name) == value


# --- the floor and the ratio --------------------------------------------------------------


@pytest.mark.parametrize(
    ("floor", "window", "expected"),
    [(1.0, 10.0, 10), (0.5, 4.0, 2), (3.0, 1.0, 3), (0.0, 10.0, 0)],
)
def test_floor_alone_in_a_quiet_window(floor: float, window: float, expected: int) -> None:
    clock = FakeClock()
    tracker = tracker_at(clock, floor=floor, window=window)
    assert grants(tracker) == expected
    assert not tracker.try_retry()  # still refused, and refusals are not counted
    assert not tracker.try_retry()


def test_ratio_alone() -> None:
    clock = FakeClock()
    tracker = tracker_at(clock, ratio=0.2, floor=0.0)
    for _ in range(100):
        tracker.record_call()
    assert grants(tracker) == 20


def test_ratio_on_top_of_floor() -> None:
    clock = FakeClock()
    tracker = tracker_at(clock, ratio=0.2, floor=1.0, window=10.0)
    assert grants(tracker) == 10
    for _ in range(100):
        tracker.record_call()
    assert grants(tracker) == 20  # 100 calls at 0.2 allow 20 more
    for _ in range(4):
        tracker.record_call()
    assert grants(tracker) == 1  # 104 calls: 30.8 allowed, 30 taken, one more
    tracker.record_call()
    assert grants(tracker) == 0  # 105 calls: 31 allowed, 31 taken
    for _ in range(5):
        tracker.record_call()
    assert grants(tracker) == 1  # 110 calls: 32 allowed


def test_ratio_above_one() -> None:
    clock = FakeClock()
    tracker = tracker_at(clock, ratio=1.5, floor=0.0)
    for _ in range(10):
        tracker.record_call()
    assert grants(tracker) == 15


def test_fractional_allowance_grants_while_below_it() -> None:
    clock = FakeClock()
    tracker = tracker_at(clock, ratio=0.25, floor=0.0)
    tracker.record_call()  # 0.25 allowed: 0 taken < 0.25
    assert grants(tracker) == 1
    for _ in range(3):
        tracker.record_call()  # 1.0 allowed, 1 taken
    assert grants(tracker) == 0


@pytest.mark.parametrize("calls", [5, 10, 100, 1000, 12345])
@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.3, 0.7, 1.1])
def test_whole_allowances_are_exact(calls: int, ratio: float) -> None:
    # ratio * calls in floating point may land a hair above a whole number.
    clock = FakeClock()
    tracker = tracker_at(clock, ratio=ratio, floor=0.0)
    for _ in range(calls):
        tracker.record_call()
    expected = math.ceil(round(ratio * calls, 6))
    assert grants(tracker, limit=20_000) == expected


# --- ageing out ---------------------------------------------------------------------------


def test_budget_refills_after_the_window() -> None:
    clock = FakeClock(1000.0)
    tracker = tracker_at(clock, ratio=0.2, floor=1.0, window=10.0)
    assert grants(tracker) == 10
    clock.now += 5.0
    assert grants(tracker) == 0  # the retries are still in the window
    clock.now += 5.0
    assert grants(tracker) == 10  # and now they are not


def test_calls_and_retries_age_out_separately() -> None:
    clock = FakeClock(1000.0)
    tracker = tracker_at(clock, ratio=0.5, floor=0.0, window=10.0)
    for _ in range(20):
        tracker.record_call()
    clock.now = 1005.0
    for _ in range(10):
        tracker.record_call()
    assert grants(tracker) == 15  # 30 calls
    clock.now = 1010.0  # the first 20 calls are gone, the 15 retries are not
    assert grants(tracker) == 0
    for _ in range(10):
        tracker.record_call()
    assert grants(tracker) == 0  # 20 calls allow 10, 15 taken
    clock.now = 1015.0  # the 10 calls and 15 retries of 1005 are gone too
    assert grants(tracker) == 5  # the 10 calls of 1010 allow 5


def test_events_count_for_between_nine_tenths_and_one_window() -> None:
    window = 10.0
    for start in [1000.0, 1000.37, 1000.99, 1234.5678]:
        clock = FakeClock(start)
        tracker = tracker_at(clock, ratio=1.0, floor=0.0, window=window)
        for _ in range(4):
            tracker.record_call()
        assert tracker.try_retry()
        assert tracker.try_retry()
        clock.now = start + 0.9 * window - 1e-6
        assert grants(tracker) == 2, start  # 4 calls and 2 retries still count
        clock.now = start + window
        assert grants(tracker) == 0, start  # those are gone; the 2 retries just taken not
        for _ in range(5):
            tracker.record_call()
        assert grants(tracker) == 3, start


def test_a_long_gap_clears_everything() -> None:
    clock = FakeClock(1000.0)
    tracker = tracker_at(clock, ratio=1.0, floor=0.0, window=10.0)
    for _ in range(50):
        tracker.record_call()
    assert grants(tracker) == 50
    clock.now += 1e6
    tracker.record_call()
    assert grants(tracker) == 1


def test_steady_traffic_keeps_a_steady_budget() -> None:
    clock = FakeClock(1000.0)
    tracker = tracker_at(clock, ratio=0.1, floor=0.0, window=10.0)
    granted = 0
    for _ in range(300):  # 30 seconds, 100 calls a second, each wanting a retry
        for _ in range(10):
            tracker.record_call()
            granted += tracker.try_retry()
        clock.now += 0.1
    # 10% of the 3000 calls: each of the three 10-second spans allows 100 at most,
    # and as every call wants a retry, nearly all of that is taken.
    assert 290 <= granted <= 300


def test_clock_going_backwards_still_counts() -> None:
    clock = FakeClock(1000.0)
    tracker = tracker_at(clock, ratio=1.0, floor=0.0, window=10.0)
    tracker.record_call()
    clock.now = 990.0  # counts in the newest bucket, 1000
    tracker.record_call()
    assert grants(tracker) == 2
    clock.now = 1009.5  # bucket 1000 is still in the window
    assert grants(tracker) == 0
    tracker.record_call()
    assert grants(tracker) == 1  # 3 calls, 2 retries
    clock.now = 1010.0  # bucket 1000 is gone: 1 call and 1 retry left
    assert grants(tracker) == 0
    tracker.record_call()
    assert grants(tracker) == 1


def test_default_clock_is_monotonic() -> None:
    tracker = BudgetTracker(RetryBudget(ratio=0.2, min_retries_per_second=0.3, window=10.0))
    assert grants(tracker) == 3
    assert tracker.budget == RetryBudget(ratio=0.2, min_retries_per_second=0.3, window=10.0)


# --- against a model ----------------------------------------------------------------------


class Model:
    """Bucketed semantics spelled out: an event at `t` counts at `now` while
    ``now // width - t // width < 10``."""

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget
        self.width = budget.window / 10
        self.calls: list[float] = []
        self.retries: list[float] = []

    def count(self, events: list[float], now: float) -> int:
        tick = now // self.width
        return sum(1 for t in events if tick - t // self.width < 10)

    def try_retry(self, now: float) -> bool:
        allowed = (
            self.budget.min_retries_per_second * self.budget.window
            + self.budget.ratio * self.count(self.calls, now)
        )
        if self.count(self.retries, now) < allowed - 1e-9:
            self.retries.append(now)
            return True
        return False


@settings(max_examples=200, deadline=None)
@given(
    ratio=st.sampled_from([0.1, 0.25, 0.5, 1.0, 2.0]),
    floor=st.sampled_from([0.0, 0.1, 0.5]),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=30), st.booleans()),
        max_size=300,
    ),
)
def test_matches_bucket_model(ratio: float, floor: float, steps: list[tuple[int, bool]]) -> None:
    # Times are multiples of 0.25 and buckets 1 second wide: no rounding anywhere.
    budget = RetryBudget(ratio=ratio, min_retries_per_second=floor, window=10.0)
    clock = FakeClock(1000.0)
    tracker = BudgetTracker(budget, clock=clock)
    model = Model(budget)
    for quarters, is_call in steps:
        clock.now += quarters * 0.25
        if is_call:
            tracker.record_call()
            model.calls.append(clock.now)
        else:
            assert tracker.try_retry() == model.try_retry(clock.now)


# --- threads and memory -------------------------------------------------------------------


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads as often as possible, to give races a chance to show."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.usefixtures("fast_switching")
def test_threads_never_exceed_the_bound() -> None:
    threads_n, calls_each, tries_each = 8, 500, 400
    clock = FakeClock()
    tracker = tracker_at(clock, ratio=0.2, floor=1.0, window=10.0)
    barrier = threading.Barrier(threads_n)
    granted = [0] * threads_n

    def work(index: int) -> None:
        barrier.wait()
        for _ in range(calls_each):
            tracker.record_call()
        barrier.wait()  # every call is in: the budget is now exactly known
        for _ in range(tries_each):
            granted[index] += tracker.try_retry()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 10 from the floor + 0.2 * 4000 calls: exactly, no more (a race in try_retry)
    # and no fewer (a lost record_call increment).
    assert sum(granted) == 10 + 800


@pytest.mark.usefixtures("fast_switching")
def test_threads_interleaved_stay_within_bound() -> None:
    threads_n, rounds = 8, 2000
    clock = FakeClock()
    tracker = tracker_at(clock, ratio=0.2, floor=1.0, window=10.0)
    barrier = threading.Barrier(threads_n)
    granted = [0] * threads_n

    def work(index: int) -> None:
        barrier.wait()
        for i in range(rounds):
            tracker.record_call()
            if i % 2:
                granted[index] += tracker.try_retry()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bound = 10 + 0.2 * threads_n * rounds
    assert sum(granted) <= bound
    # Retries were asked for at 0.5 per call, more than the 0.2 supplied, so the
    # threads took most of it; what is left, plus what they took, is the bound exactly.
    assert sum(granted) >= 0.9 * bound
    assert sum(granted) + grants(tracker) == bound


def test_memory_is_bounded_whatever_the_rate() -> None:
    clock = FakeClock()
    tracker = tracker_at(clock)
    tracker.record_call()
    tracker.try_retry()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            tracker.record_call()
            if i % 1000 == 0:
                clock.now += 0.05
                tracker.try_retry()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # One timestamp per call would be megabytes; counters are a few small ints.
    assert grown < 16_384
