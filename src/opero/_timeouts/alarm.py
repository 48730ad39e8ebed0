"""Sync attempt timeouts by SIGALRM, in a process opero owns (an @opmap worker): the
timer raises inside the running attempt, so the work really stops (a blocking
`time.sleep` or socket read too: the signal interrupts the system call, PEP 475 runs the
handler, its exception ends the call).

Only in @opmap workers, on their main thread (the only one Python runs signal handlers
on), never nested (one timer per process). The handler never raises inside opero's own
code (a nested opero call's cache, breaker, bulkhead or rate limit would be left half
updated): it fires again 1 ms later instead, so the timeout lands once that code has
returned to the attempt's.

Not on the application's main thread: there SIGALRM may be the host's (a watchdog
`alarm()`, pytest-timeout), and an exception raised in a finaliser is dropped by
Python, which would lose the timeout. Attempts there are handed to a helper thread.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from opero._utils import process_role

if TYPE_CHECKING:
    from opero._timeouts.attempt import AttemptTimeout

# Frames of code under this folder are opero's: the handler does not raise into them.
_OPERO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_RETRY_IN = 5e-05  # seconds: how soon the timer fires again when it landed in opero's code


class _AlarmFired(BaseException):
    """Raised by the SIGALRM handler inside the running attempt. A BaseException, so an
    ``except Exception`` in user code does not swallow it."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    _alarm.fire(frame)


def _inside_opero(frame: FrameType | None, boundary: Any) -> bool:
    """Whether `frame`, or a frame between it and the attempt's own (`boundary`, the
    code of `_Alarm.run`), is opero's code: a nested opero call is in progress."""
    while frame is not None and frame.f_code is not boundary:
        if frame.f_code.co_filename.startswith(_OPERO_DIR):
            return True
        frame = frame.f_back
    return False


class _Alarm:
    """Timeouts by `signal.setitimer` in a process opero owns (an @opmap worker)."""

    def __init__(self) -> None:
        self.enabled = False
        self.armed = False

    def enable(self) -> None:
        """Called once in each @opmap worker process, from its main thread."""
        if sys.platform == "win32":  # no SIGALRM: timeouts keep the thread hand-off
            return
        signal.signal(signal.SIGALRM, _on_alarm)
        self.enabled = True

    def usable(self) -> bool:
        # Only in an @opmap worker, not nested (one timer per process) and only on the
        # main thread, where the signal handler runs. Outside workers (the common case,
        # on every sync call with a deadline) the first test answers.
        if not process_role.POOL_WORKER or sys.platform == "win32" or self.armed:
            return False
        if threading.current_thread() is not threading.main_thread():
            return False
        if not self.enabled:  # enabled on first use (the module may load late)
            self.enable()
        return True

    def fire(self, frame: FrameType | None) -> None:
        if not self.armed:
            return
        if sys.platform != "win32" and _inside_opero(frame, _RUN_CODE):
            signal.setitimer(signal.ITIMER_REAL, _RETRY_IN)  # once it is back in user code
            return
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
            process_role.INTERRUPTED = True  # this worker leaves after its chunk
            raise step.error(limit) from None
        finally:
            self.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)


_RUN_CODE = _Alarm.run.__code__
_alarm = _Alarm()


def use_alarm() -> None:
    """Make sync attempt timeouts in this process use SIGALRM (an @opmap worker)."""
    _alarm.enable()
