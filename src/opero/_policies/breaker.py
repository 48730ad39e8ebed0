"""Circuit breaker: stop calling a function that keeps failing, then probe it again.

A `Breaker` is a small state machine with three states:

``closed``
    Calls go through. Each outcome is counted. The breaker *trips* (becomes ``open``)
    when `failure_threshold` calls in a row have failed, or when the failure rate over
    the sliding `window` reaches `failure_rate` once the window holds at least
    `minimum_calls` calls.
``open``
    Calls are refused at once with `CircuitOpenError`, whose `.retry_in` says how many
    seconds remain. After the open duration has passed the breaker is ``half_open``.
``half_open``
    Up to `half_open_probes` calls (*probes*) are let through; every other caller is
    refused. When all probes have succeeded the breaker closes again and forgets its
    history. A single failed probe re-opens it.

The open duration grows with each consecutive trip, that is each re-open from
``half_open`` without a close in between: the n-th consecutive trip (n = 0 for the
first) stays open for ``min(open_duration * backoff_factor ** n, max_open_duration)``
seconds. Closing resets it, so the next trip after a close lasts `open_duration` again.

The sliding window is memory-bounded whatever the call rate: it is kept as 10 time
buckets of ``window / 10`` seconds, each holding only a count of calls and of failures,
and a bucket's counts are dropped as it ages out. The rate therefore covers the last
`window` seconds at a granularity of a tenth of it.

The breaker only ever sees outcomes, never the call's arguments or results, so it
cannot log or keep any of them. It is thread- and task-safe: a `threading.Lock` is held
only for a few arithmetic steps inside its methods, never while the protected call runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

from opero._policies.breaker_options import CircuitBreakerOptions
from opero.exceptions import CircuitOpenError

__all__ = ["Breaker", "BreakerSet", "CircuitBreakerOptions"]

_BUCKETS = 10

# Internal states; `Breaker.state` reports them as strings.
_CLOSED = 0
_OPEN = 1
_HALF_OPEN = 2
# `Breaker.state_code` of a closed breaker: the guard asks only breakers that are not.
CLOSED = _CLOSED


class Breaker:
    """One breaker state machine (see the module docstring for its states).

    Call `before()` before each attempt (it raises `CircuitOpenError` to refuse it),
    then exactly one of `success()`, `failure()` or `release()` once the attempt ends.
    Outcomes are counted, not matched to their attempt: one reported while the breaker
    is open is ignored, and one reported while half-open counts as a probe's whenever a
    probe is in flight, even if its attempt was allowed before this half-open phase.

    Thread- and task-safe: a `threading.Lock` is held only inside these methods, never
    during the protected call.
    """

    __slots__ = (
        "_bucket_calls",
        "_bucket_failures",
        "_calls",
        "_clock",
        "_consecutive",
        "_epoch",
        "_factor",
        "_failures",
        "_index",
        "_label",
        "_lock",
        "_max_duration",
        "_minimum_calls",
        "_next_duration",
        "_open_duration",
        "_opened_until",
        "_past_calls",
        "_past_failures",
        "_probes",
        "_probes_ok",
        "_probes_started",
        "_rate",
        "_threshold",
        "_width",
        "listener",
        "name",
        "options",
        "state_code",
    )

    def __init__(
        self,
        options: CircuitBreakerOptions,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.name = name
        # Told each state change ("open", "half_open", "closed"), outside the lock.
        self.listener: Callable[[str], None] | None = None
        self._label = name or "this call"
        self._clock = clock
        self._lock = threading.Lock()
        self._threshold = options.failure_threshold
        self._rate = None if options.failure_rate is None else float(options.failure_rate)
        self._minimum_calls = options.minimum_calls
        # Buckets of at least a microsecond keep time // width an exact float (and finite).
        self._width = max(float(options.window) / _BUCKETS, 1e-6)
        self._open_duration = float(options.open_duration)
        self._factor = float(options.backoff_factor)
        self._max_duration = float(options.max_open_duration)
        self._probes = options.half_open_probes
        self.state_code = _CLOSED
        self._consecutive = 0
        self._next_duration = self._open_duration  # duration of the next trip
        self._opened_until = 0.0
        self._probes_started = 0
        self._probes_ok = 0
        # The sliding window. The newest bucket's counts are in `_calls` and `_failures`
        # (cheaper to bump than a list item); the older buckets' are in the two lists,
        # at (newest's index - age) % _BUCKETS, with their sums in `_past_*`.
        self._bucket_calls = [0] * _BUCKETS
        self._bucket_failures = [0] * _BUCKETS
        self._past_calls = self._past_failures = 0
        self._calls = self._failures = 0
        # The newest bucket's number (time // width; a float, as int() is slow on the hot
        # path) and its index in the lists.
        self._epoch = 0.0
        self._index = 0
        if self._rate is not None:
            self._reset_window(clock() // self._width)

    def __repr__(self) -> str:
        return f"<Breaker {self.name!r} {self.state}>"

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``.

        An open breaker whose open duration has passed reports ``"half_open"``: the next
        `before()` lets a probe through.
        """
        state = self.state_code
        if state == _CLOSED:
            return "closed"
        if state == _OPEN and self._clock() < self._opened_until:
            return "open"
        return "half_open"

    def before(self) -> None:
        """Ask to make one attempt; return to allow it, raise `CircuitOpenError` to refuse.

        Closed: allow. Open: refuse, with `.retry_in` the seconds left, until the open
        duration has passed; then become half-open. Half-open: allow at most
        `half_open_probes` probes in this phase and refuse the rest (``retry_in=0.0``).
        An allowed attempt must be followed by `success()`, `failure()` or `release()`.
        """
        if self.state_code == _CLOSED:  # an attribute read is atomic: no lock needed
            return
        half_opened = False
        with self._lock:
            state = self.state_code
            if state == _CLOSED:
                return
            if state == _OPEN:
                retry_in = self._opened_until - self._clock()
                if retry_in > 0:
                    message = f"circuit breaker for {self._label} is open; retry in {retry_in:.3f}s"
                    raise CircuitOpenError(message, retry_in=retry_in)
                self.state_code = _HALF_OPEN
                self._probes_started = 0
                self._probes_ok = 0
                half_opened = True
            allowed = self._probes_started < self._probes
            if allowed:
                self._probes_started += 1
        if half_opened and self.listener is not None:
            self.listener("half_open")
        if allowed:
            return
        raise CircuitOpenError(
            f"circuit breaker for {self._label} is half-open and its probe calls are taken",
            retry_in=0.0,
        )

    def success(self) -> None:
        """Report that the allowed attempt succeeded.

        Closed: resets the consecutive-failure count. Half-open: counts a successful
        probe; once `half_open_probes` have succeeded, closes the breaker and forgets
        its history, so the next trip lasts `open_duration` again.
        """
        if self.state_code == _CLOSED:
            if self._rate is None:
                self._consecutive = 0  # a single store: atomic, no lock needed
                return
            now = self._clock()
            if now // self._width == self._epoch:
                # The common case, without the lock: two threads succeeding at once may
                # count one success instead of two (which errs towards opening, never
                # towards staying closed); failures are always counted under the lock.
                self._consecutive = 0
                self._calls += 1
                return
        else:
            now = self._clock()
        closed = False
        lock = self._lock
        lock.acquire()  # cheaper than `with` on this hot path; try/finally is free
        try:
            state = self.state_code
            if state == _CLOSED:
                self._consecutive = 0
                epoch = now // self._width
                if epoch > self._epoch:
                    self._advance(epoch)
                self._calls += 1
            elif state == _HALF_OPEN and self._probes_ok < self._probes_started:
                self._probes_ok += 1
                if self._probes_ok >= self._probes:
                    self._close(now)
                    closed = True
            # Open: an attempt allowed before the trip ended late; its outcome is moot.
        finally:
            lock.release()
        if closed and self.listener is not None:
            self.listener("closed")

    def failure(self) -> None:
        """Report that the allowed attempt failed.

        Closed: counts it, and trips the breaker open when `failure_threshold` attempts
        in a row failed or the window's failure rate reached `failure_rate` (once it
        holds `minimum_calls` calls). Half-open: re-opens the breaker for a longer time.
        """
        now = self._clock()
        tripped = False
        lock = self._lock
        lock.acquire()
        try:
            state = self.state_code
            if state == _CLOSED:
                consecutive = self._consecutive = self._consecutive + 1
                rate = self._rate
                if consecutive >= self._threshold:
                    self._trip(now)
                    tripped = True
                elif rate is not None:
                    epoch = now // self._width
                    if epoch > self._epoch:
                        self._advance(epoch)
                    self._calls += 1
                    self._failures += 1
                    calls = self._past_calls + self._calls
                    failures = self._past_failures + self._failures
                    if calls >= self._minimum_calls and failures / calls >= rate:
                        self._trip(now)
                        tripped = True
            elif state == _HALF_OPEN and self._probes_started > 0:
                self._trip(now)
                tripped = True
        finally:
            lock.release()
        if tripped and self.listener is not None:
            self.listener("open")

    def release(self) -> None:
        """Report that the allowed attempt was neither a success nor a failure.

        For example it was cancelled or raised a `BaseException`. Half-open: gives the
        probe slot back so another caller may probe. Closed: does nothing.
        """
        if self.state_code != _HALF_OPEN:  # an attribute read is atomic: no lock needed
            return
        with self._lock:
            if self.state_code == _HALF_OPEN and self._probes_started > self._probes_ok:
                self._probes_started -= 1

    # Internals; called with the lock held.

    def _advance(self, epoch: float) -> None:
        """Move the window forward to end at bucket `epoch` (> the current one), dropping
        the buckets that aged out. A clock that went back never moves it: calls are then
        counted in the newest bucket."""
        steps = epoch - self._epoch
        if steps >= _BUCKETS:  # every bucket aged out
            self._reset_window(epoch)
            return
        calls, failures = self._bucket_calls, self._bucket_failures
        index = self._index
        # The newest bucket becomes a past one...
        calls[index], failures[index] = self._calls, self._failures
        self._past_calls += self._calls
        self._past_failures += self._failures
        self._calls = self._failures = 0
        # ...and each step forward drops the oldest one, whose slot the next step reuses.
        for _ in range(int(steps)):
            index = (index + 1) % _BUCKETS
            self._past_calls -= calls[index]
            self._past_failures -= failures[index]
            calls[index] = failures[index] = 0
        self._epoch = epoch
        self._index = index

    def _trip(self, now: float) -> None:
        duration = self._next_duration
        self._next_duration = min(duration * self._factor, self._max_duration)
        self._opened_until = now + duration
        self.state_code = _OPEN
        self._consecutive = 0

    def _close(self, now: float) -> None:
        self.state_code = _CLOSED
        self._consecutive = 0
        self._next_duration = self._open_duration
        self._probes_started = self._probes_ok = 0
        if self._rate is not None:
            self._reset_window(now // self._width)

    def _reset_window(self, epoch: float) -> None:
        """Empty the window, its newest bucket being number `epoch`."""
        for index in range(_BUCKETS):
            self._bucket_calls[index] = self._bucket_failures[index] = 0
        self._past_calls = self._past_failures = 0
        self._calls = self._failures = 0
        self._epoch = epoch
        self._index = int(epoch % _BUCKETS)


class BreakerSet:
    """One `Breaker` per key (for example per fallback value), created on first use.

    Keys are only hashed and compared, never logged: a key may be a secret such as an
    API key. Every breaker shares the set's options, name and clock; setting `clock`
    (a test's fake clock) sets it on every breaker of the set, made or to be made.
    """

    __slots__ = ("_breakers", "_clock", "_lock", "listener", "name", "options")

    def __init__(
        self,
        options: CircuitBreakerOptions,
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._breakers: dict[Hashable, Breaker] = {}
        self.listener: Callable[[str], None] | None = None  # given to each breaker

    @property
    def clock(self) -> Callable[[], float]:
        """The clock of every breaker in the set (`time.monotonic` unless replaced)."""
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        with self._lock:
            self._clock = clock
            for breaker in self._breakers.values():
                breaker._clock = clock

    def get(self, key: Hashable) -> Breaker:
        """The breaker of `key`; equal keys get the same one. Thread-safe."""
        breaker = self._breakers.get(key)  # fast path: a dict lookup is atomic
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(key)
                if breaker is None:
                    breaker = Breaker(self.options, self.name, self._clock)
                    breaker.listener = self.listener
                    self._breakers[key] = breaker
        return breaker

    def __len__(self) -> int:
        """How many breakers have been created."""
        return len(self._breakers)
