"""The attempt timeout step (`timeout=`, and each attempt cut at the call's deadline):
async attempts by cancelling their task from one watch per event loop; sync ones on a
helper thread (`threads`, `timeout_mode="abandon"`, the default), or in the caller's
thread under SIGALRM (`alarm`) with `timeout_mode="interrupt"` where it can (the main
thread, SIGALRM free) and always in @opmap workers."""

from __future__ import annotations

import math
import sys
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from opero._utils import process_role
from opero.exceptions import AttemptTimeoutError, DeadlineExceededError

if TYPE_CHECKING:
    import asyncio

from opero._timeouts.alarm import _alarm, _HandOff
from opero._timeouts.threads import _runner

if TYPE_CHECKING:
    from opero._timeouts.total import TotalTimeout


class AttemptTimeout:
    """Cuts one attempt off at `timeout` seconds, or earlier at the call's deadline."""

    __slots__ = ("handed_off", "interrupt", "name", "seconds", "total")

    def __init__(
        self,
        seconds: float | None,
        total: TotalTimeout | None,
        name: str,
        mode: str = "abandon",
    ) -> None:
        self.seconds = seconds
        self.total = total
        self.name = name
        self.interrupt = mode == "interrupt"  # no effect on async attempts
        self.handed_off: set[str] = set()  # why `interrupt` fell back, as logged

    def fell_back(self, why: _HandOff) -> None:
        """`timeout_mode="interrupt"` could not run the attempt in place: say so once
        per reason (never the arguments)."""
        if why.reason not in self.handed_off:
            self.handed_off.add(why.reason)
            from opero._utils.logging import log

            log().debug(
                "{}(): timeout_mode='interrupt' hands attempts to a helper thread while {}",
                self.name,
                why.reason,
            )

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

        seconds, total, limit_now = self.seconds, self.total, self.limit
        run_in_place, interrupt, role = _alarm.run, self.interrupt, process_role
        stack = _alarm.stack  # non-empty: an interrupt-mode attempt is running (main thread)

        def attempt(*args: Any, **kwargs: Any) -> Any:
            limit = seconds if total is None else limit_now()
            if limit is None:
                return func(*args, **kwargs)
            if limit <= 0:
                raise self.error(limit)
            # In place where it can (`alarm`). Inside an interrupt-mode attempt, whatever
            # its own mode: on the shared timer the earliest deadline cuts (a hand-off
            # would make the outer attempt wait for this one's whole timeout).
            if interrupt or role.POOL_WORKER or stack:
                result = run_in_place(self, limit, func, args, kwargs)
                if result.__class__ is not _HandOff:
                    return result
                if interrupt:
                    self.fell_back(result)
            # This frame, for current_attempt() on the helper thread: the attempt's
            # number is where this frame is in the caller's stack.
            return _runner.run(self, limit, func, args, kwargs, sys._getframe())

        return attempt

    def _deadline_only_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """`total_timeout` without `timeout` on a sync function: the attempt runs in the
        caller's thread (no hand-off: ~70 us a call), starts only before the deadline,
        and is cut at it only where a timer signal can (`timeout_mode="interrupt"` on
        the main thread while SIGALRM is free, an @opmap worker process)."""
        total = self.total
        assert total is not None
        var, monotonic, alarm, role = total.var, time.monotonic, _alarm, process_role
        interrupt, stack = self.interrupt, alarm.stack

        def attempt(*args: Any, **kwargs: Any) -> Any:
            holder = var.get()  # set by `TotalTimeout.wrap_sync` (this is a sync pipeline)
            deadline = None if holder is None else holder[0]
            if deadline is not None:
                left = deadline - monotonic()
                if left <= 0:
                    raise total.error(None)
                if interrupt or role.POOL_WORKER or stack:
                    result = alarm.run(self, left, func, args, kwargs)
                    if result.__class__ is not _HandOff:
                        return result
                    # Not cut where no signal can: it runs on, as without the mode.
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
