"""Dispatch of `@opmap` items: chunked pools for process and thread mode, tasks for async.

Process and thread mode run on twat-mp's pool contexts (pathos pools over `multiprocess`;
process mode on the stdlib's `multiprocessing.Pool` when `PROCESS_POOL` is "stdlib"),
under the map's start method, each map with a pool of its own (a unique pathos id, so
concurrent maps never share or leak one). The engine never sees an exception: workers
answer every chunk with an `Outcome`. What the engine cannot contain on its own is
contained here:

- a worker that dies (``os._exit``, a signal, the OOM killer) loses its task and the pool
  would wait for it forever; `ProcessEngine.supervise` finds the dead worker's chunk from
  its slot; a lone item fails with `WorkerCrashedError`, a longer chunk is sent again item
  by item to find the one at fault (the pool has already started a fresh worker);
- Ctrl-C, cancellation, an early `break` out of `imap`, or any error stops dispatch and
  terminates the pool before leaving twat-mp's context (whose exit would otherwise join
  busy workers and hang), so no worker process outlives the call.

Chunks adapt to the items: they grow until one takes about `target` seconds, and never
exceed a quarter of each worker's share of a known-length input.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import queue
import time
import uuid
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from typing import Any, NamedTuple

from opero._cache.step import MISSING
from opero._maps.start import WorkerStart, context_for
from opero._maps.worker import (
    SLOT_FIELDS,
    Job,
    Outcome,
    UnsendableError,
    decode_outcome,
    encode_items,
    init_process_worker,
    run_chunk_in_process,
    run_chunk_local,
)
from opero.exceptions import WorkerCrashedError

PROCESS_POOL = "twat-mp"  # or "stdlib": measured side by side in benchmarks/bench_opmap.py
TICK = 0.1  # seconds between supervision rounds while waiting for results
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


class ThreadEngine:
    """twat-mp's `ThreadPool` context with `workers` threads; chunks run in-process."""

    target = 0.002

    def __init__(self, job: Job, workers: int) -> None:
        from pathos.threading import ThreadPool as PathosThreadPool
        from twat_mp import MultiPool

        self.job = job
        self.results: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        # Set when the map stops early (Ctrl-C, an error, leaving imap): chunks already
        # handed to threads start no further item (a chunk may hold a minute of work).
        self.stop = [False]
        factory = functools.partial(PathosThreadPool, id=f"opero-{uuid.uuid4().hex}")
        self._context = MultiPool(pool_class=factory, nodes=workers)  # type: ignore[arg-type]
        pool: Any = self._context.__enter__()
        self._raw = pool._serve()

    def submit(self, number: int, items: list[Any]) -> None:
        self._raw.apply_async(
            run_chunk_local,
            (self.job, items, self.stop),
            callback=lambda answer: self.results.put((number, answer)),
            error_callback=lambda error: self.results.put((number, error)),
        )

    def decode(self, answer: Any) -> Outcome:
        return answer  # type: ignore[no-any-return]

    def supervise(self, inflight: dict[int, Any]) -> list[tuple[int, Exception]]:
        return []  # a thread cannot die on its own

    def close(self, *, clean: bool) -> None:
        if not clean:
            self.stop[0] = True  # no further item starts; running items finish
            self._raw.terminate()  # no new chunk starts
        self._context.__exit__(None, None, None)


class ProcessEngine:
    """A pool of `workers` processes for one map, on any start method.

    `kind="twat-mp"`: twat-mp's `MultiPool` context over a pathos `ProcessPool` (on
    `multiprocess`, given the start method's context); `kind="stdlib"`:
    `multiprocessing.Pool`. `start` is what each worker starts from
    (`opero._maps.start.WorkerStart`): under fork the job itself, inherited with
    lambdas and closures and never pickled; under forkserver and spawn its payload.
    """

    target = 0.02

    def __init__(
        self, start: WorkerStart, workers: int, kind: str = "twat-mp", method: str = "fork"
    ) -> None:
        self.results: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self.capacity = max(64, workers * 16)
        context = context_for(kind, method)
        self.slots = context.Array("q", self.capacity * SLOT_FIELDS, lock=False)
        initargs = (start, self.slots, self.capacity)
        self._context: Any = None
        try:
            self._raw = self._start(kind, context, workers, initargs)
        except Exception as exc:
            if method == "fork":
                raise
            # The fork server died importing a main module that maps at import: the pool
            # meets its closed pipe. Other failures (EMFILE, ENOMEM) keep their own error.
            cut = (EOFError, BrokenPipeError, ConnectionResetError)
            if not (isinstance(exc.__cause__, cut) or isinstance(exc, cut) or "EOF" in str(exc)):
                raise
            who = "each worker and the fork server" if method == "forkserver" else "each worker"
            raise RuntimeError(
                f"opmap(): the {method} pool could not start ({type(exc).__name__}: {exc}). "
                f"Under {method} {who} imports your main module: guard the script's top "
                'level with `if __name__ == "__main__":`'
            ) from exc
        self._known: dict[int, Any] = {}  # pid -> worker process, dead ones included
        self._suspects: set[tuple[int, int]] = set()
        self._claimed: set[int] = {0}  # pids seen in a slot: workers that started
        self.method = method
        self.max_start_deaths = 2 * workers + 2
        for process in self._raw._pool:
            self._known[process.pid] = process

    def _start(self, kind: str, context: Any, workers: int, initargs: tuple[Any, ...]) -> Any:
        if kind != "twat-mp":
            return context.Pool(workers, init_process_worker, initargs)
        from pathos.multiprocessing import ProcessPool as PathosProcessPool
        from twat_mp import MultiPool

        factory = functools.partial(
            PathosProcessPool,
            id=f"opero-{uuid.uuid4().hex}",
            initializer=init_process_worker,
            initargs=initargs,
            context=context,
        )
        self._context = MultiPool(pool_class=factory, nodes=workers)  # type: ignore[arg-type]
        return self._context.__enter__()._serve()

    def submit(self, number: int, items: list[Any]) -> None:
        self._raw.apply_async(
            run_chunk_in_process,
            (number, encode_items(items)),
            callback=lambda answer: self.results.put((number, answer)),
            error_callback=lambda error: self.results.put((number, error)),
        )

    def decode(self, answer: Any) -> Outcome:
        return decode_outcome(answer)

    def supervise(self, inflight: dict[int, Any]) -> list[tuple[int, Exception]]:
        """Chunks whose worker died while running them, with the error for the item.

        A death is reported on the second round that sees it, so that a result the
        worker sent just before dying is received first.
        """
        current = list(self._raw._pool)
        for process in current:
            self._known[process.pid] = process
        running = {process.pid for process in current}
        crashed: list[tuple[int, Exception]] = []
        slots = self.slots
        claimed = self._claimed
        claimed.update(pid for pid in slots[0 : self.capacity * SLOT_FIELDS : SLOT_FIELDS])
        self._check_starts()
        for base in range(0, self.capacity * SLOT_FIELDS, SLOT_FIELDS):
            pid = slots[base]
            if not pid:
                continue
            process = self._known.get(pid)
            # Unknown and not in the pool: it died before any round saw it.
            dead = process.exitcode is not None if process is not None else pid not in running
            if not dead:
                continue
            number = slots[base + 1] - 1
            if number not in inflight:
                continue
            if (pid, number) not in self._suspects:
                self._suspects.add((pid, number))
                continue
            self._suspects.discard((pid, number))
            slots[base] = 0
            code = None if process is None else process.exitcode
            how = "died"
            if code is not None:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            error = WorkerCrashedError(f"the worker process (pid {pid}) {how} during this item")
            crashed.append((number, error))
        return crashed

    def _check_starts(self) -> None:
        """Workers that keep dying before they run anything (the pool replaces them
        forever): a script without ``if __name__ == "__main__":`` under spawn or
        forkserver, whose workers start the map again as they import it, or a payload
        that does not load. Fail the map instead of hanging."""
        dead = [
            p
            for pid, p in self._known.items()
            if pid not in self._claimed and p.exitcode is not None
        ]
        if len(dead) < self.max_start_deaths:
            return
        codes = sorted({p.exitcode for p in dead})
        raise RuntimeError(
            f"opmap(): {len(dead)} worker processes exited while starting (exit codes "
            f"{codes}), before running any item; their error is on stderr. Under the "
            f"{self.method} start method each worker imports your main module: guard the "
            'script\'s top level with `if __name__ == "__main__":`, and check that the '
            "function's module imports cleanly on its own"
        )

    def close(self, *, clean: bool) -> None:
        # Stopped, not joined, even after a clean map (as `with multiprocessing.Pool()`
        # does): every answer is in, workers flush their output after each chunk, and
        # letting them exit on their own costs a spawned worker's full interpreter
        # shutdown (~60 ms here). Joining would also wait for every task the pool knows
        # of, a dead worker's lost one included, and twat-mp's context exit joins.
        self._raw.terminate()
        if self._context is not None:
            self._context.__exit__(None, None, None)
        else:
            self._raw.close()
            self._raw.join()


Engine = Any  # ThreadEngine, ProcessEngine or cluster.DaskEngine


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
    ) -> None:
        self.engine = engine
        # Where the events a process worker sent back with a chunk go (the parent's
        # observer of the function, which sends them to the parent's hooks).
        self.deliver = deliver
        self.sizer = sizer
        self.limit = depth * workers
        self.cache = cache
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
                # on its own, and only the one that kills workers again fails.
                self._split(chunk, resent=True)
                continue
            yield from self._settle(chunk, self._outcome(chunk, answer))

    def _fill(self) -> Iterator[Batch]:
        """Submit chunks until the queue is full; yields cache hits met on the way."""
        while len(self.inflight) < self.limit and (self.redo or not self.exhausted):
            if not self.redo and self.inflight and self._too_far_ahead():
                return
            if self.redo:
                chunk = self.redo.popleft()
            elif self.cache is None:
                chunk = self._slice()
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

    def _slice(self) -> _Chunk:
        """The next run of items, sliced off the input at C speed (no cache)."""
        size, start = self.sizer.size, self.taken
        items = list(itertools.islice(self.items, size))
        self.taken = start + len(items)
        if len(items) < size:
            self.exhausted = True
        return _Chunk(range(start, self.taken), items, None)

    def _take(self) -> Generator[Batch, None, _Chunk]:
        """The next chunk, item by item through the cache; yields the hits met."""
        cache, size = self.cache, self.sizer.size
        assert cache is not None
        indices: list[int] = []
        items: list[Any] = []
        keys: list[Any] = []
        for index, item in self.source:
            self.taken = index + 1
            verdict, value = cache.lookup(item)
            if verdict in {"hit", "fail"}:
                ok = verdict == "hit"
                yield Batch([index], [value if ok else None], {} if ok else {0: value})
                continue
            if verdict == "wait":
                cache.waiting[value].append(index)
                continue
            indices.append(index)
            items.append(item)
            keys.append(value)  # MISSING when uncached
            if len(items) >= size:
                return _Chunk(indices, items, keys)
        self.exhausted = True
        return _Chunk(indices, items, keys)

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
        for offset, (index, item) in enumerate(zip(chunk.indices, chunk.items, strict=True)):
            # A cache key may be anything the user's cache_key returns, None too.
            keys = None if chunk.keys is None else [chunk.keys[offset]]
            self.redo.append(_Chunk(range(index, index + 1), [item], keys, resent))

    def _settle(self, chunk: _Chunk, outcome: Outcome) -> Iterator[Batch]:
        if outcome.events and self.deliver is not None:  # before the results, as in-process
            self.deliver(outcome.events)
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
            if others:
                count = len(others)
                yield Batch(
                    others,
                    [value if ok else None] * count,
                    {} if ok else dict.fromkeys(range(count), value),
                )


@contextlib.contextmanager
def engine_for(mode: str, job: Any, workers: int, where: Any = None) -> Iterator[Engine]:
    """A pool for one map; terminated unless the map ran to its end. For the cluster
    modes, `job` is the payload remote workers build the pipeline from and `where` the
    Dask client or the Ray address; for process mode, `job` is the `WorkerStart` and
    `where` the start method."""
    engine: Engine
    if mode == "dask":
        from opero._maps.cluster import DaskEngine

        engine = DaskEngine(job, workers, where)
    elif mode == "ray":
        from opero._maps.cluster import RayEngine

        engine = RayEngine(job, workers, where)
    elif mode == "process":
        engine = ProcessEngine(job, workers, PROCESS_POOL, where)
    else:
        engine = ThreadEngine(job, workers)
    clean = False
    try:
        yield engine
        clean = True
    finally:
        engine.close(clean=clean)


async def dispatch_async(
    call: Callable[..., Awaitable[Any]],
    items: Iterable[Any] | AsyncIterator[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    workers: int,
    low: Callable[[], int] | None = None,
) -> AsyncGenerator[Batch]:
    """Every item's outcome, in completion order, from `workers` tasks on this loop.

    `low`, for an ordered stream, is the next index its consumer waits for: no item is
    taken more than 2 per worker ahead of it, so results that finish ahead of a slow
    item (and the pull from the input) stay bounded.

    Closing the generator (or cancelling its consumer) cancels the running items and
    waits for them. A BaseException from an item (not an Exception) stops the map and
    propagates, as it would from a plain call.
    """
    done: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=2 * workers)
    source = _Numbered(items, low, 2 * workers)
    fatal: list[BaseException] = []

    async def worker() -> None:
        try:
            async for index, item in source:
                try:
                    value = await call(item, *args, **kwargs)
                except Exception as exc:
                    await done.put(Batch([index], [None], {0: exc}))
                else:
                    await done.put(Batch([index], [value], {}))
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the consumer stopped: it is not waiting for this worker's end
            fatal.append(exc)  # an item's own CancelledError: it stops the map
        except BaseException as exc:
            fatal.append(exc)
        await done.put(None)

    tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
    running = workers
    try:
        while running:
            entry = await done.get()
            if entry is None:
                running -= 1
                if fatal:
                    raise fatal[0]
                continue
            yield entry
            source.advanced()  # the consumer asks for more: it may wait for a later index
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Numbered:
    """(index, item) pairs from a sync or async iterable, shared by the worker tasks;
    with `low`, no index `window` or more past `low()` is handed out until it moves."""

    def __init__(
        self,
        items: Iterable[Any] | AsyncIterator[Any],
        low: Callable[[], int] | None = None,
        window: int = 0,
    ) -> None:
        self._index = 0
        if isinstance(items, AsyncIterator):
            self._async: AsyncIterator[Any] | None = items
            self._sync: Iterator[Any] | None = None
        else:
            self._async = None
            self._sync = iter(items)
        self._lock = asyncio.Lock()
        self._low = low
        self._window = window
        self._moved = asyncio.Event()  # set (and replaced) each time `low` may have moved
        self._waiting = 0

    def __aiter__(self) -> _Numbered:
        return self

    def advanced(self) -> None:
        """Wake the tasks waiting for the consumer to move on; they check again."""
        if self._waiting:
            self._moved.set()
            self._moved = asyncio.Event()

    async def _within_window(self) -> None:
        low = self._low
        while low is not None and self._index - low() >= self._window:
            self._waiting += 1
            try:
                await self._moved.wait()
            finally:
                self._waiting -= 1

    async def __anext__(self) -> tuple[int, Any]:
        if self._sync is not None:
            await self._within_window()  # nothing awaits between this check and `next`
            item = next(self._sync, _END)
        else:
            assert self._async is not None
            async with self._lock:  # an async generator must not be entered twice at once
                await self._within_window()
                item = await anext(self._async, _END)
        if item is _END:
            raise StopAsyncIteration
        index = self._index
        self._index += 1
        return index, item


_END: Any = object()
