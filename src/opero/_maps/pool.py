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

What goes to the engines, chunk by chunk, is decided in `opero._maps.dispatch`; async
mode runs tasks on the caller's loop instead (`opero._maps.tasks`).
"""

from __future__ import annotations

import contextlib
import functools
import queue
import uuid
from collections.abc import (
    Iterator,
)
from typing import Any

from opero._maps.start import WorkerStart, context_for
from opero._maps.worker import (
    SLOT_FIELDS,
    Job,
    Outcome,
    decode_outcome,
    encode_items,
    init_process_worker,
    run_chunk_in_process,
    run_chunk_local,
)
from opero.exceptions import WorkerCrashedError

PROCESS_POOL = "twat-mp"  # or "stdlib": measured side by side in benchmarks/bench_opmap.py
TICK = 0.1  # seconds between supervision rounds while waiting for results


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

        from opero._maps.framing import framed_context

        factory = functools.partial(
            PathosProcessPool,
            id=f"opero-{uuid.uuid4().hex}",
            initializer=init_process_worker,
            initargs=initargs,
            # The pool's own messages with the C pickler, not dill's pure-Python one.
            context=framed_context(context),
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
