"""Sync attempt timeouts by SIGALRM, on the main thread: the timer raises inside the
running attempt, so the work really stops (a blocking `time.sleep` or socket read too:
the signal interrupts the system call, PEP 475 runs the handler, its exception ends the
call), and the success path costs two `setitimer` calls instead of a thread hand-off.

Used where it cannot disturb anyone: on the main thread (the only one Python runs signal
handlers on), never nested (one timer per process), and only while SIGALRM is opero's
(installed once when it was the default, SIG_DFL, with no timer pending) or in an @opmap
worker, which opero owns. A host that installs its own SIGALRM handler (pytest-timeout's
signal method, for one) keeps it: opero then hands the attempt to a helper thread, as in
every other thread.
"""

from __future__ import annotations

# The C module under `signal`: its getsignal returns the raw handler in 0.05 us, where
# `signal.getsignal` converts it to an enum member first (2.8 us here, on every call).
import _signal
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opero._utils import process_role

if TYPE_CHECKING:
    from opero._timeouts.attempt import AttemptTimeout


class _AlarmFired(BaseException):
    """Raised by the SIGALRM handler inside the running attempt. A BaseException, so an
    ``except Exception`` in user code does not swallow it."""


def _on_alarm(signum: int, frame: object) -> None:
    # A module-level function, so `signal.getsignal` can tell it is ours (a bound
    # method is a new object at every access).
    _alarm.fire()


class _Alarm:
    """Attempt timeouts by `signal.setitimer`, where SIGALRM is free to take."""

    def __init__(self) -> None:
        self.enabled = False
        self.armed = False

    def enable(self) -> None:
        """Take SIGALRM (an @opmap worker at start, or the first use on a main thread
        whose SIGALRM was free). Main thread only: `signal.signal` refuses others."""
        if sys.platform == "win32":  # no SIGALRM: timeouts keep the thread hand-off
            return
        signal.signal(signal.SIGALRM, _on_alarm)
        self.enabled = True

    def usable(self) -> bool:
        """Whether this attempt can run under the timer: on the main thread, not nested,
        and SIGALRM ours (or free to take: default action, no timer pending)."""
        if sys.platform == "win32" or self.armed:
            return False
        if threading.current_thread() is not threading.main_thread():
            return False
        handler = _signal.getsignal(signal.SIGALRM)
        if handler is _on_alarm:
            return True
        if process_role.POOL_WORKER or (
            handler == signal.SIG_DFL and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        ):
            self.enable()
            return True
        return False  # the host's: leave it alone

    def fire(self) -> None:
        if self.armed:
            self.armed = False
            raise _AlarmFired

    def run(
        self,
        step: AttemptTimeout,
        limit: float,
        func: Callable[..., Any],
        args: Any,
        kwargs: Any,
    ) -> Any:
        if sys.platform == "win32":  # never `usable` there
            raise AssertionError("SIGALRM timeouts need a POSIX system")
        try:
            self.armed = True
            _signal.setitimer(signal.ITIMER_REAL, limit)  # may fire at once: inside the try
            return func(*args, **kwargs)
        except _AlarmFired:
            raise step.error(limit) from None
        finally:
            self.armed = False
            _signal.setitimer(signal.ITIMER_REAL, 0)


_alarm = _Alarm()


def use_alarm() -> None:
    """Make sync attempt timeouts in this process use SIGALRM (an @opmap worker)."""
    _alarm.enable()
