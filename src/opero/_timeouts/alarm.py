"""Sync attempt timeouts in the caller's own thread, by SIGALRM (`timeout_mode="interrupt"`,
and always in @opmap process workers): the timer raises inside the running attempt, so
the work really stops (a blocking `time.sleep` or socket read too: the signal interrupts
the system call, PEP 475 runs the handler, its exception ends the call), and a healthy
call costs a few `setitimer` calls instead of a thread hand-off.

Where: on the main thread only (the one thread Python runs signal handlers on), and only
while SIGALRM is free: its handler the default one (or ours, in an @opmap worker, which
opero owns) and no timer pending. Both are checked on every outermost timed attempt, so
a host that sets its own handler or timer (a watchdog `alarm()`, pytest-timeout's signal
method) keeps them, and the attempt is handed to a helper thread (`threads`) instead:
`run` answers a `_HandOff` naming why. The handler goes in when the outermost attempt
starts and the previous disposition comes back when it ends, unless the attempt put a
handler of its own in meanwhile (that one stays); a timer opero finds that is not its
own (its timers carry the interval `_MARK`) is put back, never cancelled.

What the handler does when the timer fires, never raising where it would do harm:

- it raises only where `frames.must_wait` allows (not into opero's own frames, a
  `__del__`, or the stdlib code that holds locks: see there); elsewhere it fires again a
  little later (every 50 us, after 5 ms every 1 ms), once that code has returned;
- after raising it fires again every 1 ms until the attempt has ended: an exception
  raised in a finaliser (a weakref callback) is dropped by Python, and user code may
  swallow it (`except BaseException`); while it is on its way out (handled in an
  `except` or `finally` clause, or the context of an exception that cleanup handles
  itself) it is not raised again;
- nested timed attempts (an opero function with `timeout=` called inside another's
  attempt) share the one timer: a stack of deadlines, the timer set for the earliest.
  The exception names the attempt whose deadline passed (the outermost one that did),
  and only that attempt turns it into its `AttemptTimeoutError`; inner ones let it
  through untouched (a `BaseException`: their retries and fallbacks do not take it);
- a SIGALRM that cannot be ours (no deadline of ours passed, no timer of ours fired)
  gets what the disposition we replaced would have done: the default action.

An attempt that returns or raises (an `Exception`) after its deadline passed without the
timeout having landed (it waited in code it must not raise into and returned straight
after, such as a nested opero call without a timeout; or the signal never came: SIGALRM
blocked, taken by a `sigwait()` thread, or by a handler the attempt set) raises the
timeout then: its result is dropped (an exception it raised is kept as the timeout's
`__cause__`), as the hand-off would have raised at the deadline. So does an attempt that
wraps the cut in an error of its own (`except BaseException as e: raise RuntimeError
from e`). The healthy path pays nothing for that: the `setitimer` that cancels the
timer tells whether it fired.
"""

from __future__ import annotations

import _signal
import os
import signal
import sys
import threading
import time
from _thread import get_ident
from collections.abc import Callable
from time import monotonic as _monotonic
from types import FrameType
from typing import TYPE_CHECKING, Any

from opero._timeouts.frames import must_wait
from opero._utils import process_role

# Bound once: the outermost attempt's path runs on every healthy call. `_signal` is the
# C module under `signal`: its getsignal returns the raw handler in 0.02 us, where
# `signal.getsignal` converts it to an enum member first (2.8 us here).
_getsignal, _setsignal = _signal.getsignal, _signal.signal
if sys.platform != "win32":
    _setitimer = signal.setitimer
    _SIGALRM, _REAL = signal.SIGALRM, signal.ITIMER_REAL
    _sigpending = signal.sigpending
else:  # no SIGALRM: never called there (every path checks the platform first)
    _SIGALRM = _REAL = 0

    def _setitimer(which: int, seconds: float, interval: float = 0.0) -> tuple[float, float]:
        raise NotImplementedError("no SIGALRM on Windows")

    def _sigpending() -> set[int]:
        raise NotImplementedError("no SIGALRM on Windows")


if TYPE_CHECKING:
    from opero._timeouts.attempt import AttemptTimeout

_WAIT_FIRST = 5e-05  # seconds: the re-fire when the signal landed where it must wait
_SHORT_WAITS = 100  # then every `_REFIRE`: a long wait (a nested call's backoff) is not a storm
_REFIRE = 1e-03  # seconds: the re-fire after raising, and the longest wait
# The interval opero's timers carry (microseconds, as the kernel keeps it): it tells
# them from a host's. Never reached: the handler or the attempt's end re-arms first.
_MARK = 100_000_000.000_123
_SIG_DFL = 0  # `_signal.SIG_DFL`, as `_signal.getsignal` returns it
_NO_TIMER = (0.0, 0.0)  # what `setitimer` answers when no timer was pending


class _HandOff:
    """`_Alarm.run`'s answer when the attempt cannot run in place: why, for the log."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


_NOT_MAIN = _HandOff("not on the main thread (Python runs signal handlers there only)")
_NO_SIGNAL = _HandOff("SIGALRM is not available here (Windows, or a sub-interpreter)")
_HOSTS_HANDLER = _HandOff("SIGALRM has a handler that is not opero's (the host's)")
_HOSTS_TIMER = _HandOff("a SIGALRM timer that is not opero's is pending (the host's)")
_UNDELIVERED = _HandOff(
    "a timer signal of opero's was never delivered (SIGALRM blocked, or taken by sigwait)"
)


class _AlarmFired(BaseException):
    """Raised by the SIGALRM handler inside the running attempt. A BaseException, so an
    ``except Exception`` in user code, and opero's retries, do not take it."""

    def __init__(self, owner: list[float] | None = None) -> None:
        # `owner` optional: the timeout raised in its place keeps it as `__context__`,
        # and from an @opmap worker that travels back pickled (rebuilt without args).
        super().__init__()
        self.owner = owner  # the level (see `_Alarm.stack`) whose deadline passed


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    # A module-level function: `getsignal` then tells it is ours (a bound method is a
    # new object at every access).
    _alarm.fire(frame)


def _must_wait(frame: FrameType | None) -> bool:
    # A module-level name: tests replace it to show what raising anywhere would do.
    return must_wait(frame, _RUN_CODES)


def _on_its_way_out(owner: list[float]) -> bool:
    """Whether the timeout of `owner` is being handled (an `except` or `finally` it is
    passing through), directly or under an exception the cleanup there handles itself
    (its `__context__`): that cleanup is not cut again. Nor is a generator's cleanup
    while it is being closed (`GeneratorExit` handled)."""
    flying = sys.exception()
    for _ in range(64):  # a context chain is short; bounded all the same
        if flying is None:
            return False
        if isinstance(flying, _AlarmFired) and flying.owner is owner:
            return True
        if isinstance(flying, GeneratorExit):
            # A generator being closed (dropped while suspended: a finaliser, where
            # Python would drop the exception): its `finally` runs to the end first.
            return True
        flying = flying.__context__
    return False


class _Alarm:
    """The main thread's timed attempts and the one SIGALRM timer they share."""

    def __init__(self) -> None:
        # The running timed attempts, outermost first: each a one-item list (its
        # deadline, a `time.monotonic()` value) that the exception names as its owner.
        self.stack: list[list[float]] = []
        self.timer_at = 0.0  # when the timer last set fires
        self.unseen = False  # the timer last set may have fired: its signal not handled yet
        self.stale = False  # a signal of a timer since replaced may still come
        self.straggler = False  # kept the handler for a late signal (see `release`)
        self.waits = 0  # re-fires in a row that had to wait
        self.overdue = False  # a deadline passed while the handler had to wait
        self.previous: Any = _SIG_DFL  # the disposition to give back (ours: a worker)
        # True where SIGALRM cannot be taken (Windows; a sub-interpreter, where
        # `signal.signal` refuses), None until the first outermost attempt has checked.
        self.disabled: bool | None = True if sys.platform == "win32" else None
        self.main = threading.main_thread().ident

    def enable(self) -> None:
        """An @opmap worker, from its main thread: SIGALRM is opero's for good."""
        if sys.platform == "win32":  # no SIGALRM: timeouts keep the thread hand-off
            return
        _setsignal(_SIGALRM, _on_alarm)
        self.previous = _on_alarm
        self.disabled = False

    def free(self) -> bool:
        """SIGALRM's handler is the default or ours, and we may take it. A timer pending
        is checked apart: it is the host's (ours never is between attempts)."""
        if sys.platform == "win32":
            return False
        handler = _getsignal(_SIGALRM)
        if handler is not _on_alarm and process_role.POOL_WORKER:
            self.enable()  # an @opmap worker's: whatever it inherited from the parent
            return True
        if handler is not _on_alarm and (handler is None or handler != _SIG_DFL):
            return False  # the host's: leave it alone
        if self.disabled is None:
            try:  # the default disposition set again: only to learn whether we may
                _setsignal(_SIGALRM, handler)
            except ValueError:
                self.disabled = True
                return False
            self.disabled = False
        return True

    def run(  # noqa: PLR0912 - one frame on purpose: the healthy path's cost
        self,
        step: AttemptTimeout,
        limit: float,
        func: Callable[..., Any],
        args: Any,
        kwargs: Any,
    ) -> Any:
        """Run the attempt in place under the timer, or answer a `_HandOff` (another
        thread, SIGALRM not free). The outermost attempt's path, kept in one frame: a
        healthy call pays for it every time."""
        if sys.platform == "win32" or self.disabled or get_ident() != self.main:
            return self.refusal()
        stack = self.stack
        if stack:
            return self.nested(step, limit, func, args, kwargs)
        handler = _getsignal(_SIGALRM)
        unsure = handler is not _on_alarm and (handler != _SIG_DFL or self.disabled is None)
        # The host's handler (or we may not take it), or a signal of ours still to come.
        if (unsure and not self.free()) or self.straggler:
            return self.refusal()
        level = [_monotonic() + limit]
        before = _NO_TIMER
        try:
            if handler is not _on_alarm:
                self.previous = _on_alarm if process_role.POOL_WORKER else _SIG_DFL
                _setsignal(_SIGALRM, _on_alarm)
            self.stale = self.overdue = False
            self.waits = 0
            stack.append(level)
            # What it replaced tells whether a timer was pending (one syscall less than
            # asking first): the host's, since ours never is between attempts.
            before = _setitimer(_REAL, limit, _MARK)
            if before[0] != 0.0:  # it goes back (below), and the attempt is handed off
                return _HOSTS_TIMER
            self.timer_at = level[0]
            self.unseen = True
            result = func(*args, **kwargs)
        except _AlarmFired as exc:
            if exc.owner is level:
                raise step.error(limit) from None
            raise  # not one of ours (it cannot be): as it came
        except Exception as exc:
            # Raised after its deadline (where the timer could not land, or wrapping
            # the cut in an error of its own): the timeout, the error as its cause.
            if _monotonic() >= level[0]:
                raise step.error(limit) from exc
            raise
        finally:
            stack.clear()
            old = _setitimer(_REAL, 0) if before[0] == 0.0 else _setitimer(_REAL, *before)
            # Linux reloads a fired timer when its signal is taken: until then (blocked)
            # it reads 0 left, after that (handled, or sigwait'ed) about `_MARK`.
            pending = _MARK - 1e-03 < old[1] < _MARK + 1e-03 and 0.0 < old[0] <= limit + 1.0
            if pending:
                # Ours, not fired: cancelled before it could. Give SIGALRM back.
                previous = self.previous
                if previous is not _on_alarm and _getsignal(_SIGALRM) is _on_alarm:
                    _setsignal(_SIGALRM, previous)
            else:
                self.release(old)
        # Returned: on time, unless the timer fired unseen (or was replaced by the
        # attempt's own) or it had to wait and never got back into the attempt.
        if (not pending or self.overdue) and _monotonic() >= level[0]:
            raise step.error(limit)
        return result

    def refusal(self) -> _HandOff:
        """Why `run` hands the attempt off (off the healthy path: it asks again)."""
        if sys.platform == "win32" or self.disabled:
            return _NO_SIGNAL
        if get_ident() != self.main:
            return _NOT_MAIN
        if self.straggler:
            return _UNDELIVERED
        handler = _getsignal(_SIGALRM)
        if handler is not _on_alarm and handler != _SIG_DFL:
            return _HOSTS_HANDLER
        return _HOSTS_TIMER

    def nested(
        self,
        step: AttemptTimeout,
        limit: float,
        func: Callable[..., Any],
        args: Any,
        kwargs: Any,
    ) -> Any:
        """A timed attempt inside another on this thread: one more deadline on the
        stack, the timer set for it if it is the earliest."""
        stack = self.stack
        level = [time.monotonic() + limit]
        try:
            stack.append(level)
            if level[0] < self.timer_at:
                self.arm(limit, level[0])
            result = func(*args, **kwargs)
        except _AlarmFired as exc:
            if exc.owner is level:
                raise step.error(limit) from None
            raise  # an outer attempt's deadline: its own frame turns it into its error
        except Exception as exc:
            if time.monotonic() >= level[0]:  # raised after its deadline: as in `run`
                raise step.error(limit) from exc
            raise
        finally:
            if stack and stack[-1] is level:
                stack.pop()
            if stack:  # the timer for the earliest deadline left
                at = min(outer[0] for outer in stack)
                self.arm(max(at - time.monotonic(), _WAIT_FIRST), at)
        if time.monotonic() >= level[0]:  # its deadline passed where it could not land
            raise step.error(limit)
        return result

    def arm(self, delay: float, at: float) -> None:
        if self.unseen and time.monotonic() >= self.timer_at:
            self.stale = True  # the timer being replaced may have fired already
        _setitimer(_REAL, max(delay, 1e-06), _MARK)
        self.timer_at = at
        self.unseen = True

    def release(self, old: tuple[float, float]) -> None:
        """The outermost attempt ended, and `old`, the timer it cancelled, was not ours
        pending: the attempt's own (put back), or ours after it fired."""
        if not _MARK - 1e-03 < old[1] < _MARK + 1e-03:
            if old != (0.0, 0.0):  # the attempt set a timer of its own: keep it
                _setitimer(_REAL, *old)
        elif self.unseen and _getsignal(_SIGALRM) is not _on_alarm:
            # The attempt put in a handler of its own, which took our signal: it stays.
            self.unseen = False
            return
        elif self.unseen:
            # Ours fired and its signal is not handled yet. Setting the handler runs the
            # signals already received. One still to come (blocked now, or taken on
            # another thread) must find ours, not the default action (which ends the
            # process): keep ours until it comes, and hand attempts off meanwhile.
            _setsignal(_SIGALRM, _on_alarm)
            # A timer that fired reads 0 left until its signal is taken, and the kernel
            # may drop that signal when the timer is cancelled: then only a blocked one
            # (pending) is still to come.
            if self.unseen and (old[0] != 0.0 or _SIGALRM in _sigpending()):
                self.straggler = True
                return
            self.unseen = False
        self.give_back()

    def give_back(self) -> None:
        if self.previous is not _on_alarm and _getsignal(_SIGALRM) is _on_alarm:
            _setsignal(_SIGALRM, self.previous)

    def fire(self, frame: FrameType | None) -> None:
        self.unseen = False
        stack = self.stack
        if not stack:  # a late signal of ours, after the attempts ended
            if self.straggler:
                self.straggler = False
                self.give_back()
            return
        now = time.monotonic()
        owner = next((level for level in stack if level[0] <= now), None)
        if owner is None:
            if self.stale or now >= self.timer_at or self.previous is _on_alarm:
                self.stale = False  # ours, from a timer since replaced: the next one
                at = min(level[0] for level in stack)
                self.arm(at - now, at)
                return
            self.pass_on()
            return
        self.overdue = True  # if the attempt returns all the same, it raises then
        if _on_its_way_out(owner) or _must_wait(frame):
            wait = _WAIT_FIRST if self.waits < _SHORT_WAITS else _REFIRE
            self.waits += 1
            self.arm(wait, now + wait)
            return
        self.waits = 0
        self.arm(_REFIRE, now + _REFIRE)  # again until the attempt ends (see the docstring)
        if process_role.POOL_WORKER:
            # Code was cut wherever it was: the worker leaves after this chunk. Only in
            # one (a fork-started pool's workers would inherit a parent's flag).
            process_role.INTERRUPTED = True
        raise _AlarmFired(owner)

    def pass_on(self) -> None:
        """A SIGALRM not ours while we hold it (sent by `kill`, or a timer the attempt
        set): what the default disposition we replaced does, end the process."""
        if sys.platform == "win32":
            return
        _setsignal(_SIGALRM, _SIG_DFL)
        signal.raise_signal(_SIGALRM)


_RUN_CODES = frozenset({_Alarm.run.__code__, _Alarm.nested.__code__})
_alarm = _Alarm()


def _after_fork() -> None:
    """A child forked during a timed attempt (a fork-started @opmap pool, say) has no
    timer (fork does not copy it) and must not take the parent's deadlines for its own:
    it starts afresh, SIGALRM as the host had it."""
    _alarm.main = threading.main_thread().ident  # the forking thread, in the child
    _alarm.stack.clear()
    _alarm.unseen = _alarm.stale = _alarm.straggler = False
    _alarm.give_back()


if sys.platform != "win32":
    os.register_at_fork(after_in_child=_after_fork)


def use_alarm() -> None:
    """Make sync attempt timeouts in this process use SIGALRM (an @opmap worker)."""
    _alarm.enable()
