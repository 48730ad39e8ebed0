"""The map machinery behind `@opmap`: one pipeline per decorated function, mapped.

Each item runs the same pipeline as an `@opero` call (the options apply per item). This
module builds the per-item pipeline once, and turns the dispatcher's per-item outcomes
(`opero._maps.pool`) into a list, a stream, or an `OpmapError` that keeps every other
item's result.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import (
    AsyncGenerator,
    Callable,
    Generator,
    Iterable,
    Sized,
)
from typing import TYPE_CHECKING, Any

from opero._cache.step import build_cache_step
from opero._maps.settings import CLUSTER_MODES, MapSettings
from opero._maps.signature import check_items, mapper_signature
from opero._pipeline.build import decorate, display_name, is_async_callable, options_for
from opero._pipeline.direct import direct_of
from opero._pipeline.options import OperoOptions
from opero.exceptions import OpmapError

if TYPE_CHECKING:
    from opero._maps.dispatch import Batch
    from opero._maps.journal import Journal
    from opero._maps.progress import Progress


class _Map:
    """One decorated function's map machinery; the public wrappers delegate here."""

    def __init__(self, func: Callable[..., Any], settings: MapSettings, options: OperoOptions):
        self.name = display_name(func)
        self.settings = settings
        self.options = options
        self.is_async = is_async_callable(func)
        self.cache_step = None
        self.func = func
        self.limiters: dict[tuple[str, str], Any] = {}
        # What `decorate` made: a function with the attributes `_attach` set on it.
        self.pipeline: Any
        if settings.mode == "process" or settings.mode in CLUSTER_MODES:
            # The cache lives in the parent; workers run the rest of the pipeline.
            self.pipeline = decorate(func, options._replace(cache=False))
            if options.cache:
                self.cache_step = build_cache_step(func, options)
                # Hits served here are the function's events (and count in its stats).
                self.cache_step.observer = self.pipeline.__opero_observer__
                self.cache_step.observer.cached = True
            if settings.mode in CLUSTER_MODES and options.stats:
                raise ValueError(
                    f"opmap(mode={settings.mode!r}): stats=True counts in this process, and "
                    "the items run on the cluster's workers; use on_event hooks there"
                )
            if settings.mode in CLUSTER_MODES and (
                options.rate_limit is not None and options.rate_limit_backend != "redis"
            ):
                raise ValueError(
                    f"opmap(mode={settings.mode!r}): a rate_limit over a cluster needs "
                    "rate_limit_backend='redis' (a local limit would hold per worker)"
                )
        else:
            self.pipeline = decorate(func, options)
        # Pool workers (process and thread mode) may call tiny items' function directly.
        self.direct = direct_of(self.pipeline)
        self.identity = ""
        if settings.resume is not None:
            from opero._maps.journal import identity_of

            self.identity = identity_of(func, settings.resume)

    def journal(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> contextlib.AbstractContextManager[Journal | None]:
        """resume=: this call's journal, open (and locked) for the map; else None."""
        if self.settings.resume is None:
            return contextlib.nullcontext()
        from opero._maps.journal import open_journal

        return open_journal(self.settings.resume, self.identity, self.name, args, kwargs)

    def start_method(self) -> str:
        from opero._maps.start import default_start_method

        return self.settings.start_method or default_start_method()

    def shared_limiter(self, kind: str, method: str) -> Any:
        """Process mode: one limit over all workers of every map of this function, in
        shared memory from the pool's own context (one per engine and start method)."""
        step = getattr(self.pipeline, "__opero_rate_limit__", None)
        if step is None or self.options.rate_limit_backend != "local":
            return None  # no limit, or Redis's, which every process shares already
        limiter = self.limiters.get((kind, method))
        if limiter is None:
            from opero._maps.start import context_for
            from opero._policies.rate_limit import SharedRateLimiter

            # The same rate and curve as this process's limit, in shared memory.
            adaptation = getattr(step.limiter, "adaptation", None)
            rate = adaptation.initial_rate() if adaptation else 1.0 / step.limiter.interval
            burst = getattr(step.limiter, "burst", 1)
            limiter = SharedRateLimiter(rate, context_for(kind, method), adaptation, burst)
            limiter = self.limiters.setdefault((kind, method), limiter)
        if method == "fork":  # the workers inherit the parent's pipeline: put it there
            step.limiter = limiter
        return limiter

    def process_start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, str]:
        """What this map's process workers start from (a `WorkerStart`), and how."""
        from opero._maps import pool
        from opero._maps.start import build_start
        from opero._maps.worker import Job

        method = self.start_method()
        limiter = self.shared_limiter(pool.PROCESS_POOL, method)
        job = None
        if method == "fork":
            job = Job(self.pipeline, args, kwargs, is_async=self.is_async, direct=self.direct)
        options = self.options._replace(cache=False)
        return build_start(
            self.func, options, args, kwargs, method=method, job=job, limiter=limiter
        ), method

    def workers(self, items: object = None) -> int:
        """Workers for a map of `items`: never more than it has items, when it has a
        length (a pool of 32 threads for 3 items costs 29 threads for nothing)."""
        assert self.settings.workers is not None
        total = _length(items)
        if total is None:
            return self.settings.workers
        return max(1, min(self.settings.workers, total))

    def outcomes(
        self,
        items: Iterable[Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        low: Callable[[], int] | None = None,
    ) -> Generator[Batch]:
        from opero._maps.dispatch import ChunkSizer, Dispatcher, ParentCache
        from opero._maps.pool import engine_for
        from opero._maps.worker import Job

        mode, workers = self.settings.mode, self.workers(items)
        cache = None if self.cache_step is None else ParentCache(self.cache_step, args, kwargs)
        if mode in CLUSTER_MODES:
            from opero._maps.start import job_payload

            options = self.options._replace(cache=False)
            remote = job_payload(self.func, options, args, kwargs, keep_hooks=True)
            where = self.settings.client if mode == "dask" else self.settings.address
            engines = engine_for(mode, remote, workers, where)
        elif mode == "process":
            start, method = self.process_start(args, kwargs)
            engines = engine_for(mode, start, workers, method)
        else:
            job = Job(self.pipeline, args, kwargs, is_async=self.is_async, direct=self.direct)
            engines = engine_for(mode, job, workers)
        total = _length(items)
        # Process mode keeps up to 4 chunks per worker of an input of known length in
        # flight: a small input goes out at once, as Pool.map sends it, and no chunk
        # waits for the round trip of another (which costs more than a chunk of tiny
        # items). A stream keeps 2 per worker: its pull from a generator stays small.
        depth = 4 if mode == "process" and total is not None else 2
        # Process workers send their events back with each chunk; the parent's
        # observer of the same pipeline delivers them to the parent's hooks.
        observer = getattr(self.pipeline, "__opero_observer__", None)
        deliver = observer.deliver if mode == "process" and observer is not None else None
        # The journal first: a map whose journal is in use starts no worker.
        with self.journal(args, kwargs) as journal, engines as engine:
            sizer = ChunkSizer(workers, total, self.settings.chunksize, engine.target)
            dispatcher = Dispatcher(
                engine, items, sizer, workers, cache, low, depth, deliver, journal
            )
            if observer is None:
                yield from dispatcher
                return
            from opero._maps.item_events import ItemEvents

            announce = ItemEvents(observer)
            dispatcher.on_submit = announce.started
            for batch in dispatcher:
                announce.finished(batch)
                yield batch

    def aoutcomes(
        self,
        items: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        low: Callable[[], int] | None = None,
    ) -> AsyncGenerator[Batch]:
        from opero._maps.item_events import ItemEvents
        from opero._maps.tasks import dispatch_async

        observer = getattr(self.pipeline, "__opero_observer__", None)
        announce = ItemEvents(observer) if observer is not None else None
        started = announce.started if announce is not None else None
        workers = self.workers(items)
        if self.settings.resume is None:
            batches = dispatch_async(
                self.pipeline, items, args, kwargs, workers, low, None, started
            )
        else:
            from opero._maps.tasks import dispatch_resumed

            journal = self.journal(args, kwargs)
            batches = dispatch_resumed(
                journal, self.pipeline, items, args, kwargs, workers, low, started
            )
        return batches if announce is None else _announced(batches, announce)

    def begin(self, items: Any) -> Progress:
        """A map of `items` starts: they are checked, and its progress bar made."""
        from opero._maps.progress import Progress

        check_items(self.name, items)
        return Progress(self.settings.progress, _length(items), self.name)

    def collect(self, batches: list[Batch]) -> list[Any]:
        """The result list, or `OpmapError` when items failed (unless return_exceptions)."""
        failures: dict[int, Any] = {}
        if self.settings.ordered:
            results: list[Any] = [None] * sum(len(batch.indices) for batch in batches)
            for indices, values, failed in batches:
                if type(indices) is range and indices.step == 1 and len(values) == len(indices):
                    results[indices.start : indices.stop] = values  # a chunk: no loop
                else:
                    for index, value in zip(indices, values, strict=True):
                        results[index] = value
                for offset, error in failed.items():
                    results[indices[offset]] = failures[indices[offset]] = error
        else:
            results = []
            for _, values, failed in batches:
                base = len(results)
                results.extend(values)
                for offset, error in failed.items():
                    results[base + offset] = failures[base + offset] = error
        if failures and not self.settings.return_exceptions:
            raise OpmapError(
                f"{len(failures)} of {len(results)} item{'' if len(results) == 1 else 's'} "
                f"of {self.name} failed",
                [failures[position] for position in sorted(failures)],
                results,
                failures,
            )
        return results

    def entries(self, batch: Batch) -> list[tuple[int, bool, Any]]:
        """A batch as (input index, succeeded, value or exception) per item."""
        indices, values, failed = batch
        if not failed:
            return [(index, True, value) for index, value in zip(indices, values, strict=True)]
        return [
            (index, offset not in failed, failed.get(offset, value))
            for offset, (index, value) in enumerate(zip(indices, values, strict=True))
        ]

    def streamed(
        self, entries: Iterable[tuple[int, bool, Any]], failures: dict[int, Any]
    ) -> list[Any]:
        """What `imap` yields of some entries; failures are kept for the end unless
        return_exceptions."""
        keep = self.settings.return_exceptions
        out = []
        for index, ok, value in entries:
            if ok or keep:
                out.append(value)
            else:
                failures[index] = value
        return out

    def finish_stream(self, failures: dict[int, Any]) -> None:
        if failures:
            raise OpmapError(
                f"{len(failures)} item{'' if len(failures) == 1 else 's'} of {self.name} "
                "failed (the others were yielded)",
                [failures[index] for index in sorted(failures)],
                [],
                failures,
            )


def build_mapper(
    func: Callable[..., Any], settings: MapSettings, options: OperoOptions, cache_given: bool
) -> Any:
    if isinstance(func, classmethod | staticmethod) or not callable(func):
        raise TypeError(f"opmap() decorates a function, got {func!r}")
    from opero._maps.calls import async_wrappers, sync_wrappers

    state = _Map(func, settings, options_for("opmap", func, options, cache_given))
    if settings.mode == "async":
        if not state.is_async:
            raise TypeError(
                f"opmap(mode='async'): {state.name} is not an async def function; "
                "use mode='thread' or mode='process' for a plain function"
            )
        wrapper: Any = async_wrappers(state)
    else:
        wrapper = sync_wrappers(state)
    functools.update_wrapper(wrapper, func)
    wrapper.__signature__ = mapper_signature(func)
    step = state.cache_step
    wrapper.cache_clear = step.clear if step else state.pipeline.cache_clear
    wrapper.cache_info = step.info if step else state.pipeline.cache_info
    # Counted in this process: thread and async items directly, process items as their
    # events come back with each chunk, parent-side cache hits as they are served.
    wrapper.stats = state.pipeline.stats
    wrapper.reset_stats = state.pipeline.reset_stats
    return wrapper


def _length(items: object) -> int | None:
    if not isinstance(items, Sized):
        return None
    try:
        return len(items)
    except TypeError:  # a __len__ that refuses
        return None


async def _announced(batches: AsyncGenerator[Batch], announce: Any) -> AsyncGenerator[Batch]:
    """Async mode's outcome events, as each item's outcome comes back."""
    try:
        async for batch in batches:
            announce.finished(batch)
            yield batch
    finally:
        await batches.aclose()
