"""`CircuitBreakerOptions`: when a breaker opens, for how long, and how it probes."""

from __future__ import annotations

import math
from dataclasses import dataclass


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(field: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"CircuitBreakerOptions: {field} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"CircuitBreakerOptions: {field} must be >= 1, got {value!r}")


def _check_number(field: str, value: object, *, low: float, low_inclusive: bool) -> float:
    if not _is_number(value):
        raise TypeError(f"CircuitBreakerOptions: {field} must be a number, got {value!r}")
    assert isinstance(value, int | float)
    number = float(value)
    in_range = number >= low if low_inclusive else number > low
    if not math.isfinite(number) or not in_range:
        relation = ">=" if low_inclusive else ">"
        raise ValueError(
            f"CircuitBreakerOptions: {field} must be a finite number {relation} {low:g}, "
            f"got {value!r}"
        )
    return number


@dataclass(frozen=True, slots=True)
class CircuitBreakerOptions:
    """When a `Breaker` opens, for how long, and how it probes before closing.

    Every field is checked on construction: a value of the wrong type (``True`` is not
    a number here) raises `TypeError`, a value out of range, NaN or infinite raises
    `ValueError`; the message names the field and the value.
    """

    failure_threshold: int = 5
    """Consecutive failures that open the breaker (>= 1)."""
    failure_rate: float | None = 0.5
    """Open when failures / calls over the window reaches this (0 < x <= 1); None: off."""
    minimum_calls: int = 10
    """`failure_rate` applies only once the window holds at least this many calls (>= 1)."""
    window: float = 60.0
    """Seconds covered by the sliding window of `failure_rate` (> 0, finite)."""
    open_duration: float = 5.0
    """Seconds the first trip stays open (> 0, finite)."""
    backoff_factor: float = 2.0
    """Each consecutive trip multiplies the open duration by this (>= 1, finite)."""
    max_open_duration: float = 300.0
    """Ceiling of the open duration (>= open_duration, finite)."""
    half_open_probes: int = 1
    """Calls let through while half-open; all must succeed to close (>= 1)."""

    def __post_init__(self) -> None:
        _check_int("failure_threshold", self.failure_threshold)
        rate = self.failure_rate
        if rate is not None:
            if not _is_number(rate):
                raise TypeError(
                    f"CircuitBreakerOptions: failure_rate must be a number or None, got {rate!r}"
                )
            if not 0 < rate <= 1:  # also refuses NaN
                raise ValueError(
                    "CircuitBreakerOptions: failure_rate must be a number in (0, 1] or None, "
                    f"got {rate!r}"
                )
        _check_int("minimum_calls", self.minimum_calls)
        _check_number("window", self.window, low=0, low_inclusive=False)
        open_duration = _check_number(
            "open_duration", self.open_duration, low=0, low_inclusive=False
        )
        _check_number("backoff_factor", self.backoff_factor, low=1, low_inclusive=True)
        max_open_duration = _check_number(
            "max_open_duration", self.max_open_duration, low=0, low_inclusive=False
        )
        if max_open_duration < open_duration:
            raise ValueError(
                "CircuitBreakerOptions: max_open_duration must be >= open_duration "
                f"({self.open_duration!r}), got {self.max_open_duration!r}"
            )
        _check_int("half_open_probes", self.half_open_probes)
