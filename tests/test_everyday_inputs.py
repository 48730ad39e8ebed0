"""What people really pass: generator functions, functions called for their side
effects, a bare string as the items, and a mapper's stats and signature."""

from __future__ import annotations

import contextlib
import inspect
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from helpers import ctrl_c_after, start_methods
from opero import opero, opmap

FAST = {"retries": 0, "progress": False}


# --- generator functions ----------------------------------------------------------------


def rows(n: int) -> Iterator[int]:
    yield from range(n)


async def arows(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@pytest.mark.parametrize("func", [rows, arows])
@pytest.mark.parametrize("decorator", ["opero", "opmap"])
def test_generator_functions_are_refused_at_decoration(func: Any, decorator: str) -> None:
    make = opero(retries=2) if decorator == "opero" else opmap(mode="thread")
    with pytest.raises(TypeError, match=f"{decorator}\\(\\) cannot wrap the generator function"):
        make(func)
    with pytest.raises(TypeError, match="returns the items as a list"):
        (opero if decorator == "opero" else opmap)(func)  # bare, too


def test_a_generator_method_is_refused_too() -> None:
    with pytest.raises(TypeError, match="generator function"):

        class Table:
            @opero
            def rows(self) -> Iterator[int]:
                yield 1


# --- side effects -----------------------------------------------------------------------


def test_a_function_annotated_none_is_not_cached_by_default() -> None:
    sent: list[str] = []

    @opero(retries=3)
    def send_email(to: str, body: str) -> None:
        sent.append(to)

    send_email("a@example.org", "hi")
    send_email("a@example.org", "hi")
    assert sent == ["a@example.org", "a@example.org"]  # both sent

    @opero(retries=3, cache=True)  # asked for: cached
    def send_once(to: str) -> None:
        sent.append(to)

    send_once("b")
    send_once("b")
    assert sent.count("b") == 1

    @opero(cache_ttl=60)  # a cache option asks for the cache as plainly as cache=True
    def send_daily(to: str) -> None:
        sent.append(to)

    send_daily("c")
    send_daily("c")
    assert sent.count("c") == 1

    @opero
    def square(x: int) -> int:  # the default cache stays for everything else
        sent.append("square")
        return x * x

    assert square(3) == square(3) == 9
    assert sent.count("square") == 1


async def test_an_async_function_annotated_none_is_not_cached_by_default() -> None:
    calls = 0

    @opero
    async def notify(user: str) -> None:
        nonlocal calls
        calls += 1

    await notify("u")
    await notify("u")
    assert calls == 2


def test_a_mapped_function_annotated_none_is_not_cached_by_default() -> None:
    lock = threading.Lock()
    sent: list[int] = []

    def send(x: int) -> None:
        with lock:
            sent.append(x)

    mapped = opmap(mode="thread", workers=2, **FAST)(send)
    mapped([1, 1, 2])
    mapped([1])
    assert sorted(sent) == [1, 1, 1, 2]


# --- items --------------------------------------------------------------------------------


@pytest.mark.parametrize("items", ["abc", b"abc", bytearray(b"abc")])
def test_a_bare_string_as_items_is_a_type_error(items: Any) -> None:
    mapped = opmap(mode="thread", **FAST)(len)
    with pytest.raises(TypeError, match="one character at a time"):
        mapped(items)
    with pytest.raises(TypeError, match="Pass a list of them"):
        list(mapped.imap(items))
    assert mapped([items]) == [3]


async def test_a_bare_string_as_items_is_a_type_error_in_async_mode() -> None:
    async def size(text: str) -> int:
        return len(text)

    mapped = opmap(mode="async", **FAST)(size)
    with pytest.raises(TypeError, match="one character at a time"):
        await mapped("abc")
    with pytest.raises(TypeError, match="one character at a time"):
        [x async for x in mapped.imap("abc")]


def test_the_mapper_signature_describes_what_the_caller_calls() -> None:
    def score(text: str, weight: int = 1, *, scale: float = 1.0) -> int:
        return len(text) * weight

    mapped = opmap(mode="thread", **FAST)(score)
    signature = inspect.signature(mapped)
    assert str(signature) == (
        "(items: 'Iterable[str]', /, weight: 'int' = 1, *, scale: 'float' = 1.0) -> 'list[int]'"
    )
    assert mapped.__wrapped__ is score  # type: ignore[attr-defined]


# --- stats --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["thread", *start_methods()])
def test_a_mappers_stats_count_every_item(mode: str) -> None:
    options: dict[str, Any] = (
        {"mode": "thread"} if mode == "thread" else {"mode": "process", "start_method": mode}
    )

    def half(x: int) -> float:
        if x == 3:
            raise ValueError(x)
        return x / 2

    # One thread: the duplicate must not run while the first 1 does (single-flight
    # followers are not counted in one process; see the README's known limits).
    workers = 1 if mode == "thread" else 2
    mapped = opmap(workers=workers, stats=True, return_exceptions=True, **options, **FAST)(half)
    mapped([0, 1, 2, 3, 1])  # the second 1 is served the first's result: a cache hit
    stats = mapped.stats()
    assert stats.calls == 5
    assert stats.successes == 4
    assert stats.failures == 1
    assert stats.cache_hits == 1
    mapped([0, 1])  # two cache hits
    assert mapped.stats().cache_hits == 3
    assert mapped.stats().calls == 7
    mapped.reset_stats()
    assert mapped.stats().calls == 0


def test_stats_on_a_cluster_are_refused() -> None:
    with pytest.raises(ValueError, match="stats=True counts in this process"):
        opmap(mode="dask", stats=True)(len)


# --- messages -----------------------------------------------------------------------------


def test_counts_in_messages_are_singular_for_one() -> None:
    from opero import OpmapError

    def fails(x: int) -> int:
        raise ValueError(x)

    with pytest.raises(OpmapError, match=r"^1 of 1 item of .*fails failed"):
        opmap(mode="thread", **FAST)(fails)([1])
    with pytest.raises(OpmapError, match=r"^1 item of .*fails failed \(the others"):
        list(opmap(mode="thread", **FAST)(fails).imap([1]))


def test_the_command_line_help_is_plain_text() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "opero", "--help"], capture_output=True, text=True, check=True
    )
    assert "``" not in done.stdout
    assert "demo" in done.stdout


# --- Ctrl-C in thread mode ----------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and sessions")
def test_ctrl_c_stops_a_thread_map_at_once() -> None:
    code = textwrap.dedent(
        """
        import os, sys, time
        from opero import opmap

        def slow(x):
            os.write(1, f"start {x}\\n".encode())
            time.sleep(0.5)
            return x

        try:
            mapped = opmap(mode="thread", workers=2, cache=False, progress=False)(slow)
            mapped(range(1000))  # chunks of up to 125 items: a minute of work each
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
        """
    )
    seen = ctrl_c_after(code, lines=2)
    assert all(line.startswith("start") for line in seen.first), seen
    assert seen.returncode == 130, seen.err
    assert seen.seconds < 1 + 0.5 + 0.5  # the contract's 1 s, the running item, slack
    later = [line for line in seen.out.splitlines() if line.startswith("start")]
    assert len(later) <= 2  # at most the items starting as the signal came


# --- methods and the instances their cache holds -------------------------------------------


def test_a_method_cache_keeps_its_instances_unless_the_key_names_them_by_value() -> None:
    import gc
    import weakref

    class Client:
        def __init__(self, user_id: int) -> None:
            self.user_id = user_id

        @opero
        def held(self, q: str) -> str:
            return f"{self.user_id}:{q}"

        @opero(cache_key=lambda self, q: (self.user_id, q))
        def by_value(self, q: str) -> str:
            return f"{self.user_id}:{q}"

    kept, freed = Client(1), Client(2)
    assert kept.held("a") == "1:a"
    assert freed.by_value("a") == "2:a"
    kept_ref, freed_ref = weakref.ref(kept), weakref.ref(freed)
    del kept, freed
    gc.collect()
    assert kept_ref() is not None  # held by the cache's key, as the README says
    assert freed_ref() is None  # the key names it by value: collected
    assert Client(2).by_value("a") == "2:a"  # a hit for any instance of that user
    assert Client.held.cache_info().size == 1  # type: ignore[attr-defined]
    Client.held.cache_clear()  # type: ignore[attr-defined]
    gc.collect()
    assert kept_ref() is None  # the way out that needs no key


# --- disk caches that cannot be opened -----------------------------------------------------


@pytest.fixture
def full_disk(tmp_path: Any) -> Iterator[Any]:
    """A real 4 MiB filesystem (tmpfs), filled up; skipped where it cannot be mounted."""
    import shutil

    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    if shutil.which("mount") is None or mounted.returncode != 0:
        pytest.skip("cannot mount a small filesystem here (needs root on Linux)")
    try:
        fd = os.open(mountpoint / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with contextlib.suppress(OSError):  # ENOSPC: full
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_full_disk_leaves_the_function_working_uncached_until_it_has_room(
    full_disk: Any, monkeypatch: pytest.MonkeyPatch, opero_logs: list[str]
) -> None:
    from opero._cache import backends as cache_backends

    monkeypatch.setenv("OPERO_CACHE_DIR", str(full_disk / "cache"))
    monkeypatch.setattr(cache_backends, "REOPEN_AFTER", 0.0)
    calls: list[int] = []

    @opero(cache_backend="disk", retries=0)  # decorating does not fail
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    assert [double(3), double(3), double(3)] == [6, 6, 6]
    assert len(calls) == 3  # uncached
    assert sum("cannot be opened" in line for line in opero_logs) == 1  # one warning
    (full_disk / "filler").unlink()  # the disk has room again
    assert [double(4), double(4)] == [8, 8]
    assert calls.count(4) == 1  # cached again
    assert any("available again" in line for line in opero_logs)


def test_a_corrupted_cache_file_leaves_the_function_working_until_it_is_replaced(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, opero_logs: list[str]
) -> None:
    from opero._cache import backends as cache_backends

    monkeypatch.setenv("OPERO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache_backends, "REOPEN_AFTER", 0.0)
    (tmp_path / "broken").mkdir(mode=0o700)
    (tmp_path / "broken" / "cache.db").write_bytes(b"garbage, not SQLite" * 100)
    calls: list[int] = []

    @opero(cache_backend="disk", cache_namespace="broken", retries=0)
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    assert [double(1), double(1)] == [2, 2]
    assert len(calls) == 2
    assert sum("cannot be opened" in line for line in opero_logs) == 1
    assert any("DatabaseError" in line for line in opero_logs)
    (tmp_path / "broken" / "cache.db").unlink()  # replaced: diskcache makes a new one
    assert [double(5), double(5)] == [10, 10]
    assert calls.count(5) == 1
