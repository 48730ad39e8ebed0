"""`@opmap(mode="dask")` and `mode="ray"`: chunks of items as tasks on a cluster.

The same engine interface as the local pools (`submit`, `decode`, `supervise`, `close`,
`results`, `target`), so the same `Dispatcher` batches items into tasks, keeps at most
two chunks per worker in flight, applies the parent-side cache, and collects outcomes.

The item pipeline cannot travel as built (it holds locks and per-process state): the
function and its options travel instead (cloudpickle, as Dask does), and each worker
process builds the pipeline once and keeps it for the map's later chunks. Exceptions
come back as in process mode (`RemoteError` when they cannot be unpickled). Dask
reschedules the task of a worker that died; a task that kills workers repeatedly fails
(Ray does the same with its task retries), and so may a task that only shared those
workers: the Dispatcher then sends each of its items once more on its own, one at a
time with nothing else in flight (`resends_crashed`), and an item whose task fails
again gets `WorkerCrashedError`.
`distributed` and `ray` are imported only here, and only for the mode in use.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from opero._maps.worker import (
    Job,
    Outcome,
    build_job,
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


def _job_of(payload: bytes) -> Job:
    with _built_lock:
        job = _built.get(payload)
    if job is not None:
        return job
    job = build_job(payload)
    with _built_lock:
        if len(_built) >= _KEEP:
            _built.clear()
        _built[payload] = job
    return job


def run_remote_chunk(payload: bytes, items: bytes) -> bytes:
    """A Dask task: one chunk of items through the pipeline; the `Outcome`, pickled."""
    from opero._maps.worker import _loads

    outcome = run_items(_job_of(payload), _loads(items), portable_error)
    return encode_outcome(outcome)


class _ClusterEngine:
    """What the Dask and Ray engines share: a task per chunk, answered through a future's
    done-callback onto `results`; the cluster reschedules a dead worker's tasks itself."""

    target = 0.05  # seconds per task: a task costs about a millisecond to schedule
    engine = ""  # "Dask" or "Ray", for messages
    resends_crashed = True  # a failed task's items go once more, one at a time (Dispatcher)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.results: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self.pending: dict[int, Any] = {}  # chunk number -> the task, while in flight

    def track(self, number: int, task: Any, future: Any) -> None:
        self.pending[number] = task
        future.add_done_callback(lambda done: self._done(number, done))

    def _done(self, number: int, future: Any) -> None:
        self.pending.pop(number, None)  # in flight no more: nothing to cancel
        cause = self.failure(future)
        if cause is None:
            self.results.put((number, future))
            return
        message = f"the {self.engine} task of this item failed: {type(cause).__name__}: {cause}"
        self.results.put((number, WorkerCrashedError(message)))

    def failure(self, future: Any) -> BaseException | None:
        """Why the finished task failed, or None."""
        raise NotImplementedError

    def decode(self, answer: Any) -> Outcome:
        return decode_outcome(answer.result())

    def supervise(self, inflight: dict[int, Any]) -> list[tuple[int, Exception]]:
        return []

    def cancel(self, tasks: list[Any]) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        """Close what this engine started for the map."""

    def close(self, *, clean: bool) -> None:
        try:
            if not clean and self.pending:
                self.cancel(list(self.pending.values()))
        finally:
            self.pending.clear()
            self.shutdown()


class DaskEngine(_ClusterEngine):
    """One map's tasks on a `distributed.Client`: the caller's, one connected to an
    address, or a `LocalCluster` of `workers` processes started for the map."""

    engine = "Dask"

    def __init__(self, payload: bytes, workers: int, client: Any = None) -> None:
        import distributed

        super().__init__(payload)
        self._cluster: Any = None
        self._own_client = client is None or isinstance(client, str)
        if client is None:
            self._cluster = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            )
            client = distributed.Client(self._cluster)
        elif isinstance(client, str):
            client = distributed.Client(client)
        self.client = client

    def submit(self, number: int, items: list[Any]) -> None:
        future = self.client.submit(run_remote_chunk, self.payload, encode_items(items), pure=False)
        self.track(number, future, future)

    def failure(self, future: Any) -> BaseException | None:
        if future.status == "finished":
            return None
        try:
            cause: BaseException | None = future.exception(timeout=5)
        except Exception as exc:  # cancelled, or the scheduler is gone
            cause = exc
        return cause

    def cancel(self, tasks: list[Any]) -> None:
        self.client.cancel(tasks)

    def shutdown(self) -> None:
        if self._own_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()


class RayEngine(_ClusterEngine):
    """One map's tasks on Ray: the running Ray (the caller's `ray.init`, left running),
    one at `address`, or a local Ray of `workers` CPUs started for the map and shut down
    after it."""

    engine = "Ray"

    def __init__(self, payload: bytes, workers: int, address: str | None = None) -> None:
        import ray

        super().__init__(payload)
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
        self.track(number, ref, ref.future())

    def failure(self, future: Any) -> BaseException | None:
        error: BaseException | None = future.exception()
        return error

    def cancel(self, tasks: list[Any]) -> None:
        import ray

        for ref in tasks:
            ray.cancel(ref, force=True)

    def shutdown(self) -> None:
        import ray

        if self._own:
            ray.shutdown()
