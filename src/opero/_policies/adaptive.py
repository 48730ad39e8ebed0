"""Adaptive rate: a limit that finds the server's rate itself, and follows it.

The rate is a curve of the time since the last cut, as in TCP congestion control and
botocore's adaptive retry mode. Until the first throttling answer it doubles every
`DOUBLING` seconds from `SLOW_START` attempts a second (slow start); a throttling answer
(429, or 503 with Retry-After: see `opero._policies.backpressure`) records as ``w_max``
what the limit released in the second before the throttled attempt went (`released`:
the server's window was full, so that count is its quota; the rate of that moment is
several times it in slow start), and cuts to ``BETA * w_max`` from the end of the pause;
from there it grows again:

- CUBIC (the default): concave back toward ``w_max`` and convex past it, as in TCP CUBIC,
  but on time scales of its own rather than botocore's constant (C = 0.4 brings 40/s
  back in 2.2 s; every probe past the quota costs a pause of the server's Retry-After,
  and probing that often kept 70% of the quota on the scenario):
  ``w_max * (PLATEAU - (PLATEAU - BETA) * (1 - t/K)**3)`` for ``t < K``: flat under
  ``w_max`` for most of it, where the last throttling happened; then
  ``PLATEAU * w_max * (1 + ((t - K) / PROBE)**3)``: past it, slowly at first, twice it
  `PROBE` seconds later (a quota that was raised is found fast). ``K`` is `RECOVERY`
  once a cut found the rate the one before found, else `RECOVERY_SHORT`.
- AIMD: ``w_max * (BETA + AIMD_GROWTH * t)``: a straight line back, at 10% of ``w_max`` a
  second (additive in proportion to the rate, so it behaves the same at 5/s and 5000/s).

Never above the ceiling (`rate_limit=N`, or ``rate_limit_max`` with ``"auto"``), never
below `FLOOR`. The curve runs only while the limit is what holds callers back (someone has
a reservation ahead of now): an idle limit, or one callers cannot keep busy, does not grow,
so a quiet hour does not end in a burst. botocore caps its rate at twice the measured
sending rate instead, measured on every call.

The rate is a pure function of ``(w_max, t_cut, K, now)``: a limiter stores those, the time
of the next recomputation and a small ring of release counts with its schedule, in
whatever memory it is shared through; the success path costs one comparison and one
count, and a recomputation every `RETUNE` seconds while the rate moves (none once at the
ceiling).
"""

from __future__ import annotations

import math
from collections.abc import MutableSequence

CUBIC = "cubic"
AIMD = "aimd"
ALGORITHMS = (CUBIC, AIMD)
# The default, measured on benchmarks/scenario_http.py (see docs/guide/rate-limit.md).
DEFAULT_ALGORITHM = CUBIC

# A throttling answer cuts to BETA times what the last second released (see WINDOW):
# against a quota counted per second that count is the quota itself (the server's window
# was full), so the cut needs only a margin under it. Measured on the scenario (see
# docs/guide/rate-limit.md): a cycle of a cut, RECOVERY seconds back, a probe past the
# quota and the pause it earns keeps about (RECOVERY + 1) / (RECOVERY + 2 + pause) of it.
CUBIC_BETA = 0.93
# CUBIC levels off at PLATEAU * w_max, not at w_max: arrivals bunched by scheduling
# overflow a rolling window from about 99% of its quota (seen on the scenario).
PLATEAU = 0.97
# CUBIC: seconds from a cut to the plateau (K). Long once a cut confirmed the rate the
# one before found (within SAME): every probe past the quota costs a pause; short after
# slow start or a rate that moved, whose count may be off (workers still starting, the
# quota's change half seen), so the next probe checks it soon.
RECOVERY = 30.0
RECOVERY_SHORT = 3.0
SAME = 0.1
PROBE = 4.0  # CUBIC: past the plateau, seconds to twice it (+1.6% after 1 s, +12.5% after 2 s)
AIMD_BETA = 0.7
AIMD_GROWTH = 0.1  # AIMD: back from the cut at 10% of w_max a second (3 s to w_max)
SLOW_START = 5.0  # "auto": the first rate, attempts a second ...
DOUBLING = 0.25  # ... doubled every quarter second until the first throttling answer
FLOOR = 0.1  # cuts never go below one attempt in 10 s (unless the ceiling is lower)
RETUNE = 0.05  # how often the rate is recomputed while it moves, in seconds
# The rate recorded at a throttling answer is how many attempts were released in the
# second before the throttled one (quotas are mostly counted per second: the server's
# window was full, so that count is the quota), not the rate of that moment, which in
# slow start is several times it. The count is read from the release count sampled at
# each retune and at each pause's ends, in a ring covering a little over two seconds (an
# answer may come back late, from a busy worker process).
WINDOW = 1.0
RING = 48

# A limiter's adaptive state (a list, or a slice of shared memory): the curve's w_max,
# its origin t_cut, when to recompute it; releases counted by the limiter; the ring's
# next slot; the curve's recovery time; then RING pairs (time, release count).
W_MAX, T_CUT, RETUNE_AT, RELEASED, SLOT, K, SAMPLES = range(7)
STATE_SIZE = SAMPLES + 2 * RING


class Adaptation:
    """How one limit adapts: its ceiling and algorithm (plain values: it is pickled with
    a shared limiter into worker processes). The state lives with the limiter's schedule
    and is read and written under the limiter's lock."""

    __slots__ = ("algorithm", "ceiling", "floor", "found")

    def __init__(
        self, ceiling: float = math.inf, *, found: bool = False, algorithm: str | None = None
    ) -> None:
        self.ceiling = ceiling
        # `found`: a fixed rate_limit=N, which starts at its ceiling; else slow start.
        self.found = found
        self.algorithm = algorithm or DEFAULT_ALGORITHM
        self.floor = min(FLOOR, ceiling)

    def __getstate__(self) -> tuple[float, bool, str, float]:
        return self.ceiling, self.found, self.algorithm, self.floor

    def __setstate__(self, state: tuple[float, bool, str, float]) -> None:
        self.ceiling, self.found, self.algorithm, self.floor = state

    def initial_rate(self) -> float:
        return self.ceiling if self.found else min(SLOW_START, self.ceiling)

    def initial_state(self) -> list[float]:
        """At the ceiling with nothing to recompute, or slow start from the first take
        (t_cut is set by the first retune)."""
        ring = [math.inf, 0.0] * RING
        if self.found:
            return [self.ceiling, -math.inf, math.inf, 0.0, 0.0, RECOVERY_SHORT, *ring]
        return [0.0, math.nan, -math.inf, 0.0, 0.0, RECOVERY_SHORT, *ring]

    def retune(self, state: MutableSequence[float], now: float, binding: bool) -> float:
        """The rate now (call when ``now >= state[RETUNE_AT]``); moves the curve's origin
        on by the time since the last retune when the limit was not `binding`."""
        last = state[RETUNE_AT] - RETUNE
        if math.isnan(state[T_CUT]):
            state[T_CUT] = now
        elif not binding and math.isfinite(last):
            state[T_CUT] += now - last  # idle: the curve stands still
        self.sample(state, now)
        rate = self.rate_at(state[W_MAX], now - state[T_CUT], state[K])
        state[RETUNE_AT] = math.inf if rate >= self.ceiling else now + RETUNE
        return rate

    def sample(self, state: MutableSequence[float], now: float) -> None:
        """Record the release count at `now` in the ring."""
        slot = SAMPLES + 2 * int(state[SLOT])
        state[slot], state[slot + 1] = now, state[RELEASED]
        state[SLOT] = (state[SLOT] + 1) % RING

    def count_at(self, state: MutableSequence[float], at: float, now: float) -> float | None:
        """The release count at `at` (not after `now`), read between the two samples
        around it; None before the oldest sample."""
        before_at = before = after_at = after = math.nan
        for slot in range(SAMPLES, SAMPLES + 2 * RING, 2):
            sampled = state[slot]
            if sampled <= at:
                if not sampled <= before_at:  # the latest sample at or before (nan: none)
                    before_at, before = sampled, state[slot + 1]
            elif sampled <= now and not sampled >= after_at:  # the earliest after it
                after_at, after = sampled, state[slot + 1]
        if math.isnan(before_at):
            return None
        if math.isnan(after_at):
            after_at, after = now, state[RELEASED]
        if after_at <= before_at:
            return before
        return before + (after - before) * (at - before_at) / (after_at - before_at)

    def released(self, state: MutableSequence[float], now: float, at: float) -> float | None:
        """Attempts released in the `WINDOW` before `at` (the throttled attempt's
        release). Before the first sample (slow start's first second) the count since
        it, if it is at least ``WINDOW / 2`` old; else None (a fixed limit
        at its ceiling samples nothing)."""
        at = min(at, now)
        end = self.count_at(state, at, now)
        if end is None:
            return None
        begin = self.count_at(state, at - WINDOW, now)
        if begin is not None:
            return end - begin
        oldest = min(range(SAMPLES, SAMPLES + 2 * RING, 2), key=state.__getitem__)
        if at - state[oldest] < WINDOW / 2:
            return None
        return end - state[oldest + 1]

    def cut(self, state: MutableSequence[float], now: float, start: float, resume: float) -> bool:
        """A throttling answer, at `now`, to the attempt released at `start`: cut, with
        the curve starting at `resume` (the end of the pause, if any).
        An attempt released before the last cut was sent at the old rate: its answer
        says nothing about the new one, so it cuts nothing (one cut per round trip).
        Either way the attempt no longer counts as released: the count is of what the
        server took (retries answered 429 counted in it read a quota of 20/s as 24/s)."""
        state[RELEASED] -= 1
        if start < state[T_CUT]:
            return False
        before = state[W_MAX]
        rate = self.rate_at(before, now - state[T_CUT], state[K])
        released = self.released(state, now, start)
        # The count, not the curve: right after a cut the server's window still holds
        # what went before it, and min(rate, count) compounded cuts (17.7, 16.5, 15.3/s
        # against a quota of 20 under a Retry-After shorter than the window).
        state[W_MAX] = rate if released is None else max(self.floor, released)
        same = released is not None and before > 0 and abs(state[W_MAX] - before) <= SAME * before
        state[K] = RECOVERY if same else RECOVERY_SHORT
        state[T_CUT] = resume
        state[RETUNE_AT] = resume + RETUNE
        # Nothing is released from now until `resume`: samples at both ends let the next
        # cut count from the pause's end, not from the first retune after it (which
        # missed its first 50 ms of releases: 18/s read against a quota of 20/s).
        self.sample(state, now)
        self.sample(state, resume)
        return True

    def rate_at(self, w_max: float, since: float, recovery: float = RECOVERY) -> float:
        """The curve `since` seconds after the last cut (or the first take), bounded;
        CUBIC reaches its plateau `recovery` seconds after the cut."""
        since = max(0.0, since)
        if w_max <= 0.0:  # slow start; the exponent is bounded so it cannot overflow
            curve = SLOW_START * 2.0 ** min(since / DOUBLING, 60.0)
        elif self.algorithm == AIMD:
            curve = w_max * (AIMD_BETA + AIMD_GROWTH * since)
        elif since < recovery:
            curve = w_max * (PLATEAU - (PLATEAU - CUBIC_BETA) * (1.0 - since / recovery) ** 3)
        else:
            curve = w_max * PLATEAU * (1.0 + min((since - recovery) / PROBE, 1e3) ** 3)
        return float(min(self.ceiling, max(self.floor, curve)))
