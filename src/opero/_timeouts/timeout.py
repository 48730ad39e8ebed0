"""Timeouts: `timeout=` per attempt and `total_timeout=` for the whole call.

`total_timeout` sets a deadline when the call starts (one `ContextVar` per decorated
function, so nested opero functions keep their own). The fallback and retry steps start no
new attempt, and sleep no delay, that would end past it; each attempt is cut off at it.

How an attempt is cut off:

- **async**: the attempt's task is cancelled for real at the limit, as `asyncio.timeout`
  would (one timer per event loop instead of one per attempt, see `_Watch`), and
  `AttemptTimeoutError` is raised in its place.
- **sync, with `timeout`**: Python cannot stop a thread. The attempt runs on a helper
  thread while the caller waits at most the limit (the earlier of `timeout` and the
  deadline); at the limit the caller gets `AttemptTimeoutError` and
  goes on (retry, fallback), and the abandoned attempt keeps running on its thread until
  it returns by itself; its result or exception is then dropped (a DEBUG log line says so).
  Helper threads are daemons and reused. Under `@opmap(mode="process")`, a worker process
  owns its main thread, so there the attempt runs on it and a `SIGALRM` timer raises the
  timeout inside the running code: the work really stops (see `use_alarm`).
- **sync, `total_timeout` alone**: no helper thread (a hand-off costs ~70 us a call).
  The deadline bounds the retries, their waits and the rate-limit waits from the
  caller's thread, and no attempt starts after it; a running attempt is cut at it only
  in an @opmap worker (`SIGALRM`). Add `timeout=` to have every attempt cut.
"""

from __future__ import annotations

import _thread
import contextvars
import math
import queue
import signal
import sys
import threading
import time
import weakref
from _thread import get_ident as _get_ident
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from opero._observe import attempts
from opero._utils import process_role
from opero._utils.logging import log
from opero._utils.waits import acquire_within
from opero.exceptions import AttemptTimeoutError, DeadlineExceededError

if TYPE_CHECKING:
    import asyncio


class TotalTimeout:
    """The deadline of one call of one decorated function.

    An async call sets it in a `ContextVar` per call (each task has its own). A sync
    call keeps it in a small holder, ``[deadline, thread id]``, that the context keeps
    for the thread: setting a `ContextVar` and resetting it costs ~0.4 us, most of what
    a deadline would cost a healthy call; the holder is saved and restored instead. A
    thread that sees another thread's holder (a copied context: a timeout's helper
    thread) makes its own, so no two threads write one.
    """

    __slots__ = ("name", "seconds", "var")

    def __init__(self, seconds: float, name: str) -> None:
        self.seconds = seconds
        self.name = name
        self.var: contextvars.ContextVar[Any] = contextvars.ContextVar(
            f"opero_deadline_{name}", default=None
        )

    def deadline(self) -> float | None:
        """This call's deadline (a `time.monotonic()` value), or None outside a call."""
        value = self.var.get()
        if value is None or type(value) is float:
            return value
        deadline: float | None = value[0]
        return deadline

    def remaining(self) -> float | None:
        """Seconds left before this call's deadline, or None outside a call."""
        deadline = self.deadline()
        return None if deadline is None else deadline - time.monotonic()

    def error(self, attempts: int | None) -> DeadlineExceededError:
        message = f"{self.name}(): total_timeout of {self.seconds:g}s reached"
        if attempts is not None:
            message += f" after {attempts} attempt" + ("" if attempts == 1 else "s")
        return DeadlineExceededError(message)

    def wrap_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        var, seconds, monotonic, ident = self.var, self.seconds, time.monotonic, _get_ident

        def call(*args: Any, **kwargs: Any) -> Any:
            holder = var.get()
            if holder is None or holder[1] != ident():
                holder = [None, ident()]
                var.set(holder)  # once per thread (or task) that calls it
            saved = holder[0]
            holder[0] = monotonic() + seconds
            try:
                return func(*args, **kwargs)
            finally:
                holder[0] = saved

        return call

    def wrap_async(self, func: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        var, seconds, monotonic = self.var, self.seconds, time.monotonic

        async def call(*args: Any, **kwargs: Any) -> Any:
            token = var.set(monotonic() + seconds)
            try:
                return await func(*args, **kwargs)
            finally:
                var.reset(token)

        return call


class AttemptTimeout:
    """Cuts one attempt off at `timeout` seconds, or earlier at the call's deadline."""

    __slots__ = ("name", "seconds", "total")

    def __init__(self, seconds: float | None, total: TotalTimeout | None, name: str) -> None:
        self.seconds = seconds
        self.total = total
        self.name = name

    def limit(self) -> float | None:
        """Seconds this attempt may take, or None for no limit."""
        limit = self.seconds
        if self.total is not None:
            remaining = self.total.remaining()
            if remaining is not None and (limit is None or remaining < limit):
                limit = remaining
        return limit

    def error(self, limit: float) -> AttemptTimeoutError | DeadlineExceededError:
        """The timeout to raise: the call's deadline when it set the limit, else the
        attempt's own."""
        if self.total is not None and (self.seconds is None or limit < self.seconds):
            return self.total.error(None)
        return AttemptTimeoutError(f"{self.name}(): attempt timed out after {max(limit, 0):.3g}s")

    def wrap_async(self, func: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        import asyncio

        current_task, running_loop = asyncio.current_task, asyncio.get_running_loop
        seconds, total, limit_now = self.seconds, self.total, self.limit
        last: list[_Watch | None] = [None]  # the watch of the last loop seen

        async def attempt(*args: Any, **kwargs: Any) -> Any:
            limit = seconds if total is None else limit_now()
            if limit is None:
                return await func(*args, **kwargs)
            if limit <= 0:
                raise self.error(limit)
            loop = running_loop()
            watch = last[0]
            if watch is None or watch.loop_ref() is not loop:
                watch = last[0] = _watch_of(loop)
            task = current_task(loop)
            assert task is not None
            # As asyncio.timeout does: the task's cancel requests before this attempt.
            deadline = loop.time() + limit
            entry: list[Any] = [deadline, task, False, task.cancelling()]
            key = id(entry)
            watch.entries[key] = entry  # `_Watch.add`, inlined: the hot path
            if deadline < watch.when:
                watch.schedule(loop, deadline)
            try:
                return await func(*args, **kwargs)
            except asyncio.CancelledError:
                if entry[_EXPIRED]:
                    # As asyncio.timeout does: the cancellation is ours to turn into a
                    # timeout unless someone else asked for one too.
                    entry[_EXPIRED] = False
                    if task.uncancel() <= entry[_CANCELLING]:
                        raise self.error(limit) from None
                raise
            finally:
                if entry[_EXPIRED]:  # it expired but ended otherwise: withdraw our cancel
                    task.uncancel()
                else:
                    watch.entries.pop(key, None)  # gone if it expired (see above)

        return attempt

    def wrap_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        if self.seconds is None:
            return self._deadline_only_sync(func)

        def attempt(*args: Any, **kwargs: Any) -> Any:
            limit = self.limit()
            if limit is None:
                return func(*args, **kwargs)
            if limit <= 0:
                raise self.error(limit)
            if _alarm.usable():
                return _alarm.run(self, limit, func, args, kwargs)
            # This frame, for current_attempt() on the helper thread: the attempt's
            # number is where this frame is in the caller's stack.
            return _runner.run(self, limit, func, args, kwargs, sys._getframe())

        return attempt

    def _deadline_only_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """`total_timeout` without `timeout` on a sync function: the attempt runs in the
        caller's thread (no hand-off: ~70 us a call), starts only before the deadline,
        and is cut at it only where a timer signal can (an @opmap worker process)."""
        total = self.total
        assert total is not None
        var, monotonic, alarm, role = total.var, time.monotonic, _alarm, process_role

        def attempt(*args: Any, **kwargs: Any) -> Any:
            holder = var.get()  # set by `TotalTimeout.wrap_sync` (this is a sync pipeline)
            deadline = None if holder is None else holder[0]
            if deadline is not None:
                left = deadline - monotonic()
                if left <= 0:
                    raise total.error(None)
                if role.POOL_WORKER and alarm.usable():
                    return alarm.run(self, left, func, args, kwargs)
            return func(*args, **kwargs)

        return attempt


# --- async attempts: one deadline watch per event loop ---------------------------------
#
# `asyncio.timeout` schedules and cancels a timer handle per use (about 9 us here, and
# cancelled handles pile up in the loop's heap). An attempt timeout only needs one timer
# per loop, set for the earliest deadline in flight: attempts of one function start in
# deadline order, so registering one is a set insert. The check cancels expired tasks
# like asyncio.timeout does and re-arms itself for the next deadline.


# An entry is a list (cheaper to make than an object): deadline, task, expired, and the
# task's cancel requests when the attempt began.
_DEADLINE, _TASK, _EXPIRED, _CANCELLING = range(4)


class _Watch:
    """The deadlines of one event loop's timed attempts, and its one timer.

    It holds its loop weakly (the registry of watches is keyed weakly by loop), so a
    finished `asyncio.run()` leaves nothing behind.
    """

    __slots__ = ("__weakref__", "entries", "handle_ref", "loop_ref", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Both weak: a timer handle refers to its loop, and the loop keeps its own
        # scheduled handles alive.
        self.loop_ref = weakref.ref(loop)
        self.handle_ref: weakref.ref[asyncio.TimerHandle] | None = None
        self.entries: dict[int, list[Any]] = {}
        self.when = math.inf

    def schedule(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        handle = self.handle_ref() if self.handle_ref is not None else None
        if handle is not None:
            handle.cancel()
        self.when = when
        self.handle_ref = weakref.ref(loop.call_at(when, self.check))

    def check(self) -> None:
        self.handle_ref = None
        loop = self.loop_ref()
        if loop is None:
            return
        now = loop.time()
        following = math.inf
        for key, entry in list(self.entries.items()):
            deadline = entry[_DEADLINE]
            if deadline <= now:
                del self.entries[key]
                entry[_EXPIRED] = True
                entry[_TASK].cancel()
            elif deadline < following:
                following = deadline
        self.when = math.inf
        if following < math.inf:
            self.schedule(loop, following)


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watch] = weakref.WeakKeyDictionary()


def _watch_of(loop: asyncio.AbstractEventLoop) -> _Watch:
    watch = _watches.get(loop)
    if watch is None:
        watch = _watches[loop] = _Watch(loop)
    return watch


# --- sync attempts on reused daemon threads ---------------------------------------------


class _Job:
    __slots__ = (
        "abandoned",
        "args",
        "attempt",
        "attempt_kept",
        "caller",
        "context",
        "done",
        "error",
        "finished",
        "func",
        "kwargs",
        "name",
        "result",
    )

    def __init__(
        self, func: Callable[..., Any], args: Any, kwargs: Any, name: str, caller: FrameType
    ) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.name = name
        self.context = contextvars.copy_context()  # so context (and deadlines) flow in
        # For current_attempt() on the thread, which has not the caller's stack: the
        # step's frame that handed the attempt over, walked out from only if asked.
        self.caller: FrameType | None = caller
        self.attempt: int | None = None  # the number, once `caller` moves on
        self.attempt_kept = False  # set once `attempt` is
        # Held until the thread has the outcome: a bare lock is far cheaper to make and
        # to wait on than a threading.Event (about 0.1 against 6 us here).
        self.done = _thread.allocate_lock()
        self.done.acquire()
        self.finished = False  # set under the runner's lock, with `abandoned`
        self.abandoned = False
        self.result: Any = None
        self.error: BaseException | None = None


class _ThreadRunner:
    """Daemon threads that run sync attempts so that the caller can stop waiting."""

    MAX_IDLE = 16

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[_Job]] = []
        self.abandoned = 0  # attempts given up on that are still running

    def run(
        self,
        step: AttemptTimeout,
        limit: float,
        func: Callable[..., Any],
        args: Any,
        kwargs: Any,
        caller: FrameType,
    ) -> Any:
        job = _Job(func, args, kwargs, step.name, caller)
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(
                target=self._serve, args=(inbox,), name="opero-attempt", daemon=True
            ).start()
        inbox.put(job)
        try:
            if not acquire_within(job.done, limit):
                with self._lock:
                    abandoned = job.abandoned = not job.finished
                    if abandoned:  # tells the thread nobody waits any more
                        self.abandoned += 1
                if abandoned:
                    # The caller's frames move on once it raises: the attempt number
                    # they hold now is kept first, for current_attempt() on the thread.
                    job.attempt = attempts.attempt_at(job.caller)
                    job.attempt_kept = True
                    raise step.error(limit)
        finally:
            job.caller = None
        error = job.error
        if error is not None:
            job.error = None  # no cycle through the traceback
            raise error
        return job.result

    def _serve(self, inbox: queue.SimpleQueue[_Job]) -> None:
        while True:
            job = _serving.job = inbox.get()
            func = job.func
            try:
                job.result = job.context.run(func, *job.args, **job.kwargs)
            except BaseException as exc:  # handed to the caller, who re-raises it
                job.error = exc
            with self._lock:
                job.finished = True
                abandoned = job.abandoned
                if abandoned:
                    self.abandoned -= 1
                keep = len(self._idle) < self.MAX_IDLE
                if keep:
                    self._idle.append(inbox)
                job.done.release()  # last: the inbox is idle again for the next attempt
            if abandoned:  # nobody reads the outcome: drop it here
                outcome = "failed with " + type(job.error).__name__ if job.error else "returned"
                log().debug("{}: an attempt abandoned at its timeout {} later", job.name, outcome)
                job.result = job.error = None
            del job  # the caller holds the outcome; the thread must not keep it alive
            _serving.job = None
            if not keep:
                return


_runner = _ThreadRunner()
_serving = threading.local()  # .job: the attempt a helper thread runs now


def _attempt_on_this_thread() -> int | None:
    """current_attempt() on a helper thread: the number in the waiting caller's frames,
    or the one kept for it once the caller gave up on the attempt."""
    job: _Job | None = getattr(_serving, "job", None)
    if job is None:
        return None
    if job.caller is not None and not job.attempt_kept:
        attempt = attempts.attempt_at(job.caller)
        if not job.attempt_kept:  # its frames were still waiting: exact
            return attempt
    # Given up at its timeout (maybe while we read its frames, which then moved on).
    return job.attempt


attempts.mark_handoff(_ThreadRunner._serve, _attempt_on_this_thread)


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


def abandoned_attempts() -> int:
    """How many sync attempts were given up at their timeout and are still running."""
    return _runner.abandoned
