"""Sync attempt timeouts by SIGALRM, in a process opero owns (an @opmap worker): the
timer raises inside the running code, so the work really stops."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opero._utils import process_role

if TYPE_CHECKING:
    pass


if TYPE_CHECKING:
    from opero._timeouts.attempt import AttemptTimeout

# --- sync attempts in @opmap worker processes: SIGALRM ----------------------------------


class _AlarmFired(BaseException):
    """Raised by the SIGALRM handler inside the running attempt. A BaseException, so an
    ``except Exception`` in user code does not swallow it."""


class _Alarm:
    """Timeouts by `signal.setitimer` in a process opero owns (an @opmap worker)."""

    def __init__(self) -> None:
        self.enabled = False
        self.armed = False

    def enable(self) -> None:
        """Called once in each @opmap worker process, from its main thread."""
        if sys.platform == "win32":  # no SIGALRM: timeouts keep the thread hand-off
            return
        signal.signal(signal.SIGALRM, self._fire)
        self.enabled = True

    def usable(self) -> bool:
        # Only in an @opmap worker, not nested (one timer per process) and only on the
        # main thread, where the signal handler runs. Outside workers (the common case,
        # on every sync call with a deadline) the first test answers.
        if not self.enabled:
            if sys.platform == "win32":  # no SIGALRM: the thread hand-off
                return False
            # Enabled on first use in an @opmap worker (the module may be imported
            # there only when an item decorates a function with a timeout).
            if not process_role.POOL_WORKER:
                return False
            if threading.current_thread() is not threading.main_thread():
                return False
            self.enable()
        elif threading.current_thread() is not threading.main_thread():
            return False
        return not self.armed

    def _fire(self, signum: int, frame: object) -> None:
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
            signal.setitimer(signal.ITIMER_REAL, limit)  # may fire at once: inside the try
            return func(*args, **kwargs)
        except _AlarmFired:
            raise step.error(limit) from None
        finally:
            self.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)


_alarm = _Alarm()


def use_alarm() -> None:
    """Make sync attempt timeouts in this process use SIGALRM (in @opmap workers only)."""
    _alarm.enable()
