"""Hedged fallback (``hedge_after=``): when the current `arg_fallback` value has not
answered in time, the next one starts too, and the first success wins.

Plain fallback tries the next value only after the current one failed, so one slow
answer costs the whole wait. Hedging bounds the tail: after `hedge_after` seconds
(or the schedule's delay for that value) the next value starts beside it. A failure
still moves on at once. Every value runs its own pipeline (its retries, rate-limit
token, breaker count); the first success is returned, and the others are cancelled
(async) or abandoned (sync: they run on helper threads, like a timed-out attempt, and
their outcome is dropped). When every value failed, `AllFailedError` lists their last
errors in value order, as without hedging.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from opero._observe import attempts, events
from opero._observe.events import CallInfo, current_call
from opero._pipeline.fallback import FallbackParameter, all_failed, error_to_keep
from opero._policies.retry import retry_async, retry_sync

if TYPE_CHECKING:
    from opero._policies.retry import RetryPolicy


def hedge_delay(schedule: float | Sequence[float], index: int) -> float:
    """Seconds after value `index` started before the next one starts beside it."""
    if isinstance(schedule, int | float):
        return float(schedule)
    return float(schedule[min(index, len(schedule) - 1)])


class _Race:
    """One hedged call: which values started, their errors, and the events."""

    def __init__(
        self,
        fallback: FallbackParameter,
        policy: RetryPolicy,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.values = fallback.values(args, kwargs)
        if policy.budget is not None:
            policy.budget.record_call()  # one deposit per call, not per value
        self.fallback = fallback
        self.policy = policy
        self.count = len(self.values)
        self.started = 0
        self.errors: list[Exception | None] = [None] * self.count
        self.info = current_call.get() if policy.observer is not None else None

    def next_delay(self) -> float | None:
        if self.started >= self.count:
            return None
        return hedge_delay(self.fallback.hedge, self.started - 1)  # type: ignore[arg-type]

    def value_info(self, index: int) -> CallInfo | None:
        """The call's info for one value's events: same correlation id, its own index
        and attempt count (values run side by side)."""
        if self.info is None:
            return None
        info = CallInfo(self.info.function)
        info.call_id, info.fallback_index = self.info.call_id, index
        return info

    def emit(self, kind: str, index: int, **fields: Any) -> None:
        if self.policy.observer is not None:
            self.policy.observer.emit(kind, self.value_info(index), **fields)

    def failed(self, index: int, exc: BaseException) -> None:
        """Value `index` failed: keep its error; a bug, a BaseException or a passed
        deadline ends the call."""
        if not isinstance(exc, Exception):
            raise exc
        # Other values may still run: a deadline not yet passed ends only this one.
        self.errors[index] = error_to_keep(exc, self.policy.total, more=True)

    def all_failed(self) -> Exception:
        return all_failed(self.fallback, [e for e in self.errors if e is not None])


def call_hedged_sync(
    fallback: FallbackParameter,
    policy: RetryPolicy,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    race = _Race(fallback, policy, args, kwargs)
    values = race.values
    outcomes: queue.SimpleQueue[tuple[int, bool, Any]] = queue.SimpleQueue()
    name = fallback.function_name

    def run(index: int) -> None:
        token = current_call.set(race.value_info(index)) if race.info is not None else None
        call_args, call_kwargs = fallback.substitute(args, kwargs, values[index])
        try:
            try:
                result = func(*call_args, **call_kwargs)
            except Exception as exc:
                first: Exception | None = exc
            else:
                first = None
            if first is not None:  # outside the except block: no chained context
                result = retry_sync(policy, name, func, call_args, call_kwargs, first)
            outcomes.put((index, True, result))
        except BaseException as exc:  # handed to the caller, who decides
            outcomes.put((index, False, exc))
        finally:
            if token is not None:
                current_call.reset(token)

    def start() -> None:
        index, race.started = race.started, race.started + 1
        if index:
            race.emit(events.HEDGE_STARTED, index)
        context = contextvars.copy_context()
        threading.Thread(
            target=context.run, args=(run, index), name="opero-hedge", daemon=True
        ).start()

    start()
    running = 1
    while True:
        try:
            index, ok, value = outcomes.get(timeout=race.next_delay())
        except queue.Empty:  # the current values are slow: hedge with the next one
            start()
            running += 1
            continue
        running -= 1
        if ok:
            race.emit(events.HEDGE_WON, index)
            return value
        race.failed(index, value)
        if race.started < race.count:
            start()  # a failure moves on at once, as without hedging
            running += 1
        elif running == 0:
            raise race.all_failed()


async def call_hedged_async(
    fallback: FallbackParameter,
    policy: RetryPolicy,
    func: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    race = _Race(fallback, policy, args, kwargs)
    values = race.values
    name = fallback.function_name
    tasks: dict[asyncio.Task[Any], int] = {}

    async def run(index: int) -> Any:
        if race.info is not None:
            current_call.set(race.value_info(index))  # the task's own context
        call_args, call_kwargs = fallback.substitute(args, kwargs, values[index])
        try:
            return await func(*call_args, **call_kwargs)
        except Exception as exc:
            first = exc
        return await retry_async(policy, name, func, call_args, call_kwargs, first)

    def start() -> None:
        index, race.started = race.started, race.started + 1
        if index:
            race.emit(events.HEDGE_STARTED, index)
        tasks[asyncio.ensure_future(run(index))] = index

    start()
    try:
        while True:
            done, _ = await asyncio.wait(
                tasks, timeout=race.next_delay(), return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                start()
                continue
            for task in done:
                index = tasks.pop(task)
                if not task.cancelled() and task.exception() is None:
                    race.emit(events.HEDGE_WON, index)
                    return task.result()
                race.failed(index, task.exception() or asyncio.CancelledError())
                if race.started < race.count:
                    start()
            if not tasks:
                raise race.all_failed()
    finally:
        for task in tasks:  # the losers, or everything on cancellation
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


# current_attempt(): a hedged value's first attempt is made in these frames.
attempts.mark_nested(attempts.FIRST, call_hedged_sync, "run")
attempts.mark_nested(attempts.FIRST, call_hedged_async, "run")
