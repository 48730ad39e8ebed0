"""Adaptive rate limits: rate_limit="auto" finds the server's rate, a fixed one is a
ceiling that throttling lowers for a while. The curves are pure functions of time, so
most tests give the time themselves; the limiters run on a fake clock."""

from __future__ import annotations

import math
import multiprocessing
import time
from typing import Any

import pytest

from helpers import FakeClock, Throttled, slow_down_limiter, throttled_first
from opero import opero, opmap
from opero._observe.events import EVENT_KINDS, Event
from opero._policies import adaptive, rate_limit, rate_limit_shared
from opero._policies.adaptive import AIMD, CUBIC, SLOW_START, Adaptation
from opero._policies.rate_limit import LocalRateLimiter, SharedRateLimiter

BETA = adaptive.CUBIC_BETA  # the default algorithm's cut

# --- the curves -----------------------------------------------------------------------


def test_slow_start_doubles_until_the_first_throttle() -> None:
    curve = Adaptation()
    assert curve.rate_at(0.0, 0.0) == SLOW_START
    assert curve.rate_at(0.0, adaptive.DOUBLING) == pytest.approx(2 * SLOW_START)
    assert curve.rate_at(0.0, 1e9) < math.inf  # bounded: no overflow after a long run


def test_cubic_cuts_to_beta_levels_off_under_the_rate_it_found_then_probes() -> None:
    curve = Adaptation(algorithm=CUBIC)
    long = adaptive.RECOVERY
    assert curve.rate_at(40.0, 0.0, long) == pytest.approx(BETA * 40)
    rising = [curve.rate_at(40.0, t / 10, long) for t in range(int(long * 10) + 1)]
    assert rising == sorted(rising)  # back up, and never past the plateau on the way
    assert rising[-1] == pytest.approx(adaptive.PLATEAU * 40)
    assert curve.rate_at(40.0, long / 2, long) > 0.96 * 40  # flat near it most of the time
    probe = [curve.rate_at(40.0, long + t / 10, long) for t in range(1, 41)]
    assert probe == sorted(probe)
    assert probe[-1] == pytest.approx(2 * adaptive.PLATEAU * 40)  # twice it PROBE s later
    assert probe[9] < 40.0 * 1.01  # ... but slowly at first
    short = adaptive.RECOVERY_SHORT
    assert curve.rate_at(40.0, short, short) == pytest.approx(adaptive.PLATEAU * 40)


def test_aimd_cuts_to_its_beta_and_climbs_straight_back() -> None:
    curve = Adaptation(algorithm=AIMD)
    assert curve.rate_at(40.0, 0.0) == pytest.approx(adaptive.AIMD_BETA * 40)
    back = curve.rate_at(40.0, 2.0)
    assert adaptive.AIMD_BETA * 40 < back <= 41.0  # most of the way back in 3 s, not beyond
    assert curve.rate_at(40.0, 30.0) > 40.0  # then it probes above again


def test_cubic_stays_near_the_last_throttled_rate_longer_than_aimd() -> None:
    """CUBIC's point: flat around w_max, where the last throttling happened."""
    cubic, aimd = Adaptation(algorithm=CUBIC), Adaptation(algorithm=AIMD)
    near = [t / 10 for t in range(100) if abs(cubic.rate_at(40.0, t / 10) - 40) < 2]
    near_aimd = [t / 10 for t in range(100) if abs(aimd.rate_at(40.0, t / 10) - 40) < 2]
    assert len(near) > 2 * len(near_aimd)


def test_never_above_the_ceiling_nor_below_the_floor() -> None:
    curve = Adaptation(25.0)
    assert curve.rate_at(0.0, 60.0) == 25.0
    assert curve.rate_at(1e-6, 0.0) == adaptive.FLOOR
    assert Adaptation(0.01).rate_at(1e-6, 0.0) == 0.01  # a ceiling under the floor wins


def run(curve: Adaptation, state: list[float], until: float, now: float = 0.0) -> float:
    """Callers always waiting, releases going at the curve's rate: retune every RETUNE s."""
    rate = curve.retune(state, now, binding=True)
    while now < until:
        now += adaptive.RETUNE
        state[adaptive.RELEASED] += rate * adaptive.RETUNE
        rate = curve.retune(state, now, binding=True)
    return now


def test_a_throttle_records_what_the_last_second_released_and_cuts_once_per_round() -> None:
    curve = Adaptation()
    state = curve.initial_state()
    now = run(curve, state, until=2.0)  # slow start: 5/s doubling every DOUBLING
    moment = curve.rate_at(0.0, now)
    assert curve.cut(state, now=now, start=now - 0.01, resume=now + 1.0)
    # What the second before held, well under the rate of the moment in slow start.
    assert 0.2 * moment < state[adaptive.W_MAX] < 0.5 * moment
    assert state[adaptive.T_CUT] == now + 1.0  # the curve starts again after the pause
    # An answer to an attempt sent before that cut says nothing about the new rate.
    assert not curve.cut(state, now=now + 0.1, start=now, resume=now + 0.1)


def send(curve: Adaptation, state: list[float], rate: float, start: float, end: float) -> float:
    """Releases at `rate` from `start` to `end`, sampled every RETUNE as retunes do."""
    now = start
    while now < end - 1e-9:
        state[adaptive.RELEASED] += rate * adaptive.RETUNE
        now += adaptive.RETUNE
        curve.sample(state, now)
    return now


def test_the_count_after_a_pause_starts_at_its_end() -> None:
    """A quota cut from 40/s to 20/s: the answer to the first attempt after the pause
    came once 20 had gone in 0.55 s; the count then is 20, not 18 (it used to start at
    the first retune after the pause, 50 ms of releases short)."""
    curve = Adaptation(algorithm=CUBIC)
    state = curve.initial_state()
    now = send(curve, state, 36.0, 0.0, 3.0) + 0.01
    assert curve.cut(state, now=now, start=now - 0.01, resume=now + 1.0)
    released = state[adaptive.RELEASED]
    resume = now + 1.0
    for tick in range(1, 12):  # 36/s for 0.55 s after the pause, retunes 50 ms apart
        state[adaptive.RELEASED] = released + 36.0 * 0.05 * tick
        if tick > 1:
            curve.sample(state, resume + 0.05 * tick)
    now = resume + 0.55
    assert curve.released(state, now, now) == pytest.approx(19.8)


def test_the_count_is_read_before_the_throttled_attempt_not_before_its_answer() -> None:
    """A busy worker process reads a 429 half a second late: the second before the
    attempt held the quota, the second before the answer far fewer."""
    curve = Adaptation(algorithm=CUBIC)
    state = curve.initial_state()
    curve.retune(state, 0.0, binding=True)
    now = send(curve, state, 40.0, 0.0, 2.0)
    now = send(curve, state, 4.0, now, now + 0.5)  # almost nothing sent meanwhile
    assert curve.released(state, now, now - 0.5) == pytest.approx(40.0)
    assert curve.released(state, now, now) == pytest.approx(22.0)
    assert curve.cut(state, now=now, start=now - 0.5, resume=now + 1.0)
    assert state[adaptive.W_MAX] == pytest.approx(40.0)


def test_a_cut_that_confirms_the_rate_recovers_slowly_one_that_moves_it_soon() -> None:
    """After slow start or a rate that moved, the next probe comes in RECOVERY_SHORT
    seconds (the count may be off); once a cut finds the same rate, in RECOVERY."""
    curve = Adaptation(algorithm=CUBIC)
    state = curve.initial_state()
    curve.retune(state, 0.0, binding=True)  # the first take starts slow start's clock
    now = send(curve, state, 40.0, 0.0, 2.0)
    assert curve.cut(state, now=now, start=now, resume=now + 1.0)  # from slow start
    assert state[adaptive.K] == adaptive.RECOVERY_SHORT
    now = send(curve, state, 41.0, now + 1.0, now + 8.0)
    assert curve.cut(state, now=now, start=now, resume=now + 1.0)  # the same quota
    assert state[adaptive.W_MAX] == pytest.approx(41.0)
    assert state[adaptive.K] == adaptive.RECOVERY
    now = send(curve, state, 20.0, now + 1.0, now + 4.0)
    assert curve.cut(state, now=now, start=now, resume=now + 1.0)  # the quota halved
    assert state[adaptive.W_MAX] == pytest.approx(20.0)
    assert state[adaptive.K] == adaptive.RECOVERY_SHORT


def test_a_cut_reads_the_count_not_the_curve_and_uncounts_what_was_throttled() -> None:
    """Right after a cut the server's window still holds what went before it: a
    second answer then records the count (the quota), not the cut rate under it, which
    compounded (17.7, 16.5, 15.3/s against 20/s); and answers 429 are not counted as
    taken (retries refused inside the window read 20/s as 24/s)."""
    curve = Adaptation(algorithm=CUBIC)
    state = curve.initial_state()
    curve.retune(state, 0.0, binding=True)
    now = send(curve, state, 20.0, 0.0, 2.0) + 0.01
    count = state[adaptive.RELEASED]
    assert curve.cut(state, now=now, start=now - 0.01, resume=now + 0.05)
    assert state[adaptive.RELEASED] == count - 1  # the throttled attempt is uncounted
    first = state[adaptive.W_MAX]
    # Retries and turns reserved before the cut keep the server's window full: refused.
    later = send(curve, state, 30.0, now + 0.05, now + 0.3) + 0.01
    cut_rate = curve.rate_at(first, later - (now + 0.05), state[adaptive.K])
    assert curve.cut(state, now=later, start=later - 0.01, resume=later + 0.05)
    assert state[adaptive.W_MAX] > cut_rate + 1  # the count, over the cut curve's rate
    count = state[adaptive.RELEASED]
    assert not curve.cut(state, now=later + 0.02, start=later - 0.02, resume=later + 0.05)
    assert state[adaptive.RELEASED] == count - 1  # each answer, cut or not


@pytest.mark.parametrize("make", [LocalRateLimiter, SharedRateLimiter])
def test_slow_start_grows_for_a_caller_that_comes_back_a_little_after_its_turn(
    make: Any, clock: FakeClock
) -> None:
    """A single caller, sequential, waking up and calling a little after each turn
    (scheduling): it still waits on the limit, so slow start doubles on."""
    curve = Adaptation()
    limiter = make(curve.initial_rate(), adaptation=curve)
    for _ in range(40):
        start = limiter.take()
        clock.now = start + 1.3 * limiter.interval  # back 30% of an interval late
        limiter.release()
    assert 1 / limiter.interval > 8 * SLOW_START


def test_a_fixed_limit_at_its_ceiling_records_its_rate() -> None:
    curve = Adaptation(40.0, found=True)
    state = curve.initial_state()
    assert curve.cut(state, now=10.0, start=9.9, resume=11.0)
    assert state[adaptive.W_MAX] == 40.0
    assert curve.rate_at(state[adaptive.W_MAX], 0.0) == pytest.approx(BETA * 40)


def test_an_idle_limit_does_not_grow() -> None:
    curve = Adaptation()
    state = curve.initial_state()
    first = curve.retune(state, 0.0, binding=True)
    for tick in range(1, 200):  # 10 s without anyone waiting
        idle = curve.retune(state, tick * adaptive.RETUNE, binding=False)
    assert idle == first
    assert curve.retune(state, 10.0 + adaptive.DOUBLING, binding=True) > first


def test_a_fixed_rate_starts_at_its_ceiling_and_is_not_recomputed() -> None:
    curve = Adaptation(30.0, found=True)
    assert curve.initial_rate() == 30.0
    assert curve.initial_state()[adaptive.RETUNE_AT] == math.inf


# --- the limiters, on a fake clock ------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    for module in (rate_limit, rate_limit_shared):
        monkeypatch.setattr(module, "time", fake)
    return fake


@pytest.mark.parametrize("make", [LocalRateLimiter, SharedRateLimiter])
def test_auto_grows_while_callers_wait_and_a_throttle_cuts_it(make: Any, clock: FakeClock) -> None:
    curve = Adaptation()
    limiter = make(curve.initial_rate(), adaptation=curve)
    assert limiter.interval == pytest.approx(1 / SLOW_START)
    for _ in range(40):  # two seconds of callers always waiting: slow start
        limiter.take()
        limiter.take()
        clock.now += adaptive.RETUNE
    grown = 1 / limiter.interval
    assert grown > 8 * SLOW_START
    assert limiter.moving
    cut = limiter.slow_down(clock.now)
    assert cut is not None
    assert cut < grown
    assert 1 / limiter.interval == pytest.approx(cut)
    assert limiter.slow_down(clock.now - 1.0) is None  # sent before the cut


@pytest.mark.parametrize("make", [LocalRateLimiter, SharedRateLimiter])
def test_a_cut_stretches_the_schedule_ahead_but_not_the_pause(make: Any, clock: FakeClock) -> None:
    limiter = make(10.0, adaptation=Adaptation(10.0, found=True))
    starts = [limiter.take() for _ in range(5)]  # 0.0, 0.1, ... 0.4 s ahead
    assert starts[-1] == pytest.approx(clock.now + 0.4)
    limiter.pause(1.0)
    limiter.slow_down(clock.now)
    assert 1 / limiter.interval == pytest.approx(10 * BETA)
    # The pause moved the next start to its end; the cut changes what follows it.
    assert limiter.take() == pytest.approx(clock.now + 1.0)
    assert limiter.take() == pytest.approx(clock.now + 1.0 + 1 / (10 * BETA))


@pytest.mark.parametrize("make", [LocalRateLimiter, SharedRateLimiter])
def test_a_fixed_limit_recovers_to_its_ceiling_and_stops_moving(
    make: Any, clock: FakeClock
) -> None:
    limiter = make(20.0, adaptation=Adaptation(20.0, found=True))
    assert not limiter.moving
    limiter.slow_down(clock.now)
    assert limiter.moving
    for _ in range(400):  # 20 s, callers waiting
        limiter.take()
        clock.now += adaptive.RETUNE
    assert limiter.interval == pytest.approx(1 / 20)
    assert not limiter.moving


def test_a_limiter_without_adaptation_is_never_cut(clock: FakeClock) -> None:
    limiter = LocalRateLimiter(20.0)
    assert limiter.slow_down(clock.now) is None
    assert not limiter.moving


def test_a_cut_in_one_process_slows_the_others() -> None:
    context = multiprocessing.get_context("spawn")
    limiter = SharedRateLimiter(100.0, context, Adaptation(100.0, found=True))
    out = context.Queue()
    child = context.Process(target=slow_down_limiter, args=(limiter, out))
    child.start()
    cut = out.get(timeout=60)
    child.join(timeout=60)
    assert cut == pytest.approx(100 * BETA)
    assert limiter.interval == pytest.approx(1 / cut)


def test_a_cut_through_redis_slows_every_process_on_the_key(redis_env: str) -> None:
    from opero._policies.rate_limit_redis import RedisRateLimiter

    here, elsewhere = (
        RedisRateLimiter(100.0, "opero:t:adapt", adaptation=Adaptation(100.0, found=True))
        for _ in range(2)
    )
    here.take()
    elsewhere.take()
    assert elsewhere.interval == pytest.approx(1 / 100)
    assert not elsewhere.moving
    cut = here.slow_down(time.monotonic())
    assert cut == pytest.approx(100 * BETA, rel=0.01)  # nothing released yet: its rate
    assert here.slow_down(time.monotonic() - 1.0) is None  # sent before the cut
    elsewhere.take()  # the take step brings the curve along
    assert 1 / elsewhere.interval == pytest.approx(100 * BETA, rel=0.01)
    assert elsewhere.moving


def test_a_redis_cut_that_confirms_the_rate_recovers_slowly_one_that_moves_it_soon(
    redis_env: str,
) -> None:
    from opero._policies.rate_limit_redis import RedisRateLimiter

    key = "opero:t:adapt-k"
    limiter = RedisRateLimiter(100.0, key, adaptation=Adaptation(100.0, found=True))
    client = limiter._client
    client.delete(f"{key}:curve", f"{key}:n")
    limiter.take()

    def cut_after(count: int) -> None:
        """`count` releases a second for the last two seconds of Redis's clock (the
        current second's share so far), then a cut."""
        second, micros = client.time()
        now = {second: round(count * micros / 1e6), second - 1: count}
        client.hset(f"{key}:n", mapping=now)
        time.sleep(0.01)  # after the last cut's origin
        assert limiter.slow_down(time.monotonic()) is not None

    cut_after(40)  # 100/s was a guess: the count moved it
    assert float(client.hget(f"{key}:curve", "w")) == pytest.approx(40, abs=2)
    assert float(client.hget(f"{key}:curve", "k")) == adaptive.RECOVERY_SHORT
    cut_after(41)  # the same quota again
    assert float(client.hget(f"{key}:curve", "k")) == adaptive.RECOVERY
    limiter.take()  # the take step hands the curve's recovery to the rate
    assert 1 / limiter.interval < adaptive.PLATEAU * 41  # not at its plateau 3 s on
    cut_after(20)
    assert float(client.hget(f"{key}:curve", "k")) == adaptive.RECOVERY_SHORT


def test_auto_over_redis_grows_from_slow_start(redis_env: str) -> None:
    @opero(cache=False, rate_limit="auto", rate_limit_backend="redis", rate_limit_key="opero:t:a")
    def call(i: int) -> int:
        return i

    assert [call(i) for i in range(6)] == list(range(6))
    limiter = call.__opero_rate_limit__.limiter  # type: ignore[attr-defined]
    assert 1 / limiter.interval > SLOW_START


# --- through the decorator --------------------------------------------------------------


def test_a_throttle_cuts_a_fixed_limit_and_reports_the_rate() -> None:
    seen: list[Event] = []
    calls: list[float] = []

    @opero(cache=False, rate_limit=1000, retries=1, min_delay=0, on_event=seen.append)
    def call() -> int:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise Throttled(429, retry_after=0.01)
        return len(calls)

    assert call() == 2
    changes = [event.rate for event in seen if event.kind == "rate_limit_changed"]
    assert changes
    assert changes[-1] == pytest.approx(1000 * BETA, rel=0.05)
    assert calls[1] - calls[0] >= 0.01  # the pause held too


def test_stats_count_the_pauses_and_keep_the_rate_last_reported() -> None:
    calls: list[float] = []

    @opero(cache=False, rate_limit=1000, retries=1, min_delay=0, stats=True)
    def call() -> int:
        calls.append(time.monotonic())
        if len(calls) in (1, 3):
            raise Throttled(429, retry_after=0.01)
        return len(calls)

    assert call.stats().rate_limit_rate is None  # a fixed limit reports once it moved
    assert call() == 2
    assert call() == 4
    stats = call.stats()
    assert stats.rate_limit_pauses == 2
    assert stats.rate_limit_rate is not None
    assert stats.rate_limit_rate < 1000  # cut, and not back at the ceiling yet
    assert stats.rate_limit_rate == pytest.approx(1 / call_limiter(call).interval, rel=0.05)
    call.reset_stats()
    assert (call.stats().rate_limit_pauses, call.stats().rate_limit_rate) == (0, None)


def call_limiter(function: Any) -> Any:
    """The limiter behind a decorated function's rate-limit step."""
    return function.__opero_rate_limit__.limiter


def test_process_map_stats_count_the_pauses_in_the_workers() -> None:
    mapped = opmap(
        mode="process",
        workers=2,
        rate_limit=200,
        retries=2,
        min_delay=0,
        stats=True,
        cache=False,
        progress=False,
        return_exceptions=True,
    )(throttled_first)
    results = mapped(range(6), 0.01)
    assert isinstance(results[0], Throttled)  # item 0 is answered 429 every time
    stats = mapped.stats()
    assert stats.rate_limit_pauses == 3  # its three attempts, each in a worker
    assert stats.rate_limit_rate is not None
    assert stats.rate_limit_rate < 200


def test_backpressure_off_keeps_a_fixed_rate() -> None:
    @opero(cache=False, rate_limit=1000, retries=0, rate_limit_backpressure=False)
    def call() -> None:
        raise Throttled(429, retry_after=0.01)

    with pytest.raises(Throttled):
        call()
    assert call.__opero_rate_limit__.limiter.interval == 1 / 1000  # type: ignore[attr-defined]


async def test_auto_works_for_async_functions() -> None:
    @opero(cache=False, rate_limit="auto", rate_limit_max=50)
    async def call(i: int) -> int:
        return i

    assert [await call(i) for i in range(3)] == [0, 1, 2]
    limiter = call.__opero_rate_limit__.limiter  # type: ignore[attr-defined]
    assert limiter.adaptation.ceiling == 50


def test_the_event_kind_is_known() -> None:
    assert "rate_limit_changed" in EVENT_KINDS
    assert Event("rate_limit_changed", "f", "-", rate=5.0).rate == 5.0


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"rate_limit": "fast"}, TypeError, r"rate_limit must be a number .*'auto'.*'fast'"),
        ({"rate_limit_max": 10}, ValueError, r"rate_limit_max \(10\) is the ceiling of"),
        ({"rate_limit": 5, "rate_limit_max": 10}, ValueError, "rate_limit_max"),
        ({"rate_limit": "auto", "rate_limit_max": 0}, ValueError, "rate_limit_max must be"),
        ({"rate_limit": "auto", "rate_limit_max": "10"}, TypeError, "rate_limit_max must be"),
        (
            {"rate_limit": "auto", "rate_limit_backpressure": False},
            ValueError,
            "rate_limit='auto' finds the rate",
        ),
    ],
)
def test_adaptive_options_are_checked_at_decoration(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        opero(**options)


# --- bursts -------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [LocalRateLimiter, SharedRateLimiter])
def test_a_burst_of_n_goes_at_once_then_releases_are_spaced(make: Any, clock: FakeClock) -> None:
    limiter = make(10.0, burst=3)
    starts = [limiter.take() for _ in range(5)]
    assert starts == pytest.approx([clock.now] * 3 + [clock.now + 0.1, clock.now + 0.2])
    assert [limiter.release() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.release() == pytest.approx(0.1)
    clock.now += 10.0  # idle: the bucket fills again, to 3 and no more
    assert [limiter.release() for _ in range(4)] == pytest.approx([0.0, 0.0, 0.0, 0.1])


@pytest.mark.parametrize("make", [LocalRateLimiter, SharedRateLimiter])
def test_a_pause_holds_a_burst_too_and_the_bucket_is_full_after_it(
    make: Any, clock: FakeClock
) -> None:
    limiter = make(10.0, burst=3)
    limiter.pause(1.0)
    assert limiter.take() == pytest.approx(clock.now + 1.0)
    assert limiter.release() == pytest.approx(1.0)
    clock.now += 1.0
    assert [limiter.release() for _ in range(4)] == pytest.approx([0.0, 0.0, 0.0, 0.1])


@pytest.mark.parametrize("adaptive_limit", [False, True])
def test_a_redis_burst_of_n_goes_at_once_then_releases_are_spaced_and_a_pause_holds_it(
    redis_env: str, adaptive_limit: bool
) -> None:
    from opero._policies.rate_limit_redis import RedisRateLimiter

    key = f"opero:t:burst-{adaptive_limit}"
    curve = Adaptation(10.0, found=True) if adaptive_limit else None
    limiter = RedisRateLimiter(10.0, key, adaptation=curve, burst=3)
    limiter._client.delete(key, f"{key}:last", f"{key}:paused", f"{key}:curve", f"{key}:n")
    now = time.monotonic()
    starts = [limiter.take() - now for _ in range(5)]
    assert starts[:3] == pytest.approx([0.0] * 3, abs=0.03)
    assert starts[3:] == pytest.approx([0.1, 0.2], abs=0.03)
    assert [limiter.release() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.release() == pytest.approx(0.1, abs=0.03)
    time.sleep(0.35)  # the bucket refills, to 3 and no more
    waits = [limiter.release() for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(0.1, abs=0.03)
    assert limiter.pause(0.3)
    now = time.monotonic()
    assert limiter.take() - now >= 0.27  # no early turn inside the pause
    assert limiter.release() >= 0.27


def test_redis_burst_through_the_decorator(redis_env: str) -> None:
    starts: list[float] = []

    @opero(cache=False, rate_limit=5, rate_limit_burst=4, rate_limit_backend="redis")
    def call() -> None:
        starts.append(time.monotonic())

    for _ in range(5):
        call()
    assert starts[3] - starts[0] < 0.1  # 4 at once, though 5/s spaces them 0.2 s
    assert starts[4] - starts[0] >= 0.15  # then the rate


def test_burst_through_the_decorator() -> None:
    starts: list[float] = []

    @opero(cache=False, rate_limit=5, rate_limit_burst=4)
    def call() -> None:
        starts.append(time.monotonic())

    for _ in range(4):
        call()
    assert starts[-1] - starts[0] < 0.1  # 4 at once, though 5/s spaces them 0.2 s


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"rate_limit": 5, "rate_limit_burst": 0}, ValueError, "rate_limit_burst must be >= 1"),
        ({"rate_limit": 5, "rate_limit_burst": 2.5}, TypeError, "rate_limit_burst must be an int"),
        ({"rate_limit_burst": 3}, ValueError, r"rate_limit_burst \(3\) needs a rate_limit"),
    ],
)
def test_burst_options_are_checked_at_decoration(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        opero(**options)
