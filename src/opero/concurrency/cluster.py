"""`@opmap(mode="dask")` and `mode="ray"`: chunks of items as tasks on a cluster.

The same engine interface as the local pools (`submit`, `decode`, `supervise`, `close`,
`results`, `target`), so the same `Dispatcher` batches items into tasks, keeps at most
two chunks per worker in flight, applies the parent-side cache, and collects outcomes.

The item pipeline cannot travel as built (it holds locks and per-process state): the
function and its options travel instead (cloudpickle, as Dask does), and each worker
process builds the pipeline once and keeps it for the map's later chunks. Exceptions
come back as in process mode (`RemoteError` when they cannot be unpickled). Dask
reschedules the task of a worker that died; a task that kills workers repeatedly fails
its chunk's items with `WorkerCrashedError`; Ray does the same with its task retries.
`distributed` and `ray` are imported only here, and only for the mode in use.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from opero.concurrency.worker import (
    Job,
    Outcome,
    decode_outcome,
    encode_items,
    encode_outcome,
    portable_error,
    run_items,
)
from opero.exceptions import WorkerCrashedError

# Worker side: pipelines built from payloads, kept for the map's later chunks.
_built: dict[bytes, Job] = {}
_built_lock = threading.Lock()
_KEEP = 8


def job_payload(func: Any, options: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """What a remote worker needs to build the item pipeline."""
    import cloudpickle

    return bytes(cloudpickle.dumps((func, options, args, kwargs)))


def _job_of(payload: bytes) -> Job:
    with _built_lock:
        job = _built.get(payload)
    if job is not None:
        return job
    import cloudpickle

    from opero.decorators.opero import _is_async, decorate

    func, options, args, kwargs = cloudpickle.loads(payload)
    job = Job(decorate(func, options), args, kwargs, is_async=_is_async(func))
    with _built_lock:
        if len(_built) >= _KEEP:
            _built.clear()
        _built[payload] = job
    return job


def run_remote_chunk(payload: bytes, items: bytes) -> bytes:
    """A Dask task: one chunk of items through the pipeline; the `Outcome`, pickled."""
    from opero.concurrency.worker import _loads

    outcome = run_items(_job_of(payload), _loads(items), portable_error)
    return encode_outcome(outcome)


class DaskEngine:
    """One map's tasks on a `distributed.Client`: the caller's, one connected to an
    address, or a `LocalCluster` of `workers` processes started for the map."""

    target = 0.05  # seconds per task: a task costs about a millisecond to schedule

    def __init__(self, payload: bytes, workers: int, client: Any = None) -> None:
        import distributed

        self.payload = payload
        self.results: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._futures: dict[int, Any] = {}
        self._cluster: Any = None
        self._own_client = client is None or isinstance(client, str)
        if client is None:
            self._cluster = distributed.LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            )
            client = distributed.Client(self._cluster)  # type: ignore[no-untyped-call]
        elif isinstance(client, str):
            client = distributed.Client(client)  # type: ignore[no-untyped-call]
        self.client = client

    def submit(self, number: int, items: list[Any]) -> None:
        future = self.client.submit(run_remote_chunk, self.payload, encode_items(items), pure=False)
        self._futures[number] = future
        future.add_done_callback(lambda done: self._done(number, done))

    def _done(self, number: int, future: Any) -> None:
        self._futures.pop(number, None)  # in flight no more: nothing to cancel
        self.results.put((number, self._answer(future)))

    def _answer(self, future: Any) -> Any:
        if future.status == "finished":
            return future
        try:
            cause = future.exception(timeout=5)
        except Exception as exc:  # cancelled, or the scheduler is gone
            cause = exc
        return WorkerCrashedError(
            f"the Dask task of this item failed: {type(cause).__name__}: {cause}"
        )

    def decode(self, answer: Any) -> Outcome:
        return decode_outcome(answer.result())

    def supervise(self, inflight: dict[int, Any]) -> list[tuple[int, Exception]]:
        return []  # Dask reschedules a dead worker's tasks itself

    def close(self, *, clean: bool) -> None:
        try:
            if not clean and self._futures:
                self.client.cancel(list(self._futures.values()))
        finally:
            self._futures.clear()
            if self._own_client:
                self.client.close()
            if self._cluster is not None:
                self._cluster.close()


class RayEngine:
    """One map's tasks on Ray: the running Ray (the caller's `ray.init`, left running),
    one at `address`, or a local Ray of `workers` CPUs started for the map and shut down
    after it."""

    target = 0.05

    def __init__(self, payload: bytes, workers: int, address: str | None = None) -> None:
        import ray

        self.payload = payload
        self.results: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._refs: dict[int, Any] = {}
        self._own = False
        if not ray.is_initialized():
            ray.init(
                address=address,
                num_cpus=workers if address is None else None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            self._own = True
        self._task = ray.remote(num_cpus=1)(run_remote_chunk)

    def submit(self, number: int, items: list[Any]) -> None:
        ref = self._task.remote(self.payload, encode_items(items))
        self._refs[number] = ref
        ref.future().add_done_callback(lambda done: self._done(number, done))

    def _done(self, number: int, future: Any) -> None:
        self._refs.pop(number, None)
        error = future.exception()
        if error is None:
            self.results.put((number, future))
            return
        crashed = WorkerCrashedError(
            f"the Ray task of this item failed: {type(error).__name__}: {error}"
        )
        self.results.put((number, crashed))

    def decode(self, answer: Any) -> Outcome:
        return decode_outcome(answer.result())

    def supervise(self, inflight: dict[int, Any]) -> list[tuple[int, Exception]]:
        return []  # Ray retries a dead worker's tasks itself

    def close(self, *, clean: bool) -> None:
        import ray

        try:
            if not clean:
                for ref in list(self._refs.values()):
                    ray.cancel(ref, force=True)
        finally:
            self._refs.clear()
            if self._own:
                ray.shutdown()
