"""How a twat-mp process pool's own messages travel: the C pickler first, dill for what
it refuses.

multiprocess (twat-mp's engine) pickles every task and every result with dill, whose
pickler is pure Python: ~30 us a task and ~15-30 us a result here, against ~3 us with
the C pickler, and ~0.4-0.9 ms for a worker's first message after a fork (the pure
Python pickler touches many objects, each a copy-on-write page). Our messages are small
tuples around bytes (the worker pre-pickles items and results), which the C pickler
takes as they are; only the frame around them paid dill's price.

`framed_context` wraps a pool's multiprocess context so that the pool's queues are
`FramedQueue`s: what they send goes through `dumps`, which tries the C pickler (with
multiprocess's reducers, so a `Connection` still travels as one) and falls back to
dill for anything it refuses, so a dill-only object in a frame still travels. Receiving
goes the same way (`loads`): the C unpickler, and dill's for a frame it cannot read
(dill's is a Python subclass: ~3.5-5 us a message against ~0.7-1.9 us). Only this
pool's queues change; other users of multiprocess, in the parent or inside items, keep
dill throughout.

A worker whose item a timeout interrupted leaves right after sending that chunk's answer
through its result queue (`FramedQueue.put`), so no later item runs in a process whose
code was cut at an arbitrary point.
"""

from __future__ import annotations

import collections
import copyreg
import io
import os
import pickle
import threading
from typing import Any

from multiprocess import reduction
from multiprocess.queues import SimpleQueue

_DILL = reduction.ForkingPickler
# multiprocess's reducers ahead of copyreg's: one view of both, made once, that sees
# reducers registered later (a copy per message cost each ~1 us of its ~2.3 us).
_TABLE = collections.ChainMap(_DILL._extra_reducers, copyreg.dispatch_table)


# Set by a worker once it has answered a chunk whose item a timer cut: the next put on
# its main thread (the pool's worker loop sending that answer) is its last.
_leaving = [False]


def leave_after_answer() -> None:
    """This worker process exits right after sending the answer it is about to send."""
    _leaving[0] = True


class _Pickler(pickle.Pickler):
    """The C pickler with multiprocess's reducers (connections, sockets, ...)."""

    dispatch_table = _TABLE


def dumps(obj: Any) -> Any:
    """`obj` pickled for a pool's pipe: C pickler first, dill for what it refuses."""
    buffer = io.BytesIO()
    try:
        _Pickler(buffer, pickle.HIGHEST_PROTOCOL).dump(obj)
    except Exception:
        return _DILL.dumps(obj)
    return buffer.getbuffer()


def loads(data: Any) -> Any:
    """A frame read back: the C unpickler, dill's for what it refuses (a frame that
    `dumps` handed to dill may name what only dill's unpickler resolves)."""
    try:
        return pickle.loads(data)
    except Exception:
        return _DILL.loads(data)


class _FramedEnd:
    """One end of a pool's pipe: the connection's own but for how it pickles; the
    attributes others set on it (`connection.wait` does, on Windows) land on the pipe."""

    def __init__(self, connection: Any) -> None:
        object.__setattr__(self, "connection", connection)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connection, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.connection, name, value)


class _FramedReader(_FramedEnd):
    """The reading end: `recv` (the pool's result thread's) unpickles with `loads`."""

    def recv(self) -> Any:
        return loads(self.connection.recv_bytes())


class _FramedWriter(_FramedEnd):
    """The writing end: `send` (the pool's task thread's) pickles with `dumps`."""

    def send(self, obj: Any) -> None:
        self.connection.send_bytes(dumps(obj))


class FramedQueue(SimpleQueue):  # type: ignore[misc]
    """multiprocess's `SimpleQueue`, sending with `dumps`, in the parent and in the
    workers (where it arrives inherited under fork, unpickled under spawn/forkserver)."""

    def __init__(self, *, ctx: Any) -> None:
        super().__init__(ctx=ctx)
        self._framed()

    def _framed(self) -> None:
        self._reader: Any = _FramedReader(self._reader)
        self._writer: Any = _FramedWriter(self._writer)

    def __getstate__(self) -> Any:
        reader, writer, rlock, wlock = super().__getstate__()
        return reader.connection, writer.connection, rlock, wlock

    def __setstate__(self, state: Any) -> None:
        super().__setstate__(state)
        self._framed()

    def get(self) -> Any:
        with self._rlock:
            data = self._reader.recv_bytes()
        return loads(data)

    def put(self, obj: Any) -> None:
        data = dumps(obj)  # before the lock, as SimpleQueue does
        if self._wlock is None:
            self._writer.send_bytes(data)
        else:
            with self._wlock:
                self._writer.send_bytes(data)
        if _leaving[0] and threading.get_ident() == threading.main_thread().ident:
            # The worker's answer to a chunk in which a timer cut an item: sent, so the
            # worker leaves, and the pool starts a fresh one for what follows.
            os._exit(0)


class _FramedContext:
    """A multiprocess context whose `SimpleQueue`s are `FramedQueue`s; the rest is the
    context's own (its processes, locks, shared arrays)."""

    def __init__(self, context: Any) -> None:
        self.context = context

    def SimpleQueue(self) -> FramedQueue:
        return FramedQueue(ctx=self.context.get_context())

    def Pool(self, *args: Any, **kwargs: Any) -> Any:  # the context's own would not frame
        from multiprocess.pool import Pool

        return Pool(*args, context=self, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.context, name)


def framed_context(context: Any) -> Any:
    """`context` for a twat-mp pool, its queues sending with `dumps`."""
    return _FramedContext(context)
