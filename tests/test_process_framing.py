"""Process mode's pickling: the pool's messages with the C pickler (dill for what it
refuses), items and results pre-pickled the same way, so that dill-only objects still
travel both ways and an item nothing can pickle still fails alone."""

from __future__ import annotations

import gc
import io
import pickle
from typing import Any

import pytest
from multiprocess import connection as mp_connection
from multiprocess.queues import SimpleQueue

from opero import OpmapError, opmap
from opero._maps import framing

FAST = {"retries": 0, "progress": False, "cache": False}


def constant(n: int) -> Any:
    return lambda: n  # a closure


def call_it(item: Any) -> Any:
    """Calls the item (a lambda or closure), and answers with a closure over its value."""
    value = item()
    return lambda: value * 10


def framed_queues(x: int) -> int:
    """The FramedQueues this worker holds: its pool's task and result queues."""
    return sum(isinstance(o, framing.FramedQueue) for o in gc.get_objects())


def test_a_frame_the_c_pickler_takes_is_pickled_by_it() -> None:
    frame = (3, 0, (True, b"\x80\x05 pre-pickled results"))
    assert bytes(framing.dumps(frame)) == pickle.dumps(frame, pickle.HIGHEST_PROTOCOL)


def test_a_frame_only_dill_can_pickle_travels_with_dill() -> None:
    base = 7
    frame = (3, 0, (True, lambda: base))
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(frame, pickle.HIGHEST_PROTOCOL)
    loaded = framing._DILL.loads(framing.dumps(frame))
    assert loaded[2][1]() == 7


def test_frames_are_read_with_the_c_unpickler_and_dill_for_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = 7
    read = []
    dill_loads = framing._DILL.loads
    monkeypatch.setattr(framing._DILL, "loads", lambda data: read.append(1) or dill_loads(data))
    frame = (3, 0, (True, b"results"))
    assert framing.loads(framing.dumps(frame)) == frame
    # What dill pickled reads with the C unpickler too (dill's helpers are importable).
    assert framing.loads(framing.dumps((3, 0, (True, lambda: base))))[2][1]() == 7
    assert read == []
    # A name only dill's unpickler resolves (its old module name): dill reads it.
    import dill

    only_dill = b"(I1\ncdill.dill\n_is_builtin_module\np0\ntp1\n."
    assert framing.loads(only_dill) == (1, dill._dill._is_builtin_module)
    assert read == [1]


def test_the_c_pickler_keeps_multiprocess_reducers() -> None:
    pickler = framing._Pickler(io.BytesIO())
    assert pickler.dispatch_table[mp_connection.Connection] is mp_connection.reduce_connection


def test_a_framed_queue_sends_and_receives_through_its_pipe() -> None:
    import multiprocess
    from multiprocess import context

    queue = framing.framed_context(multiprocess.get_context("spawn")).SimpleQueue()
    assert isinstance(queue, SimpleQueue)
    base = 2
    queue.put((1, b"bytes"))
    queue._writer.send(("task", lambda: base))  # what the pool's task thread does
    assert queue.get() == (1, b"bytes")
    label, closure = queue.get()
    assert (label, closure()) == ("task", 2)
    # What a spawned worker receives: the plain connection, which it wraps again.
    context.set_spawning_popen(object())  # as while a worker's process object is pickled
    try:
        state = queue.__getstate__()
    finally:
        context.set_spawning_popen(None)
    assert state[0] is queue._reader.connection
    assert state[1] is queue._writer.connection
    copy = framing.FramedQueue.__new__(framing.FramedQueue)
    copy.__setstate__(state)
    assert copy._reader.connection is state[0]
    assert copy._writer.connection is state[1]
    copy._reader.flag = True  # what `connection.wait` sets (Windows) lands on the pipe
    assert state[0].flag is True
    copy.put((2, b"again"))
    assert queue.get() == (2, b"again")
    queue.close()


def test_a_framed_contexts_pool_frames_its_messages() -> None:
    import multiprocess

    pool = framing.framed_context(multiprocess.get_context()).Pool(1)
    try:
        assert isinstance(pool._inqueue, framing.FramedQueue)
        assert isinstance(pool._outqueue, framing.FramedQueue)
        assert isinstance(pool._outqueue._reader, framing._FramedReader)  # its result thread's
        assert pool.apply_async(framed_queues, (0,)).get(timeout=30) >= 2
        # The result thread reads with `loads`: a result only dill can pickle arrives.
        assert pool.apply_async(call_it, (constant(5),)).get(timeout=30)() == 50
    finally:
        pool.terminate()
        pool.join()


def test_workers_send_with_the_framed_queues(start_method: str) -> None:
    mapped = opmap(mode="process", start_method=start_method, workers=1, **FAST)(framed_queues)
    assert mapped([0])[0] >= 2  # the task queue and the result queue


def test_items_and_results_only_dill_can_pickle_travel(start_method: str) -> None:
    base = 1
    items = [lambda: 1, lambda: base + 1, constant(3), lambda: 4]
    mapped = opmap(mode="process", start_method=start_method, workers=2, **FAST)(call_it)
    results = mapped(items)
    assert [result() for result in results] == [10, 20, 30, 40]


def test_an_unpicklable_item_among_dill_only_ones_fails_alone(start_method: str) -> None:
    items = [lambda: 1, lambda: 2, (i for i in []), lambda: 4]
    mapped = opmap(mode="process", start_method=start_method, workers=2, chunksize=4, **FAST)(
        call_it
    )
    with pytest.raises(OpmapError) as caught:
        mapped(items)
    assert list(caught.value.failures) == [2]
    assert "item 2 (builtins.generator) cannot be sent" in str(caught.value.failures[2])
    mapped = opmap(
        mode="process",
        start_method=start_method,
        workers=2,
        chunksize=4,
        return_exceptions=True,
        **FAST,
    )(call_it)
    results = mapped(items)
    assert isinstance(results[2], TypeError)
    assert [results[i]() for i in (0, 1, 3)] == [10, 20, 40]
