"""Sync attempts on reused daemon threads, so that the caller can stop waiting at the
limit (the attempt itself cannot be stopped: it is abandoned, and its outcome dropped)."""

from __future__ import annotations

import _thread
import contextvars
import queue
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from opero._observe import attempts
from opero._utils.logging import log
from opero._utils.waits import acquire_within

if TYPE_CHECKING:
    pass


if TYPE_CHECKING:
    from opero._timeouts.attempt import AttemptTimeout

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
            try:
                done = acquire_within(job.done, limit)
            except BaseException:  # Ctrl-C or an outer timeout while waiting
                self._abandon(job)
                raise
            if not done and self._abandon(job):
                raise step.error(limit)
        finally:
            job.caller = None
        error = job.error
        if error is not None:
            job.error = None  # no cycle through the traceback
            raise error
        return job.result

    def _abandon(self, job: _Job) -> bool:
        """Nobody waits for `job` any more: tell its thread, count it, and keep its
        attempt number for current_attempt() there (the caller's frames move on once it
        raises). False if it finished meanwhile (its outcome is then the caller's)."""
        with self._lock:
            abandoned = job.abandoned = not job.finished
            if abandoned:
                self.abandoned += 1
        if abandoned:
            job.attempt = attempts.attempt_at(job.caller)
            job.attempt_kept = True
        return abandoned

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


def abandoned_attempts() -> int:
    """How many sync attempts were given up at their timeout and are still running."""
    return _runner.abandoned
