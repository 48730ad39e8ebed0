"""The item events of a map (`item_started`, `item_succeeded`, `item_failed`,
`worker_crashed`), emitted in the parent, so every mode reports them the same way and
they reach the parent's hooks: a global `add_hook`, and the function's `on_event`.

Nothing is built while nobody listens (`Observer.on`, read once per chunk). An event
carries the item's input index and, for a failure, the exception's type name; never the
item or its result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from opero._observe import events
from opero._observe.events import CallInfo, Observer
from opero.exceptions import WorkerCrashedError

if TYPE_CHECKING:
    from opero._maps.dispatch import Batch


class ItemEvents:
    """One map run's item events: one correlation id for the whole map."""

    __slots__ = ("info", "observer")

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self.info: CallInfo | None = None

    def _call(self) -> CallInfo:
        if self.info is None:
            self.info = CallInfo(self.observer.function)
        return self.info

    def started(self, indices: Sequence[int]) -> None:
        """These items were handed to a worker (or, in async mode, a task)."""
        if not self.observer.on:
            return
        info, emit = self._call(), self.observer.emit
        for index in indices:
            emit(events.ITEM_STARTED, info, item=index)

    def finished(self, batch: Batch) -> None:
        """These items' outcomes are back (answers from the cache or a journal too)."""
        if not self.observer.on:
            return
        info, emit, failures = self._call(), self.observer.emit, batch.failures
        for offset, index in enumerate(batch.indices):
            error = failures.get(offset)
            if error is None:
                emit(events.ITEM_SUCCEEDED, info, item=index)
                continue
            emit(events.ITEM_FAILED, info, item=index, error=type(error).__name__)
            if isinstance(error, WorkerCrashedError):
                emit(events.WORKER_CRASHED, info, item=index, error=type(error).__name__)
