"""`@opmap(resume=path)`: a journal of finished items, so a killed map starts where it was.

The parent appends one record per batch of outcomes as it comes back (workers never
touch the file), before the batch reaches the caller. A record is a frame: its length
and CRC-32, then a pickled list of entries ``(start, count, digest, values, failed)``:
items ``start .. start + count - 1`` of the input, whose pickled list hashes to
`digest`, finished with `values` (None where an item failed: failed items are never
done, they run again). The first frame is a header naming the call (the function's
identity and the extra arguments, `opero._cache.keys`): a journal of another call is
started afresh, so a stale result is never reused.

Why a file of its own rather than the disk or Redis cache: a cache may evict (LRU,
TTL, size limits), keys items by value and not by position, and costs a transaction
per item; a resumed map must know exactly which positions finished, and a million tiny
items must cost one buffered write per chunk, not a million.

Why a digest per chunk rather than per item: hashing each item costs about what a tiny
item does (0.3 us), a chunk's items pickle and hash at C speed. A rerun slices the input
at the recorded chunks' boundaries, so it can compare the same digests; if any item of
a chunk changed, the whole chunk runs again. Items taken one by one (async mode, or
through the parent-side cache) are recorded one by one.

Durability: each batch's record is written (one `write` call) before its results go on,
so a SIGKILL of the map loses only what was in flight (the kernel keeps written data
when a process dies). The file is fsynced at most once a second and when the map ends,
so a power cut loses about a second of records, never the journal. A torn or corrupt
last frame (the map was killed while writing it) is ignored and cut off.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import hashlib
import os
import pickle
import struct
import sys
import time
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

MAGIC = "opero-journal"
VERSION = 1
_FRAME = struct.Struct("<II")  # payload length, CRC-32 of the payload
FSYNC_EVERY = 1.0  # seconds: how much a power cut may lose, against an fsync per chunk
MISSING: Any = object()
# Pickles up to this long are kept as they are: making a hash object costs more (0.7 us)
# than an item recorded alone (async mode, the parent-side cache) should.
_EXACT = 48


class Entry(NamedTuple):
    """Some consecutive items' outcome: `values[offset]`, unless offset is in `failed`."""

    size: int
    digest: bytes
    values: list[Any]
    failed: frozenset[int]


def digest_of(items: list[Any]) -> bytes | None:
    """What identifies these items across runs; None when they cannot be pickled (then
    they are not recorded, and run again next time)."""
    try:
        data = pickle.dumps(items, pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None
    if len(data) <= _EXACT:  # a lone small item is its own fingerprint: no hash to make
        return data
    return hashlib.blake2b(data, digest_size=16).digest()


def read_frames(data: bytes) -> tuple[list[Any], int]:
    """The payloads of the whole frames in `data`, and where the last whole one ends."""
    payloads, position, size = [], 0, len(data)
    while position + _FRAME.size <= size:
        length, crc = _FRAME.unpack_from(data, position)
        end = position + _FRAME.size + length
        body = data[position + _FRAME.size : end]
        if end > size or zlib.crc32(body) != crc:
            break  # torn by a kill while writing, or damaged: what follows is not trusted
        try:
            payloads.append(pickle.loads(body))
        except Exception:
            break
        position = end
    return payloads, position


def frame(payload: Any) -> bytes:
    body = pickle.dumps(payload, pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


class Journal:
    """One map call's journal, open for the call: what is done, and what finishes."""

    def __init__(self, path: str, call: str) -> None:
        self.path = path
        self.records: dict[tuple[int, int], Entry] = {}
        self.longest: dict[int, int] = {}  # start -> the longest record's count there
        # Items recorded alone and done, index -> (digest, value): a dict of tuples loads
        # fast for a million of them (async mode records every item alone).
        self.singles: dict[int, bytes] = {}
        self.values: dict[int, Any] = {}
        self.pending: list[tuple[Any, ...]] = []
        self.waiting: dict[int, bytes | None] = {}  # cache-path duplicates: their digest
        self._synced = time.monotonic()
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)
        collecting = gc.isenabled()
        try:
            _lock(self.fd, path)
            # A million records are millions of new objects: collections while they are
            # made would walk them over and over (loading took 4x as long).
            gc.disable()
            self._load(call)
        except BaseException:
            os.close(self.fd)
            raise
        finally:
            if collecting:
                gc.enable()
        self.starts = sorted(self.longest)

    def _load(self, call: str) -> None:
        data = _read_all(self.fd)
        payloads, end = read_frames(data)
        header = payloads[0] if payloads else None
        ours = frame((MAGIC, VERSION, call))
        if isinstance(header, tuple) and header[:1] == (MAGIC,):
            pass  # a journal: this call's, or another's (started afresh below)
        elif data and not ours.startswith(data):  # a torn header of this call is ours
            raise ValueError(
                f"opmap(resume={self.path!r}): the file exists and is not an opero "
                "journal; name another path, or delete the file"
            )
        if header != (MAGIC, VERSION, call):  # new, or another call's: start afresh
            os.ftruncate(self.fd, 0)
            self._append(ours)
            return
        if end < len(data):
            os.ftruncate(self.fd, end)  # cut a torn last frame off before appending
        for entries in payloads[1:]:
            for start, count, digest, values, failed in entries:
                if count == 1:
                    if failed:
                        self.singles.pop(start, None)
                    else:
                        self.singles[start], self.values[start] = digest, values[0]
                    if start in self.longest:  # a chunk's failed item that ran alone
                        continue
                self.records[start, count] = Entry(count, digest, values, frozenset(failed))
                if count > self.longest.get(start, 0):
                    self.longest[start] = count

    def _append(self, data: bytes) -> None:
        os.lseek(self.fd, 0, os.SEEK_END)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    # --- what is done --------------------------------------------------------------------

    def at(self, start: int) -> Entry | None:
        """The longest record that starts at `start`."""
        count = self.longest.get(start)
        return None if count is None else self.records[start, count]

    def room(self, start: int, size: int) -> int:
        """At most `size`, and no further than the next recorded start, so that a chunk
        taken here ends where a recorded one begins (a rerun meets the same digests)."""
        starts = self.starts
        after = bisect.bisect_right(starts, start)
        if after < len(starts):
            return max(1, min(size, starts[after] - start))
        return size

    def single(self, index: int, digest: bytes | None) -> Any:
        """The recorded value of item `index` alone, or MISSING."""
        if digest is None or self.singles.get(index) != digest:
            return MISSING
        return self.values[index]

    # --- what finishes -------------------------------------------------------------------

    def add(
        self,
        indices: Sequence[int],
        digest: bytes | list[bytes | None] | None,
        values: list[Any],
        failures: dict[int, Any],
    ) -> None:
        """Record a batch: a run of items under one digest (bytes), or items one by one
        (a digest each). Failed items are kept as not done."""
        if digest is None:
            return
        if isinstance(digest, bytes):
            kept = values
            if failures:
                kept = [None if o in failures else v for o, v in enumerate(values)]
            self.pending.append((indices[0], len(indices), digest, kept, tuple(failures)))
            return
        for offset, (index, one) in enumerate(zip(indices, digest, strict=True)):
            if one is not None and offset not in failures:
                self.pending.append((index, 1, one, [values[offset]], ()))

    def flush(self) -> None:
        """Write what finished since the last flush, in one frame."""
        if not self.pending:
            return
        entries, self.pending = self.pending, []
        try:
            data = frame(entries)
        except Exception:  # a result that does not pickle: record the others
            data = frame([entry for entry in entries if _pickles(entry)])
        self._append(data)
        now = time.monotonic()
        if now - self._synced >= FSYNC_EVERY:
            self._synced = now
            os.fsync(self.fd)

    def close(self) -> None:
        try:
            self.flush()
            os.fsync(self.fd)
        finally:
            os.close(self.fd)  # releases the lock


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    parts = []
    while part := os.read(fd, 1 << 20):
        parts.append(part)
    return b"".join(parts)


def identity_of(func: Any, resume: str) -> str:
    """What names the function in its journal; checked at decoration."""
    from opero._cache.keys import function_identity

    try:
        return function_identity(func)
    except ValueError as exc:
        raise ValueError(f"opmap(resume={resume!r}): {exc}") from exc


def open_journal(
    path: str, identity: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> contextlib.closing[Journal]:
    """The journal of one map call, open and locked until the context ends."""
    from opero._cache.keys import UnkeyableArgumentsError, portable_key

    try:  # the call, not only the items: other extra arguments give other results
        call = portable_key(identity, (args, kwargs))
    except UnkeyableArgumentsError as exc:
        raise TypeError(
            f"opmap(resume={path!r}): the extra arguments of {name} cannot be "
            f"fingerprinted ({exc}), so the journal could not tell this call from another"
        ) from exc
    return contextlib.closing(Journal(path, call))


def _pickles(entry: tuple[Any, ...]) -> bool:
    try:
        pickle.dumps(entry, pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False
    return True


def _lock(fd: int, path: str) -> None:
    """One map at a time per journal: two would interleave their records."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            raise _in_use(path) from None
        return
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(path) from None


def _in_use(path: str) -> RuntimeError:
    return RuntimeError(f"opmap(resume={path!r}): another map is using this journal now")


def done_indices(path: str) -> set[int]:
    """The input positions a journal records as finished (for tests and tools)."""
    with open(path, "rb") as file:
        payloads, _ = read_frames(file.read())
    latest: dict[tuple[int, int], frozenset[int]] = {}
    for entries in payloads[1:]:
        for start, count, _digest, _values, failed in entries:
            latest[start, count] = frozenset(failed)  # a later record replaces one
    done: set[int] = set()
    for (start, count), failed in latest.items():
        done.update(start + offset for offset in range(count) if offset not in failed)
    return done
