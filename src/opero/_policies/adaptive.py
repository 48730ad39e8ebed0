"""Adaptive rate: a limit that finds the server's rate itself, and follows it.

The rate is a curve of the time since the last cut, as in TCP congestion control and
botocore's adaptive retry mode. Until the first throttling answer it doubles every
`DOUBLING` seconds from `SLOW_START` attempts a second (slow start); a throttling answer
(429, or 503 with Retry-After: see `opero._policies.backpressure`) records as ``w_max``
what the limit released in the second before (`released`: a full window is the quota;
the rate of that moment is several times it in slow start), and cuts to ``BETA * w_max``
from the end of the pause; from there it grows again:

- CUBIC (the default): ``w_max + C * (t - K)**3`` with ``K = cbrt(w_max * (1 - BETA) / C)``:
  fast back toward ``w_max``, flat around it (where the last throttling happened), and
  probing faster again only past it. botocore's C = 0.4; BETA 0.9 (see `CUBIC_BETA`).
- AIMD: ``w_max * (BETA + AIMD_GROWTH * t)``: a straight line back, at 10% of ``w_max`` a
  second (additive in proportion to the rate, so it behaves the same at 5/s and 5000/s).

Never above the ceiling (`rate_limit=N`, or ``rate_limit_max`` with ``"auto"``), never
below `FLOOR`. The curve runs only while the limit is what holds callers back (someone has
a reservation ahead of now): an idle limit, or one callers cannot keep busy, does not grow,
so a quiet hour does not end in a burst. botocore caps its rate at twice the measured
sending rate instead, measured on every call.

The rate is a pure function of ``(w_max, t_cut, now)``: a limiter stores those, the time
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
# that count is already at most the quota, so the cut is milder than botocore's 0.7 of
# its sending rate; on the scenario 0.9 kept 70% of the quota against 67% with 0.7, with
# the same three throttling answers (CUBIC; AIMD did best with 0.7).
CUBIC_BETA = 0.9
AIMD_BETA = 0.7
CUBIC_C = 0.4  # botocore's scaling constant: K is 2.2 s at 40/s, 6.3 s at 1000/s
AIMD_GROWTH = 0.1  # AIMD: back from the cut at 10% of w_max a second (3 s to w_max)
SLOW_START = 5.0  # "auto": the first rate, attempts a second ...
DOUBLING = 0.25  # ... doubled every quarter second until the first throttling answer
FLOOR = 0.1  # cuts never go below one attempt in 10 s (unless the ceiling is lower)
RETUNE = 0.05  # how often the rate is recomputed while it moves, in seconds
# The rate recorded at a throttling answer is how many attempts were released in the
# second before it (quotas are mostly counted per second: a full window is the quota),
# not the rate of that moment, which in slow start is several times that. The count is
# read from the release count sampled at each retune, in a ring covering that second.
WINDOW = 1.0
RING = 21  # samples: one per retune over WINDOW, and one more

# A limiter's adaptive state (a list, or a slice of shared memory): the curve's w_max,
# its origin t_cut, when to recompute it; releases counted by the limiter; the ring's
# next slot, then RING pairs (time, release count).
W_MAX, T_CUT, RETUNE_AT, RELEASED, SLOT, SAMPLES = range(6)
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
            return [self.ceiling, -math.inf, math.inf, 0.0, 0.0, *ring]
        return [0.0, math.nan, -math.inf, 0.0, 0.0, *ring]

    def retune(self, state: MutableSequence[float], now: float, binding: bool) -> float:
        """The rate now (call when ``now >= state[RETUNE_AT]``); moves the curve's origin
        on by the time since the last retune when the limit was not `binding`."""
        last = state[RETUNE_AT] - RETUNE
        if math.isnan(state[T_CUT]):
            state[T_CUT] = now
        elif not binding and math.isfinite(last):
            state[T_CUT] += now - last  # idle: the curve stands still
        self.sample(state, now)
        rate = self.rate_at(state[W_MAX], now - state[T_CUT])
        state[RETUNE_AT] = math.inf if rate >= self.ceiling else now + RETUNE
        return rate

    def sample(self, state: MutableSequence[float], now: float) -> None:
        """Record the release count at `now` in the ring."""
        slot = SAMPLES + 2 * int(state[SLOT])
        state[slot], state[slot + 1] = now, state[RELEASED]
        state[SLOT] = (state[SLOT] + 1) % RING

    def released(self, state: MutableSequence[float], now: float) -> float | None:
        """Attempts released in about the last `WINDOW`, per `WINDOW`; None without a
        sample that old (a fixed limit at its ceiling samples nothing)."""
        oldest = None
        for slot in range(SAMPLES, SAMPLES + 2 * RING, 2):
            at = state[slot]
            if now - WINDOW <= at <= now and (oldest is None or at < state[oldest]):
                oldest = slot
        if oldest is None or now - state[oldest] < WINDOW / 2:
            return None
        return (state[RELEASED] - state[oldest + 1]) / WINDOW

    def cut(self, state: MutableSequence[float], now: float, start: float, resume: float) -> bool:
        """A throttling answer, at `now`, to the attempt released at `start`: cut, with
        the curve starting at `resume` (the end of the pause, if any).
        An attempt released before the last cut was sent at the old rate: its answer
        says nothing about the new one, so it cuts nothing (one cut per round trip)."""
        if start < state[T_CUT]:
            return False
        rate = self.rate_at(state[W_MAX], now - state[T_CUT])
        released = self.released(state, now)
        state[W_MAX] = rate if released is None else max(self.floor, min(rate, released))
        state[T_CUT] = resume
        state[RETUNE_AT] = resume + RETUNE
        return True

    def rate_at(self, w_max: float, since: float) -> float:
        """The curve `since` seconds after the last cut (or the first take), bounded."""
        since = max(0.0, since)
        if w_max <= 0.0:  # slow start; the exponent is bounded so it cannot overflow
            curve = SLOW_START * 2.0 ** min(since / DOUBLING, 60.0)
        elif self.algorithm == AIMD:
            curve = w_max * (AIMD_BETA + AIMD_GROWTH * since)
        else:
            k = (w_max * (1.0 - CUBIC_BETA) / CUBIC_C) ** (1.0 / 3.0)
            curve = w_max + CUBIC_C * min(since - k, 1e5) ** 3
        return float(min(self.ceiling, max(self.floor, curve)))
