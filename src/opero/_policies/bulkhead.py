"""Bulkhead: at most `max_concurrency` attempts of one function in flight at once.

A caller that finds every slot taken waits for one, at most `max_concurrency_wait`
seconds if that is set (0 means: do not wait), and then gets `BulkheadFullError`.

One `Slots` semaphore serves both. Its free slots are tokens in a deque, so the
uncontended path is two atomic deque operations and no lock (several times cheaper than
`threading.Semaphore`); threads wait on a lock of their own and tasks on a future of
their own loop, so one limit holds across threads, tasks and event loops (an
`asyncio.Semaphore` belongs to one loop). A slot freed as a waiter gives up is passed on,
never lost.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING

from opero._utils.waits import acquire_within
from opero.exceptions import BulkheadFullError

if TYPE_CHECKING:
    import asyncio

_TOKENS_AT_ONCE = 64  # tokens made up front; more are made as callers take them


class _Waiter:
    __slots__ = ("future", "gone", "granted", "lock", "loop")

    def __init__(self) -> None:
        self.granted = False  # a releasing caller handed its slot to this waiter
        self.gone = False  # the waiter stopped waiting (timeout, cancellation)
        self.lock: threading.Lock | None = None  # a thread waits on it, held
        self.loop: asyncio.AbstractEventLoop | None = None  # or a task on this loop's
        self.future: asyncio.Future[None] | None = None  # future

    def wake(self) -> None:
        if self.lock is not None:
            self.lock.release()
        else:
            assert self.loop is not None
            assert self.future is not None
            self.loop.call_soon_threadsafe(_wake, self.future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Slots:
    """A counting semaphore for threads and for tasks on any event loop.

    Free slots are tokens in a deque: taking one is `deque.pop()` and giving it back
    `deque.append()`, each atomic in CPython, so the uncontended path takes no lock. Only
    a caller that finds no token takes the lock, to queue itself; a releasing caller that
    sees a queue hands a token to its first waiter under the lock. A waiter queues itself
    and then looks for a token once more, under the lock; a releaser looks for waiters
    only after putting its token back. So whichever comes second sees the other, and a
    token never sits idle while someone waits.
    Waiters are served in order; a caller arriving meanwhile may take a freed token first.
    """

    def __init__(self, limit: int) -> None:
        # Tokens are made as needed: the deque holds at most the most slots ever taken
        # at once, so a limit of 10**12 costs what a limit of 64 does.
        made = min(limit, _TOKENS_AT_ONCE)
        self.tokens = deque([None] * made)
        self.unmade = limit - made  # slots never taken yet; read and changed under _lock
        self._lock = threading.Lock()
        self.waiters: deque[_Waiter] = deque()

    def try_acquire(self) -> bool:
        """Take a slot if one is free."""
        try:
            self.tokens.pop()
        except IndexError:
            return self.unmade > 0 and self._take_unmade()
        return True

    def _take_unmade(self) -> bool:
        with self._lock:
            if self.unmade > 0:
                self.unmade -= 1
                return True
        return False

    def _queue(self, waiter: _Waiter) -> bool:
        """Queue `waiter`, or take a slot at once (True) if one is free by now."""
        with self._lock:
            try:
                self.tokens.pop()
            except IndexError:
                pass
            else:
                return True
            if self.unmade > 0:
                self.unmade -= 1
                return True
            self.waiters.append(waiter)
            # A releaser may have put a token back between our look and our queueing,
            # and looked for waiters before we were queued: look again, now queued.
            if self.tokens:
                self._hand_over_locked()
        return False

    def _give_up(self, waiter: _Waiter) -> bool:
        """The waiter stops waiting; True if a slot had been handed to it meanwhile."""
        with self._lock:
            waiter.gone = True
            return waiter.granted

    def acquire_sync(self, wait: float | None) -> bool:
        """Take a slot, waiting at most `wait` seconds (None: as long as it takes)."""
        if self.try_acquire():
            return True
        if wait is not None and wait <= 0:
            return False
        waiter = _Waiter()
        waiter.lock = threading.Lock()
        waiter.lock.acquire()
        if self._queue(waiter):
            return True
        try:
            if waiter.lock.acquire() if wait is None else acquire_within(waiter.lock, wait):
                return True
        except BaseException:  # e.g. KeyboardInterrupt while queued
            if self._give_up(waiter):
                self.release()  # pass on the slot that came as we stopped waiting
            raise
        return self._give_up(waiter)  # granted just as the wait ended: keep it

    async def acquire_async(self, wait: float | None) -> bool:
        """The same for a task: waits on a future of its own loop."""
        import asyncio

        if self.try_acquire():
            return True
        if wait is not None and wait <= 0:
            return False
        waiter = _Waiter()
        waiter.loop = asyncio.get_running_loop()
        waiter.future = waiter.loop.create_future()
        if self._queue(waiter):
            return True
        try:
            async with asyncio.timeout(wait):
                await waiter.future
        except TimeoutError:
            if self._give_up(waiter):
                self.release()  # pass on the slot that came as we stopped waiting
            return False
        except BaseException:  # cancelled
            if self._give_up(waiter):
                self.release()
            raise
        return True

    def release(self) -> None:
        """Give a slot back; hand one to the first waiter still waiting, if any."""
        self.tokens.append(None)
        if self.waiters:
            self.hand_over()

    def hand_over(self) -> None:
        """Give free tokens to waiters still waiting, first come first served."""
        with self._lock:
            self._hand_over_locked()

    def _hand_over_locked(self) -> None:
        while self.waiters:
            try:
                self.tokens.pop()  # a caller on the lock-free path may take it first
            except IndexError:
                return
            if not self._grant():
                self.tokens.append(None)  # nobody is waiting any more
                return

    def _grant(self) -> bool:
        """Hand one taken token to the first waiter still waiting; False if none is."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if waiter.gone:
                continue
            try:
                waiter.wake()
            except RuntimeError:  # its event loop is closed: the waiter is gone
                waiter.gone = True
                continue
            waiter.granted = True
            return True
        return False


class Bulkhead:
    """The `max_concurrency` setting of one decorated function and its slots."""

    def __init__(self, limit: int, wait: float | None, name: str) -> None:
        self.limit = limit
        self.wait = wait
        self.name = name
        self.slots = Slots(limit)

    def full(self) -> BulkheadFullError:
        waited = "" if not self.wait else f" after waiting {self.wait:g}s"
        return BulkheadFullError(
            f"{self.name}(): max_concurrency={self.limit} calls already in flight{waited}"
        )
