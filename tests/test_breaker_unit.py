"""Unit tests of the circuit breaker state machine (`opero._policies.breaker`), on a fake clock."""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
import tracemalloc
from dataclasses import FrozenInstanceError, dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import FakeClock, run_threads
from opero._policies.breaker import Breaker, BreakerSet, CircuitBreakerOptions
from opero.exceptions import CircuitOpenError, OperoError


def make(clock: FakeClock, **options: Any) -> Breaker:
    """A breaker named "svc" on `clock`; the failure rate is off unless asked for."""
    options.setdefault("failure_rate", None)
    return Breaker(CircuitBreakerOptions(**options), "svc", clock)


def attempt(breaker: Breaker, ok: bool) -> None:
    """One allowed attempt that succeeds or fails."""
    breaker.before()
    if ok:
        breaker.success()
    else:
        breaker.failure()


def retry_in(breaker: Breaker) -> float:
    """The `retry_in` of the `CircuitOpenError` that `before()` raises now."""
    with pytest.raises(CircuitOpenError) as caught:
        breaker.before()
    return caught.value.retry_in


def trip(breaker: Breaker) -> None:
    """Fail attempts until the breaker opens."""
    for _ in range(breaker.options.failure_threshold):
        attempt(breaker, ok=False)
    assert breaker.state == "open"


# --- options -----------------------------------------------------------------------


def test_default_options_are_valid() -> None:
    options = CircuitBreakerOptions()
    assert (options.failure_threshold, options.failure_rate, options.minimum_calls) == (5, 0.5, 10)
    assert (options.window, options.open_duration, options.backoff_factor) == (60.0, 5.0, 2.0)
    assert (options.max_open_duration, options.half_open_probes) == (300.0, 1)


@pytest.mark.parametrize(
    "options",
    [
        {"failure_threshold": 1, "minimum_calls": 1, "half_open_probes": 1},
        {"failure_rate": 1, "window": 1, "open_duration": 1, "max_open_duration": 1},
        {"failure_rate": None},
        {"failure_rate": 1e-9, "backoff_factor": 1},
        {"open_duration": 0.001, "max_open_duration": 0.001, "window": 1e-9},
    ],
)
def test_boundary_options_are_accepted(options: dict[str, Any]) -> None:
    built = CircuitBreakerOptions(**options)
    for field, value in options.items():
        assert getattr(built, field) == value


def test_options_are_frozen() -> None:
    options = CircuitBreakerOptions()
    with pytest.raises(FrozenInstanceError):
        options.window = 1.0  # type: ignore[misc]


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("failure_threshold", True, TypeError),
        ("failure_threshold", 5.0, TypeError),
        ("failure_threshold", "5", TypeError),
        ("failure_threshold", 0, ValueError),
        ("failure_threshold", -3, ValueError),
        ("failure_rate", True, TypeError),
        ("failure_rate", "0.5", TypeError),
        ("failure_rate", 0, ValueError),
        ("failure_rate", 0.0, ValueError),
        ("failure_rate", -0.5, ValueError),
        ("failure_rate", 1.5, ValueError),
        ("failure_rate", NAN, ValueError),
        ("failure_rate", INF, ValueError),
        ("minimum_calls", False, TypeError),
        ("minimum_calls", 10.0, TypeError),
        ("minimum_calls", None, TypeError),
        ("minimum_calls", 0, ValueError),
        ("window", True, TypeError),
        ("window", "60", TypeError),
        ("window", None, TypeError),
        ("window", 0, ValueError),
        ("window", -1.0, ValueError),
        ("window", NAN, ValueError),
        ("window", INF, ValueError),
        ("open_duration", True, TypeError),
        ("open_duration", None, TypeError),
        ("open_duration", 0.0, ValueError),
        ("open_duration", -5, ValueError),
        ("open_duration", NAN, ValueError),
        ("open_duration", INF, ValueError),
        ("backoff_factor", True, TypeError),
        ("backoff_factor", "2", TypeError),
        ("backoff_factor", 0.5, ValueError),
        ("backoff_factor", 0, ValueError),
        ("backoff_factor", NAN, ValueError),
        ("backoff_factor", INF, ValueError),
        ("max_open_duration", True, TypeError),
        ("max_open_duration", None, TypeError),
        ("max_open_duration", 4.999, ValueError),  # below open_duration (5.0)
        ("max_open_duration", 0, ValueError),
        ("max_open_duration", NAN, ValueError),
        ("max_open_duration", INF, ValueError),
        ("half_open_probes", True, TypeError),
        ("half_open_probes", 1.0, TypeError),
        ("half_open_probes", 0, ValueError),
        ("half_open_probes", -1, ValueError),
    ],
)
def test_invalid_option_is_refused(field: str, value: object, error: type[Exception]) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(error) as caught:
        CircuitBreakerOptions(**kwargs)
    assert type(caught.value) is error
    message = str(caught.value)
    assert message.startswith(f"CircuitBreakerOptions: {field} must be")
    assert message.endswith(f"got {value!r}")


# --- closed -> open ----------------------------------------------------------------


def test_opens_after_failure_threshold_consecutive_failures_and_not_before() -> None:
    breaker = make(FakeClock(), failure_threshold=3)
    for _ in range(2):
        attempt(breaker, ok=False)
        assert breaker.state == "closed"
        breaker.before()  # still lets calls through
        breaker.release()
    attempt(breaker, ok=False)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        breaker.before()


def test_a_success_resets_the_consecutive_failures() -> None:
    breaker = make(FakeClock(), failure_threshold=3)
    for ok in (False, False, True, False, False):
        attempt(breaker, ok)
    assert breaker.state == "closed"
    attempt(breaker, ok=False)
    assert breaker.state == "open"


def test_release_in_closed_state_changes_nothing() -> None:
    breaker = make(FakeClock(), failure_threshold=3)
    attempt(breaker, ok=False)
    attempt(breaker, ok=False)
    breaker.before()
    breaker.release()  # neither resets nor counts
    assert breaker.state == "closed"
    attempt(breaker, ok=False)
    assert breaker.state == "open"


def test_without_failure_rate_only_consecutive_failures_count() -> None:
    breaker = make(FakeClock(), failure_threshold=2, failure_rate=None, minimum_calls=1)
    for _ in range(100):  # 50% failures, never two in a row
        attempt(breaker, ok=False)
        attempt(breaker, ok=True)
    assert breaker.state == "closed"


def rate_breaker(clock: FakeClock, **options: Any) -> Breaker:
    settings = {"failure_threshold": 100, "failure_rate": 0.5, "minimum_calls": 4}
    settings.update(options)
    return make(clock, **settings)


def test_failure_rate_applies_only_once_minimum_calls_are_in_the_window() -> None:
    breaker = rate_breaker(FakeClock())
    for ok in (False, True, False):  # 2 of 3 failed, but only 3 calls
        attempt(breaker, ok)
        assert breaker.state == "closed"
    attempt(breaker, ok=False)  # 3 of 4
    assert breaker.state == "open"


def test_failure_rate_equal_to_the_threshold_opens() -> None:
    breaker = rate_breaker(FakeClock())
    for ok in (True, False, True):
        attempt(breaker, ok)
    attempt(breaker, ok=False)  # 2 of 4 == 0.5
    assert breaker.state == "open"


def test_failure_rate_below_the_threshold_stays_closed() -> None:
    breaker = rate_breaker(FakeClock())
    for _ in range(50):  # 1 of 3 fail
        for ok in (True, True, False):
            attempt(breaker, ok)
    assert breaker.state == "closed"


@pytest.mark.parametrize(
    ("advance", "expected"),
    [
        (0.0, "open"),
        (5.0, "open"),
        (9.5, "open"),
        (10.0, "closed"),
        (11.0, "closed"),
        (1e6, "closed"),
    ],
)
def test_old_calls_age_out_of_the_window(advance: float, expected: str) -> None:
    clock = FakeClock()
    breaker = rate_breaker(clock, window=10.0, minimum_calls=3)
    for ok in (False, False, True):  # 2 of 3, not yet judged: a success never trips
        attempt(breaker, ok)
    clock.now += advance
    for ok in (True, True, False):  # with the old calls 3 of 6 (open), alone 1 of 3
        attempt(breaker, ok)
    assert breaker.state == expected


def test_the_window_slides_bucket_by_bucket() -> None:
    clock = FakeClock()
    breaker = rate_breaker(clock, window=10.0, minimum_calls=4, failure_rate=0.75)
    attempt(breaker, ok=False)  # t=0: ages out at t=10
    clock.now += 4
    attempt(breaker, ok=False)  # t=4: ages out at t=14
    attempt(breaker, ok=True)
    clock.now += 7  # t=11: the first failure is gone, the second still counts
    attempt(breaker, ok=True)
    attempt(breaker, ok=False)  # 2 of 4 failed in the window (3 of 5 without aging)
    assert breaker.state == "closed"
    attempt(breaker, ok=False)  # 3 of 5
    attempt(breaker, ok=False)  # 4 of 6 (0.67)
    assert breaker.state == "closed"
    attempt(breaker, ok=False)  # 5 of 7 (0.71)
    attempt(breaker, ok=False)  # 6 of 8 == 0.75
    assert breaker.state == "open"


def test_the_window_memory_does_not_grow_with_the_call_rate() -> None:
    clock = FakeClock()
    breaker = rate_breaker(clock, window=60.0, minimum_calls=10**9)
    for _ in range(1000):  # warm up every bucket
        clock.now += 0.06
        attempt(breaker, ok=True)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for index in range(30_000):  # all within one window
            clock.now += 0.001
            attempt(breaker, ok=index % 3 != 0)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert breaker.state == "closed"
    assert after - before < 4096  # a timestamp per call would take hundreds of kB


# --- open -> half-open -> closed or open ---------------------------------------------


def test_open_refuses_with_the_time_left_to_retry() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, open_duration=5.0)
    attempt(breaker, ok=False)
    clock.now += 2.0
    with pytest.raises(CircuitOpenError) as caught:
        breaker.before()
    error = caught.value
    assert isinstance(error, OperoError)
    assert error.retry_in == pytest.approx(3.0)
    assert str(error) == "circuit breaker for svc is open; retry in 3.000s"
    assert breaker.state == "open"


def test_half_open_once_open_duration_has_passed() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, open_duration=5.0)
    attempt(breaker, ok=False)
    clock.now += 4.999
    assert breaker.state == "open"
    assert retry_in(breaker) == pytest.approx(0.001)
    clock.now += 0.001
    assert breaker.state == "half_open"
    breaker.before()  # the probe
    assert breaker.state == "half_open"


@pytest.mark.parametrize("probes", [1, 3])
def test_half_open_lets_exactly_half_open_probes_through(probes: int) -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, half_open_probes=probes)
    attempt(breaker, ok=False)
    clock.now += 5.0
    for _ in range(probes):
        breaker.before()
    for _ in range(3):
        assert retry_in(breaker) == 0.0
    assert breaker.state == "half_open"


def test_probe_successes_close_the_breaker() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2, half_open_probes=2)
    trip(breaker)
    clock.now += 5.0
    breaker.before()
    breaker.before()
    breaker.success()
    assert breaker.state == "half_open"  # one of two probes succeeded
    assert retry_in(breaker) == 0.0
    breaker.success()
    assert breaker.state == "closed"
    breaker.before()
    breaker.success()
    attempt(breaker, ok=False)  # the failure count starts afresh
    assert breaker.state == "closed"
    attempt(breaker, ok=False)
    assert breaker.state == "open"


def test_closing_forgets_the_failure_rate_window() -> None:
    clock = FakeClock()
    breaker = rate_breaker(clock, minimum_calls=4, open_duration=1.0)
    for ok in (True, False, True, False):
        attempt(breaker, ok)
    assert breaker.state == "open"
    clock.now += 1.0
    attempt(breaker, ok=True)
    assert breaker.state == "closed"
    for ok in (True, False):  # 1 of 2; with the old window it would be 3 of 6
        attempt(breaker, ok)
    assert breaker.state == "closed"
    for ok in (True, False):  # 2 of 4
        attempt(breaker, ok)
    assert breaker.state == "open"


def test_a_failed_probe_reopens_for_longer_up_to_the_ceiling() -> None:
    clock = FakeClock()
    breaker = make(
        clock, failure_threshold=1, open_duration=2.0, backoff_factor=3.0, max_open_duration=30.0
    )
    attempt(breaker, ok=False)
    durations = [retry_in(breaker)]
    for _ in range(4):
        clock.now += durations[-1]
        attempt(breaker, ok=False)  # the probe fails
        assert breaker.state == "open"
        durations.append(retry_in(breaker))
    assert durations == pytest.approx([2.0, 6.0, 18.0, 30.0, 30.0])


def test_a_huge_number_of_trips_stays_at_the_ceiling() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, backoff_factor=1e300, max_open_duration=60.0)
    attempt(breaker, ok=False)
    for _ in range(5):  # 5.0 * 1e300 ** 5 would overflow a float
        clock.now += 1e6
        attempt(breaker, ok=False)
    assert retry_in(breaker) == pytest.approx(60.0)


def test_after_closing_the_next_trip_lasts_open_duration_again() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, open_duration=2.0, backoff_factor=3.0)
    attempt(breaker, ok=False)
    clock.now += 2.0
    attempt(breaker, ok=False)
    assert retry_in(breaker) == pytest.approx(6.0)
    clock.now += 6.0
    attempt(breaker, ok=True)
    assert breaker.state == "closed"
    attempt(breaker, ok=False)
    assert retry_in(breaker) == pytest.approx(2.0)


def test_release_gives_the_probe_slot_back() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1)
    attempt(breaker, ok=False)
    clock.now += 5.0
    breaker.before()
    assert retry_in(breaker) == 0.0
    breaker.release()  # the probe was cancelled: another caller may probe
    assert breaker.state == "half_open"
    breaker.before()
    assert retry_in(breaker) == 0.0
    breaker.success()
    assert breaker.state == "closed"


def test_a_release_frees_no_slot_when_no_probe_is_in_flight() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, half_open_probes=2)
    breaker.before()  # allowed while closed, still running when the breaker opens
    attempt(breaker, ok=False)
    clock.now += 5.0
    attempt(breaker, ok=True)  # one of two probes succeeded; none is in flight
    breaker.release()  # the attempt from before the trip was cancelled
    breaker.before()  # the second probe
    assert retry_in(breaker) == 0.0  # and no third
    assert breaker.state == "half_open"
    breaker.success()
    assert breaker.state == "closed"


def test_outcomes_reported_while_open_are_ignored() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, open_duration=5.0)
    breaker.before()
    breaker.before()
    breaker.before()  # three attempts allowed while closed
    breaker.failure()  # trips
    clock.now += 1.0
    breaker.success()  # a late success does not close it
    breaker.failure()  # nor does a late failure re-open it for longer
    assert breaker.state == "open"
    assert retry_in(breaker) == pytest.approx(4.0)


def test_the_message_never_names_an_empty_breaker_oddly() -> None:
    breaker = Breaker(CircuitBreakerOptions(failure_threshold=1), clock=FakeClock())
    attempt(breaker, ok=False)
    with pytest.raises(CircuitOpenError, match=r"^circuit breaker for this call is open; retry"):
        breaker.before()


# --- BreakerSet ------------------------------------------------------------------------


def test_breaker_set_gives_one_breaker_per_key() -> None:
    clock = FakeClock()
    breakers = BreakerSet(CircuitBreakerOptions(failure_threshold=1), "svc", clock)
    first = breakers.get("key-a")
    assert breakers.get("".join(["key-", "a"])) is first  # equal, not identical
    assert breakers.get(("int", 1)) is breakers.get(("int", 1))
    other = breakers.get("key-b")
    assert other is not first
    assert breakers.get(None) is not first
    attempt(first, ok=False)  # each key has its own state
    assert first.state == "open"
    assert other.state == "closed"
    clock.now += 1.0
    with pytest.raises(CircuitOpenError, match="circuit breaker for svc is open") as caught:
        first.before()
    assert caught.value.retry_in == pytest.approx(4.0)  # on the set's clock


def test_breaker_set_creates_one_breaker_per_key_under_contention() -> None:
    breakers = BreakerSet(CircuitBreakerOptions(), "svc")
    barrier = threading.Barrier(8)
    seen: list[list[Breaker]] = [[] for _ in range(8)]

    def worker(slot: int) -> None:
        barrier.wait()
        seen[slot].extend(breakers.get(key) for key in range(200))

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for key in range(200):
        assert len({id(per_thread[key]) for per_thread in seen}) == 1
    assert len({id(breaker) for breaker in seen[0]}) == 200


# --- concurrency -----------------------------------------------------------------------


class TickClock:
    """A thread-safe clock that moves 0.1 ms forward each time it is read, and now and
    then lets another thread run, to interleave the methods that read it."""

    def __init__(self) -> None:
        self.ticks = itertools.count()
        self.offset = 0.0

    def __call__(self) -> float:
        tick = next(self.ticks)
        if tick % 3 == 0:
            time.sleep(0)
        return tick * 1e-4 + self.offset


def assert_consistent(breaker: Breaker) -> None:
    """The breaker's counters agree with each other (white-box: no update was lost)."""
    assert 0 <= breaker._probes_ok <= breaker._probes_started <= breaker.options.half_open_probes
    assert breaker._past_calls == sum(breaker._bucket_calls) - breaker._bucket_calls[breaker._index]
    assert breaker._past_failures == (
        sum(breaker._bucket_failures) - breaker._bucket_failures[breaker._index]
    )
    assert 0 <= breaker._failures <= breaker._calls
    assert 0 <= breaker._past_failures <= breaker._past_calls


def test_concurrent_callers_get_exactly_half_open_probes_slots() -> None:
    clock = TickClock()
    options = CircuitBreakerOptions(
        failure_threshold=1,
        failure_rate=None,
        open_duration=1.0,
        backoff_factor=1.0,
        max_open_duration=1.0,
        half_open_probes=2,
    )
    breaker = Breaker(options, "svc", clock)
    attempt(breaker, ok=False)
    barrier = threading.Barrier(8)
    admitted: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for round_number in range(30):
            barrier.wait()  # the main thread has set the stage: all ask at once
            try:
                breaker.before()
            except CircuitOpenError:
                pass
            else:
                with lock:
                    admitted[round_number] += 1
            barrier.wait()

    threads = [threading.Thread(target=worker) for _ in range(7)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(30):
            admitted.append(0)
            clock.offset += 10.0  # the open duration has passed: half-open
            barrier.wait()
            barrier.wait()  # every worker has asked once
            assert breaker.state == "half_open"
            breaker.failure()  # a probe failed: open again for the next round
    except BaseException:
        barrier.abort()  # let the workers out
        raise
    finally:
        for thread in threads:
            thread.join()
    assert admitted == [2] * 30


def test_threads_hammering_one_breaker() -> None:
    clock = TickClock()
    options = CircuitBreakerOptions(
        failure_threshold=4,
        failure_rate=0.5,
        minimum_calls=6,
        window=0.5,
        open_duration=0.01,
        backoff_factor=2.0,
        max_open_duration=0.05,
        half_open_probes=2,
    )
    breaker = Breaker(options, "svc", clock)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []
    admitted = [0] * 8
    refused = [0] * 8

    def worker(slot: int) -> None:
        rng = random.Random(slot)
        barrier.wait()
        for _ in range(2500):
            try:
                breaker.before()
            except CircuitOpenError as error:
                refused[slot] += 1
                if not 0 <= error.retry_in <= options.max_open_duration:
                    errors.append(AssertionError(f"retry_in {error.retry_in}"))
                continue
            except BaseException as error:
                errors.append(error)
                return
            admitted[slot] += 1
            roll = rng.random()
            try:
                if roll < 0.55:
                    breaker.success()
                elif roll < 0.95:
                    breaker.failure()
                else:
                    breaker.release()
            except BaseException as error:
                errors.append(error)
                return

    run_threads(worker, 8, switch_interval=1e-5)  # switch often, to interleave the methods

    assert errors == []
    assert sum(admitted) + sum(refused) == 8 * 2500
    assert sum(admitted) > 0
    assert sum(refused) > 0  # it did open
    assert breaker.state in {"closed", "open", "half_open"}
    assert_consistent(breaker)

    # Every attempt has ended, so no probe slot is held: the breaker still works.
    clock.offset += 1000.0  # past any open duration
    for _ in range(options.half_open_probes):  # close it, whatever state it was left in
        attempt(breaker, ok=True)
    assert breaker.state == "closed"
    trip(breaker)
    assert retry_in(breaker) > 0
    clock.offset += 1000.0
    for _ in range(options.half_open_probes):
        breaker.before()
    assert retry_in(breaker) == 0.0
    for _ in range(options.half_open_probes):
        breaker.success()
    assert breaker.state == "closed"
    assert_consistent(breaker)


# --- properties ------------------------------------------------------------------------

options_strategy = st.builds(
    lambda threshold, rate, minimum, window, duration, factor, ceiling, probes: (
        CircuitBreakerOptions(
            failure_threshold=threshold,
            failure_rate=rate,
            minimum_calls=minimum,
            window=window,
            open_duration=duration,
            backoff_factor=factor,
            max_open_duration=duration * ceiling,
            half_open_probes=probes,
        )
    ),
    st.integers(1, 4),
    st.none() | st.floats(0.2, 1.0),
    st.integers(1, 6),
    st.floats(0.5, 20.0),
    st.floats(0.5, 5.0),
    st.floats(1.0, 3.0),
    st.floats(1.0, 10.0),
    st.integers(1, 3),
)

# ("advance", seconds), ("begin", 0) or (outcome, which attempt in flight it ends).
event_strategy = st.one_of(
    st.tuples(st.just("advance"), st.floats(0.0, 30.0)),
    st.tuples(st.just("begin"), st.just(0)),
    st.tuples(st.sampled_from(["success", "failure"]), st.integers(0, 5)),
)
event_or_release_strategy = event_strategy | st.tuples(st.just("release"), st.integers(0, 5))


@dataclass
class Phase:
    """What one half-open phase let through, as seen from outside."""

    admitted: int = 0  # probes let through in this phase
    held: int = 0  # of those, the ones not released
    stale_outcomes: int = 0  # outcomes, in this phase, of attempts allowed before it
    stale_releases: int = 0  # of those, the releases


def try_before(breaker: Breaker) -> float | None:
    """None if `before()` lets the attempt through, else the refusal's `retry_in`."""
    try:
        breaker.before()
    except CircuitOpenError as error:
        return error.retry_in
    return None


def run_events(options: CircuitBreakerOptions, events: list[tuple[str, float]]) -> list[Phase]:
    """Drive a breaker through `events` (each outcome ends an attempt in flight),
    checking at each step that it never refuses while closed, always refuses while open,
    refuses while half-open only once its probes are taken, and never holds more than
    `half_open_probes` probe slots. Returns what each half-open phase let through."""
    clock = FakeClock()
    breaker = Breaker(options, "prop", clock)
    in_flight: list[Phase | None] = []  # the phase each attempt was allowed in
    phases: list[Phase] = []
    for kind, value in events:
        state = breaker.state
        phase = phases[-1] if state == "half_open" else None
        if kind == "advance":
            clock.now += value
        elif kind == "begin":
            refused_for = try_before(breaker)
            if refused_for is None:
                assert state != "open", "let through while open"
                if phase is not None:
                    phase.admitted += 1
                    phase.held += 1
                in_flight.append(phase)
            else:
                assert state != "closed", "refused while closed"
                assert 0.0 <= refused_for <= options.max_open_duration * (1 + 1e-9)  # rounding
                assert refused_for > 0.0 or phase is not None
                if phase is not None and phase.stale_outcomes == 0:
                    assert phase.held >= options.half_open_probes, "refused a free probe slot"
        elif in_flight:
            allowed_in = in_flight.pop(int(value) % len(in_flight))
            getattr(breaker, kind)()
            if phase is not None and allowed_in is not phase:
                phase.stale_outcomes += 1
                phase.stale_releases += kind == "release"
            elif phase is not None and kind == "release":
                phase.held -= 1
        new_state = breaker.state
        if new_state == "half_open" and state != "half_open":
            phases.append(Phase())  # a new half-open phase starts
        if phases:
            phase = phases[-1]
            assert phase.held <= options.half_open_probes + phase.stale_releases
        assert_consistent(breaker)
    return phases


@settings(max_examples=300, deadline=None)
@given(options=options_strategy, events=st.lists(event_strategy, max_size=120))
def test_property_probe_limit_and_no_refusal_while_closed(
    options: CircuitBreakerOptions, events: list[tuple[str, float]]
) -> None:
    for phase in run_events(options, events):
        assert phase.admitted <= options.half_open_probes


@settings(max_examples=300, deadline=None)
@given(options=options_strategy, events=st.lists(event_or_release_strategy, max_size=120))
def test_property_with_releases_probe_slots_stay_bounded(
    options: CircuitBreakerOptions, events: list[tuple[str, float]]
) -> None:
    # A release gives its slot back, so a phase may let more than half_open_probes
    # attempts through in all, but never holds more slots than that at once (except for
    # a slot handed back by an attempt allowed before the phase: the breaker counts
    # outcomes, it cannot tell whose they are).
    for phase in run_events(options, events):
        assert phase.held <= options.half_open_probes + phase.stale_releases
