"""What goes to a map's engine: chunks sized from measured item times, the parent-side
cache of process mode, and the dispatcher that keeps a few chunks per worker in flight
and sends again what a dead worker took down with it.

Chunks adapt to the items: they grow until one takes about `target` seconds, and never
exceed a quarter of each worker's share of a known-length input.
"""

from __future__ import annotations

import itertools
import math
import queue
import time
from collections import deque
from collections.abc import (
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from typing import TYPE_CHECKING, Any, NamedTuple

from opero._cache.step import MISSING
from opero._maps.journal import MISSING as NOT_DONE
from opero._maps.journal import digest_of
from opero._maps.pool import TICK, Engine
from opero._maps.worker import (
    Outcome,
    UnsendableError,
)
from opero.exceptions import WorkerCrashedError

if TYPE_CHECKING:
    from opero._maps.journal import Journal

MAX_CHUNK = 1024  # items in a chunk of a stream
# Items in a chunk of an input of known length: before any chunk was measured (with 4
# chunks per worker in flight in process mode, an input of up to 8,192 items per worker
# goes out at once, as with Pool.map), and once items are measured fast (each chunk
# costs a round trip between processes, which tiny items do not cover).
MAX_FIRST_CHUNK = 2048
MAX_GROWN_CHUNK = 8192


class ChunkSizer:
    """Chunk size from measured item times; fixed when the user set `chunksize`."""

    def __init__(self, workers: int, total: int | None, fixed: int | None, target: float) -> None:
        self.fixed = fixed
        self.target = target
        if total is None:
            # A stream starts at 1 and grows as items are measured.
            self.cap = MAX_CHUNK
            self.size = fixed or 1
        else:
            # A known length starts where multiprocessing.Pool.map stays (a quarter of
            # each worker's share), at most MAX_FIRST_CHUNK; once items are measured,
            # chunks of fast items grow up to that quarter (at most MAX_GROWN_CHUNK).
            share = max(1, math.ceil(total / (workers * 4)))
            self.cap = min(share, MAX_GROWN_CHUNK)
            self.size = fixed or min(share, MAX_FIRST_CHUNK)

    def observe(self, items: int, elapsed: float) -> None:
        if self.fixed is not None or items == 0:
            return
        per_item = elapsed / items
        wanted = self.cap if per_item <= 0 else int(self.target / per_item)
        self.size = max(1, min(self.cap, wanted))


class ParentCache:
    """Process mode's cache, kept in the parent: looked up before dispatch, stored after.

    Items with one key in one map are computed once: the others wait for its outcome.
    """

    def __init__(self, step: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.step = step
        self.args = args
        self.kwargs = kwargs
        self.waiting: dict[Any, list[int]] = {}

    def lookup(self, item: Any) -> tuple[str, Any]:
        """("hit", value), ("uncached", None), ("first", key), ("wait", key) or
        ("fail", error): a custom `cache_key` that raised fails the item."""
        step = self.step
        try:
            key = step.key((item, *self.args), self.kwargs)
        except Exception as bug:
            return "fail", bug
        if key is MISSING:
            return "uncached", MISSING
        if key in self.waiting:  # computing in this map already: not a miss of its own
            return "wait", key
        value = step.get(key)
        if value is not MISSING:
            return "hit", value
        self.waiting[key] = []
        return "first", key

    def settle(self, key: Any, ok: bool, value: Any) -> list[int]:
        """Store a success; the indices of this map's other items with the same key,
        which count as cache hits when it succeeded (as they would in one process)."""
        others = self.waiting.pop(key, [])
        if ok:
            self.step.store(key, value)
            for _ in others:
                self.step.count_hit()
        return others


class Batch(NamedTuple):
    """Outcomes of some items: input indices, values (None where failed), failures by
    position in this batch. The consumers handle whole chunks at once: per-item work in
    the parent is what makes a map of tiny items slow. Without a cache, `indices` is a
    `range` (a chunk is a run of consecutive items), so results go in by slice."""

    indices: Sequence[int]
    values: list[Any]
    failures: dict[int, Any]


class _Chunk(NamedTuple):
    indices: Sequence[int]  # a range without a cache
    items: list[Any]
    keys: list[Any] | None  # cache keys (process mode), MISSING where uncached; None: no cache
    resent: bool = False  # sent again, item alone, after its task failed as a whole
    # resume=: the items' digest (a run of them), or one per item (taken one by one)
    digest: bytes | list[bytes | None] | None = None


class Dispatcher:
    """Feeds chunks to an engine, at most `depth` per worker queued (the map says how
    many: 4 in process mode over an input of known length, else 2), and yields `Batch`es
    in completion order; sends again what a dead worker took down with it."""

    def __init__(
        self,
        engine: Engine,
        items: Iterable[Any],
        sizer: ChunkSizer,
        workers: int,
        cache: ParentCache | None = None,
        low: Callable[[], int] | None = None,
        depth: int = 2,
        deliver: Callable[[list[Any]], None] | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.engine = engine
        # Where the events a process worker sent back with a chunk go (the parent's
        # observer of the function, which sends them to the parent's hooks).
        self.deliver = deliver
        self.sizer = sizer
        self.limit = depth * workers
        self.cache = cache
        self.journal = journal  # resume=: what finished before, and where to record
        # For an ordered stream: the next index its consumer waits for. Results that
        # finish ahead of it wait in the consumer's memory, so no chunk is taken that
        # would reach further ahead than the in-flight bound (`depth` chunks per
        # worker): a slow item must not let that buffer, or the pull from a generator,
        # grow.
        self.low = low
        self.items = iter(items)
        self.source = enumerate(self.items)  # with the cache: item by item
        self.taken = 0  # without: chunks sliced off `items` at C speed
        self.exhausted = False
        self.inflight: dict[int, _Chunk] = {}
        self.redo: deque[_Chunk] = deque()
        # Cluster engines fail a task as a whole when workers die under it.
        self.resend = bool(getattr(engine, "resends_crashed", False))
        self.number = 0
        # The map's item events: told which items each submitted chunk holds.
        self.on_submit: Callable[[Sequence[int]], None] | None = None

    def __iter__(self) -> Iterator[Batch]:
        engine, inflight = self.engine, self.inflight
        last_round = time.monotonic()
        while True:
            yield from self._fill()
            if not inflight:
                return
            try:
                number, answer = engine.results.get(timeout=TICK)
            except queue.Empty:
                number, answer = -1, None
            now = time.monotonic()
            if now - last_round >= TICK:
                last_round = now
                yield from self._supervise()
            chunk = inflight.pop(number, None)
            if chunk is None:
                continue
            if isinstance(answer, WorkerCrashedError) and self.resend and not chunk.resent:
                # A cluster fails every task that was on workers that died (Dask: 4
                # deaths while it ran), the innocent ones too: each item goes once more
                # on its own, alone on the cluster (`_isolating`), and only the one that
                # kills workers again fails.
                self._split(chunk, resent=True)
                continue
            yield from self._settle(chunk, self._outcome(chunk, answer))

    def _fill(self) -> Iterator[Batch]:
        """Submit chunks until the queue is full; yields cache hits met on the way."""
        while len(self.inflight) < self.limit and (self.redo or not self.exhausted):
            if self.resend and self._isolating():
                return
            if not self.redo and self.inflight and self._too_far_ahead():
                return
            if self.redo:
                chunk = self.redo.popleft()
            elif self.cache is None:
                chunk = self._slice() if self.journal is None else (yield from self._resume())
                if not chunk.items:
                    continue
            else:
                chunk = yield from self._take()
                if not chunk.items:
                    continue
            try:
                self.engine.submit(self.number, chunk.items)
            except UnsendableError as error:
                yield from self._unsendable(chunk, error)
                continue
            self.inflight[self.number] = chunk
            self.number += 1
            if self.on_submit is not None:
                self.on_submit(chunk.indices)

    def _isolating(self) -> bool:
        """Whether a resent chunk runs, or waits to run, alone on the cluster.

        A cluster counts a worker's death against every task on that worker, queued
        ones too (Dask assigns a worker with one thread two tasks). A resent item that
        shared a worker with the one that kills it would be failed with it again, so
        each resent item waits until nothing else is in flight, and runs alone: one in
        flight is the only one."""
        inflight, redo = self.inflight, self.redo
        if not inflight:
            return False
        if redo and redo[0].resent:
            return True
        return len(inflight) == 1 and next(iter(inflight.values())).resent

    def _unsendable(self, chunk: _Chunk, error: UnsendableError) -> Iterator[Batch]:
        """Items that could not be pickled: a chunk goes again item by item, and an item
        that cannot travel fails alone, naming its index and type."""
        if len(chunk.items) > 1:
            self._split(chunk, resent=chunk.resent)
            return
        index, item = chunk.indices[0], chunk.items[0]
        kind = type(item)
        failure = TypeError(
            f"item {index} ({kind.__module__}.{kind.__qualname__}) cannot be sent to a "
            f"worker process: {error}. Items travel pickled: pass something picklable "
            "(e.g. a list instead of a generator, a path instead of an open file)"
        )
        failure.__cause__ = error.__cause__
        yield from self._settle(chunk, Outcome([None], {0: failure}, 0))

    def _too_far_ahead(self) -> bool:
        low, size = self.low, self.sizer.size
        return low is not None and self.taken + size - low() > self.limit * size

    def _slice(self, size: int | None = None) -> _Chunk:
        """The next run of items, sliced off the input at C speed (no cache)."""
        size, start = size or self.sizer.size, self.taken
        items = list(itertools.islice(self.items, size))
        self.taken = start + len(items)
        if len(items) < size:
            self.exhausted = True
        return _Chunk(range(start, self.taken), items, None)

    def _resume(self) -> Generator[Batch, None, _Chunk]:
        """The next chunk to run under `resume=`; yields what the journal has done.

        Chunks are cut at the journal's recorded boundaries, so that the same items give
        the same digest; a recorded run whose items are unchanged is served, but for its
        failed items, which run again (each alone, as a crashed chunk's items do)."""
        journal = self.journal
        assert journal is not None
        while not self.exhausted:
            start = self.taken
            entry = journal.at(start)
            chunk = self._slice(entry.size if entry else journal.room(start, self.sizer.size))
            digest = digest_of(chunk.items)
            if entry is None or digest != entry.digest or digest is None:
                return chunk._replace(digest=digest)
            done = [offset for offset in range(entry.size) if offset not in entry.failed]
            if len(done) == entry.size:
                yield Batch(chunk.indices, entry.values, {})
                continue
            if done:
                yield Batch([start + o for o in done], [entry.values[o] for o in done], {})
            for offset in sorted(entry.failed):
                item, index = chunk.items[offset], start + offset
                one = digest_of([item])
                value = journal.single(index, one)
                if value is not NOT_DONE:  # it ran again, alone, and succeeded
                    yield Batch([index], [value], {})
                else:
                    self.redo.append(_Chunk(range(index, index + 1), [item], None, digest=one))
        return _Chunk(range(self.taken, self.taken), [], None)

    def _take(self) -> Generator[Batch, None, _Chunk]:
        """The next chunk, item by item through the cache; yields the hits met."""
        cache, size = self.cache, self.sizer.size
        assert cache is not None
        journal = self.journal
        indices: list[int] = []
        items: list[Any] = []
        keys: list[Any] = []
        digests: list[bytes | None] | None = None if journal is None else []
        for index, item in self.source:
            self.taken = index + 1
            one = None
            if journal is not None:  # resume=: items taken one by one are recorded so
                one = digest_of([item])
                done = journal.single(index, one)
                if done is not NOT_DONE:
                    yield Batch([index], [done], {})
                    continue
            verdict, value = cache.lookup(item)
            if verdict in {"hit", "fail"}:
                ok = verdict == "hit"
                if ok and journal is not None:
                    journal.add([index], [one], [value], {})
                yield Batch([index], [value if ok else None], {} if ok else {0: value})
                continue
            if verdict == "wait":
                cache.waiting[value].append(index)
                if journal is not None:
                    journal.waiting[index] = one
                continue
            indices.append(index)
            items.append(item)
            keys.append(value)  # MISSING when uncached
            if digests is not None:
                digests.append(one)
            if len(items) >= size:
                return _Chunk(indices, items, keys, digest=digests)
        self.exhausted = True
        return _Chunk(indices, items, keys, digest=digests)

    def _outcome(self, chunk: _Chunk, answer: Any) -> Outcome:
        if isinstance(answer, BaseException):  # the engine failed the chunk as a whole
            error = answer if isinstance(answer, Exception) else WorkerCrashedError(repr(answer))
            return Outcome(
                [None] * len(chunk.items), dict.fromkeys(range(len(chunk.items)), error), 0
            )
        outcome: Outcome = self.engine.decode(answer)
        if outcome.fatal is not None:
            raise outcome.fatal
        self.sizer.observe(len(outcome.results), outcome.elapsed)
        return outcome

    def _supervise(self) -> Iterator[Batch]:
        """A dead worker's chunk: a lone item fails; a longer chunk is sent again as
        single items, so the item that kills a worker is found and fails alone (the
        results of the items before it died with the worker, so they run again)."""
        for number, error in self.engine.supervise(self.inflight):
            chunk = self.inflight.pop(number)
            if len(chunk.items) == 1:
                yield from self._settle(chunk, Outcome([None], {0: error}, 0))
                continue
            self._split(chunk, resent=False)

    def _split(self, chunk: _Chunk, *, resent: bool) -> None:
        """Send the chunk's items again, each in a chunk of its own."""
        journal, digests = self.journal, chunk.digest
        for offset, (index, item) in enumerate(zip(chunk.indices, chunk.items, strict=True)):
            # A cache key may be anything the user's cache_key returns, None too.
            keys = None if chunk.keys is None else [chunk.keys[offset]]
            digest: bytes | list[bytes | None] | None = None
            if isinstance(digests, list):
                digest = [digests[offset]]
            elif journal is not None:  # alone now: recorded alone
                digest = digest_of([item])
            self.redo.append(_Chunk(range(index, index + 1), [item], keys, resent, digest))

    def _settle(self, chunk: _Chunk, outcome: Outcome) -> Iterator[Batch]:
        if outcome.events and self.deliver is not None:  # before the results, as in-process
            self.deliver(outcome.events)
        journal = self.journal
        if journal is not None:  # written before the results go on: a kill loses none
            journal.add(chunk.indices, chunk.digest, outcome.results, outcome.failures)
            journal.flush()
        yield Batch(chunk.indices, outcome.results, outcome.failures)
        cache = self.cache
        if cache is None or chunk.keys is None:
            return
        for offset, key in enumerate(chunk.keys):
            if key is MISSING:
                continue
            ok = offset not in outcome.failures
            value = outcome.results[offset] if ok else outcome.failures[offset]
            others = cache.settle(key, ok, value)
            if others and journal is not None and ok:
                digests = [journal.waiting.pop(index, None) for index in others]
                journal.add(others, digests, [value] * len(others), {})
                journal.flush()
            if others:
                count = len(others)
                yield Batch(
                    others,
                    [value if ok else None] * count,
                    {} if ok else dict.fromkeys(range(count), value),
                )
