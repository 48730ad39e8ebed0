"""What runs inside an `@opmap` worker: one chunk of items through the item pipeline.

No exception ever leaves a chunk. Each item's outcome is recorded (its result, or its
exception in a form the parent can rebuild), so a failing item never costs the others,
and the pool engine never sees an exception it could mishandle.

Process workers get their pipeline once, through the pool initializer: inherited under
fork, built from a cloudpickle payload under forkserver and spawn (`opero._maps.start`),
never pickled per item. They take their items as stdlib-pickled bytes and answer in bytes:
the engine (multiprocess, on dill) then only moves bytes, in frames that the pool pickles
with the C pickler too (`opero._maps.framing`), so dill's pure-Python pickler stays off
the hot path. Before each chunk a worker writes the chunk's number into its slot of a
shared array, so the parent can tell which chunk a dead worker was running.
"""

from __future__ import annotations

import _signal
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from opero._maps.start import WorkerStart
from opero._observe.events import Event, forward_events
from opero._pipeline.direct import Direct, run_direct
from opero._utils import process_role
from opero.exceptions import RemoteError, WorkerCrashedError

# Slot layout in the shared array: [pid, chunk number + 1 (0: none)] per worker.
SLOT_FIELDS = 2


class Outcome:
    """A chunk's answer: results in item order, failures by offset, seconds spent.

    `fatal` holds a BaseException (not an Exception) raised by an item in a thread worker;
    the parent re-raises it after stopping the map. `events` are those a process worker
    collected for the parent to deliver to its hooks.
    """

    __slots__ = ("elapsed", "events", "failures", "fatal", "results")
    # What pickle would compute in Python (copyreg._slotnames) and store on the class,
    # in each worker at its first answer: written here, no page is copied for it.
    __slotnames__: ClassVar[list[str]] = list(__slots__)

    def __init__(
        self,
        results: list[Any],
        failures: dict[int, BaseException],
        elapsed: float,
        fatal: BaseException | None = None,
    ) -> None:
        self.results = results
        self.failures = failures
        self.elapsed = elapsed
        self.fatal = fatal
        self.events: list[Event] | None = None


class Job:
    """What every worker needs: the item pipeline and the map's extra arguments."""

    __slots__ = ("args", "direct", "is_async", "kwargs", "pipeline")

    def __init__(
        self,
        pipeline: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        is_async: bool,
        direct: Direct | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.args = args
        self.kwargs = kwargs
        self.is_async = is_async
        self.direct = direct  # None for async pipelines (`direct_of`)


def run_items(
    job: Job, items: Iterable[Any], portable: Callable[[Exception], Exception] | None = None
) -> Outcome:
    """Run a chunk's items; every item's result or exception is recorded.

    The loop runs without per-item bookkeeping until an item raises (tiny items are the
    case to be fast for). `portable` turns exceptions into what can travel back from a
    process. A BaseException that is not an Exception (SystemExit, KeyboardInterrupt)
    ends a thread worker's chunk as `fatal`; in a process worker it fails the item.
    """
    started = time.perf_counter()
    results: list[Any] = []
    failures: dict[int, BaseException] = {}
    append = results.append
    pipeline, args, kwargs, direct = job.pipeline, job.args, job.kwargs, job.direct
    runner = None
    if job.is_async:  # asyncio costs a spawned worker ~40 ms to import: only when needed
        import asyncio

        runner = asyncio.Runner()
    remaining = iter(items)
    try:
        while True:
            try:
                if direct is not None:
                    failed = run_direct(direct, pipeline, remaining, args, kwargs, append)
                    if failed is not None:
                        failures[len(results)] = failed if portable is None else portable(failed)
                        append(None)
                        continue
                elif runner is not None:
                    for item in remaining:
                        append(runner.run(pipeline(item, *args, **kwargs)))
                else:
                    _run_pipeline(pipeline, remaining, args, kwargs, append)
            except Exception as exc:
                failures[len(results)] = exc if portable is None else portable(exc)
                append(None)
                continue
            except BaseException as exc:
                if portable is None:
                    return Outcome(results, failures, time.perf_counter() - started, fatal=exc)
                failures[len(results)] = WorkerCrashedError(
                    f"the item raised {type(exc).__name__} in worker process {os.getpid()}; "
                    "the worker was kept, the item failed"
                )
                append(None)
                continue
            break
    finally:
        if runner is not None:
            runner.close()
    return Outcome(results, failures, time.perf_counter() - started)


def _run_pipeline(
    pipeline: Callable[..., Any],
    remaining: Iterator[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    append: Callable[[Any], None],
) -> None:
    """Sync items, each through the pipeline. What raises here fails the item."""
    if args or kwargs:
        for item in remaining:
            append(pipeline(item, *args, **kwargs))
    else:
        for item in remaining:
            append(pipeline(item))


def run_chunk_local(job: Job, items: list[Any], stop: list[bool]) -> Outcome:
    """A thread worker's chunk: exceptions stay objects, nothing is pickled. Once
    ``stop[0]`` is set (the map stopped early), no further item of the chunk starts."""
    return run_items(job, _until_stopped(items, stop))


def _until_stopped(items: list[Any], stop: list[bool]) -> Iterator[Any]:
    for item in items:
        if stop[0]:
            return
        yield item


# --- process workers -------------------------------------------------------------------

_job: Job | None = None
_events: list[Event] = []  # a process worker's events of the chunk it runs
_slots: Any = None
_slot_base = 0


def build_job(payload: bytes) -> Job:
    """A worker's `Job`, built from what `opero._maps.start.job_payload` packed."""
    import cloudpickle

    from opero._pipeline.build import decorate, is_async_callable
    from opero._pipeline.direct import direct_of

    func, options, args, kwargs = cloudpickle.loads(payload)
    pipeline = decorate(func, options)
    return Job(pipeline, args, kwargs, is_async=is_async_callable(func), direct=direct_of(pipeline))


def init_process_worker(start: WorkerStart, slots: Any, capacity: int) -> None:
    """Pool initializer: keep the pipeline, claim a slot, leave Ctrl-C to the parent.

    The parent owns interruption: on Ctrl-C (which a terminal sends to the whole process
    group) it terminates the pool, so workers ignore SIGINT instead of dying mid-item.
    A worker whose parent dies (killed, so it could not terminate the pool) exits.
    """
    global _job, _slots, _slot_base  # noqa: PLW0603 - per-process worker state
    # The C function: `signal.signal` converts to and from enums, whose first use in a
    # fresh worker cost ~140 us of its ~430 us start (pages copied on write after fork).
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    # This process is ours: a sync attempt timeout can interrupt the item for real. The
    # timeout module turns SIGALRM on at its first timed attempt here (importing it now
    # would delay each worker's first chunk by the import).
    process_role.POOL_WORKER = True
    # Events go back to the parent with each chunk: hooks here are copies (or, under
    # spawn and forkserver, stand-ins) the parent never sees (metrics, exporters).
    forward_events(_events)
    _exit_with_parent()
    _job = start.job if isinstance(start.job, Job) else _built_job(start)
    # Claimed last: a worker whose job does not load dies unclaimed, and the parent
    # counts it as one that exited while starting (ProcessEngine._check_starts).
    process = _current_process()
    identity = process._identity
    number = identity[-1] if identity else os.getpid()
    _slots = slots
    _slot_base = (number % capacity) * SLOT_FIELDS
    slots[_slot_base] = os.getpid()
    slots[_slot_base + 1] = 0


def _built_job(start: WorkerStart) -> Job:
    """Under forkserver and spawn: the parent's view, its testing mode and listeners,
    then the job built from its payload (with the map's shared rate limiter)."""
    _take_parents_view(start)
    active, max_attempts = start.testing
    if active:
        from opero._policies.testing_mode import switch_on

        switch_on(max_attempts)
    if start.observed:  # the parent has global hooks: collect every function's events
        from opero._observe.events import add_hook

        add_hook(_parent_listens)
    job = build_job(start.job)
    step = getattr(job.pipeline, "__opero_rate_limit__", None)
    if step is not None and start.limiter is not None:
        step.limiter = start.limiter
    return job


def _take_parents_view(start: WorkerStart) -> None:
    """The parent's environment and import path, before anything is imported."""
    if start.environ is not None:
        for name in [name for name in os.environ if name not in start.environ]:
            del os.environ[name]
        os.environ.update(start.environ)
    if start.sys_path is not None:
        sys.path[:] = start.sys_path


def _parent_listens(event: Event) -> None:
    """Stands in for the parent's global hooks; the parent delivers the events."""


def _current_process() -> Any:
    """This worker's process object: multiprocessing's, or multiprocess's in a
    twat-mp (pathos) worker, which numbers itself there."""
    import multiprocessing

    process = multiprocessing.current_process()
    if process._identity or "multiprocess" not in sys.modules:
        return process
    import multiprocess

    return multiprocess.current_process()


def _exit_with_parent() -> None:
    """Exit when the parent process dies: a killed parent cannot terminate its pool.

    A daemon thread waits on the parent's sentinel (a pipe, or a process handle on
    Windows, that the parent's death closes) under every start method."""
    import _thread
    import multiprocessing
    import threading

    # The module that started this worker: a stdlib worker may run inside a process
    # that multiprocess started, whose parent is not this worker's.
    module: Any = multiprocessing
    if not multiprocessing.current_process()._identity and "multiprocess" in sys.modules:
        module = sys.modules["multiprocess"]
    parent = module.parent_process()
    if parent is None:
        return
    sentinel = parent.sentinel
    if os.name == "posix" and isinstance(sentinel, int):
        # A pipe's end that reads as ended when the parent is gone: one blocking read,
        # in C. Waiting through `parent.join()` (selectors, a dummy thread) wrote ~20
        # more copy-on-write pages in each worker, on its first chunk's path.
        _thread.start_new_thread(_exit_at_end_of, (sentinel,))
        return

    def watch() -> None:
        threading.current_thread().name = "opero-parent-watch"  # listed, as a dummy
        parent.join()
        os._exit(3)

    # A bare thread: `threading.Thread.start` waits until the new thread runs, which
    # cost each worker 0.5-2 ms of its start while the pool's processes share the cores.
    _thread.start_new_thread(watch, ())


def _exit_at_end_of(sentinel: int) -> None:
    """Exit this worker once `sentinel` is readable: the parent died (or closed it)."""
    try:
        os.read(sentinel, 1)
    except OSError:  # not a pipe we can watch: the parent's death goes unnoticed here
        return
    os._exit(3)


def run_chunk_in_process(chunk_number: int, payload: bytes) -> bytes:
    """A process worker's chunk: items arrive pickled, the `Outcome` leaves pickled."""
    items = _loads(payload)
    assert _job is not None
    _slots[_slot_base + 1] = chunk_number + 1
    outcome = run_items(_job, items, portable_error)
    if _events:
        outcome.events = _events[:]
        _events.clear()
    _flush_output()  # the pool is terminated, not joined, once every chunk answered
    if process_role.INTERRUPTED:
        # A timer cut an item's code wherever it was (a lock may be left held): this
        # worker leaves once the answer is sent, and the pool starts a fresh one.
        from opero._maps.framing import leave_after_answer

        leave_after_answer()
    return encode_outcome(outcome)


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # a closed or broken stream is the item's business
            pass


def portable_error(exc: Exception) -> Exception:
    """`exc` if it survives the trip to the parent, else a `RemoteError` describing it.

    The worker's traceback is attached as a note, since pickling drops tracebacks.
    """
    text = "".join(traceback.format_exception(exc))
    try:
        exc.add_note(f"Traceback in worker process {os.getpid()}:\n{text.rstrip()}")
        _loads(_dumps(exc))  # e.g. an __init__ with two arguments pickles, but won't load
    except Exception:
        kind = type(exc)
        return RemoteError(f"{kind.__module__}.{kind.__qualname__}", _safe_str(exc), text)
    return exc


def encode_outcome(outcome: Outcome) -> bytes:
    """Pickle `outcome`; results that cannot travel become `RemoteError`s of their item."""
    try:
        return _dumps(outcome)
    except Exception:  # find the results at fault
        pass
    for offset, value in enumerate(outcome.results):
        if offset in outcome.failures:
            continue
        try:
            _dumps(value)
        except Exception as exc:
            outcome.results[offset] = None
            kind = type(value)
            outcome.failures[offset] = RemoteError(
                "PicklingError",
                f"the result ({kind.__module__}.{kind.__qualname__}) could not be sent "
                f"back from the worker process: {_safe_str(exc)}",
            )
    return _dumps(outcome)


def decode_outcome(data: bytes) -> Outcome:
    """The parent's side of `encode_outcome`."""
    outcome: Outcome = _loads(data)
    return outcome


class UnsendableError(Exception):
    """A chunk's items could not be pickled for a worker (the cause is chained): the
    dispatcher sends them one by one, and an item that cannot travel fails alone."""


def encode_items(items: list[Any]) -> bytes:
    """Pickle a chunk's items for a process worker; `UnsendableError` if they cannot be."""
    try:
        return _dumps(items)
    except Exception as exc:
        raise UnsendableError(_safe_str(exc)) from exc


def _dumps(value: Any) -> bytes:
    """Tagged bytes: the standard pickler, or dill for what it refuses (lambdas, ...).

    dill is imported only then: it takes ~30 ms to import, once per worker.
    """
    try:
        return b"P" + pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception:
        import dill

        return b"D" + bytes(dill.dumps(value))


def _loads(data: bytes) -> Any:
    if data[:1] == b"P":
        return pickle.loads(data[1:])
    import dill

    return dill.loads(data[1:])


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} whose str() failed>"
