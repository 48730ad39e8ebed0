"""Disk and Redis backends, against a real folder and a real redis-server."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import run_python
from opero import opero


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: Any) -> int:
        self.calls += 1
        return self.calls


class Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.x == self.x

    __hash__ = None  # type: ignore[assignment]


SHARED_SCRIPT = """
import sys
from opero import opero

@opero(cache_backend=sys.argv[1], cache_namespace="shared")
def compute(x):
    print("computed", x)
    return x * 10

print("result", compute(4))
"""


def run_shared(backend: str) -> str:
    result = run_python(
        "import sys; sys.argv = ['x', " + repr(backend) + "]\n" + SHARED_SCRIPT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- disk ------------------------------------------------------------------------------


def test_disk_caches_in_a_private_namespace_folder(cache_dir: Path) -> None:
    counter = Counter()

    @opero(cache_backend="disk", cache_namespace="my-app")
    def f(x: int, p: Any = None) -> int:
        return counter(x)

    assert f(1) == f(x=1) == 1
    assert f(2, Point(3)) == f(2, Point(3)) == 2
    assert counter.calls == 2
    folder = cache_dir / "my-app"
    assert folder.is_dir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert f.cache_info() == (2, 2, 2)  # type: ignore[attr-defined]


def test_disk_ttl_and_per_function_clear(cache_dir: Path) -> None:
    first, second = Counter(), Counter()

    @opero(cache_backend="disk", cache_ttl=0.1)
    def f(x: int) -> int:
        return first(x)

    @opero(cache_backend="disk")
    def g(x: int) -> int:
        return second(x)

    assert f(1) == f(1) == 1
    assert g(1) == g(1) == 1
    f.cache_clear()  # type: ignore[attr-defined]
    assert g.cache_info().size == 1  # type: ignore[attr-defined]
    assert f(1) == 2
    time.sleep(0.15)
    assert f(1) == 3
    assert g(1) == 1


def test_disk_cache_is_shared_by_two_processes(cache_dir: Path) -> None:
    first = run_shared("disk")
    second = run_shared("disk")
    assert first.splitlines() == ["computed 4", "result 40"]
    assert second.splitlines() == ["result 40"]


async def test_disk_with_an_async_function(cache_dir: Path) -> None:
    counter = Counter()

    @opero(cache_backend="disk")
    async def f(x: int) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"x": x, "n": counter(x)}

    assert await f(3) == await f(3) == {"x": 3, "n": 1}


def test_default_disk_root_is_the_user_cache_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    from opero._cache.backends import cache_root

    monkeypatch.delenv("OPERO_CACHE_DIR", raising=False)
    assert cache_root() == Path(platformdirs.user_cache_dir("opero"))


# -- redis -----------------------------------------------------------------------------


def test_redis_caches_under_the_namespace_with_server_side_ttl(redis_env: str) -> None:
    import redis

    counter = Counter()

    @opero(cache_backend="redis", cache_namespace="ns1", cache_ttl=60)
    def f(x: int) -> int:
        return counter(x)

    assert f(1) == f(x=1) == 1
    assert f(2) == 2
    client = redis.Redis.from_url(redis_env)
    keys = sorted(k.decode() for k in client.keys("*"))
    assert len(keys) == 2
    assert all(k.startswith("opero:ns1:") for k in keys)
    assert all(0 < client.pttl(k) <= 60_000 for k in keys)
    assert f.cache_info() == (1, 2, 2)  # type: ignore[attr-defined]


def test_redis_ttl_expires_and_clear_is_per_function(redis_env: str) -> None:
    first, second = Counter(), Counter()

    @opero(cache_backend="redis", cache_ttl=0.1)
    def f(x: int) -> int:
        return first(x)

    @opero(cache_backend="redis")
    def g(x: int) -> int:
        return second(x)

    assert f(1) == f(1) == 1
    assert g(1) == g(1) == 1
    f.cache_clear()  # type: ignore[attr-defined]
    assert f(1) == 2
    time.sleep(0.2)
    assert f(1) == 3
    assert g(1) == 1
    assert g.cache_info().size == 1  # type: ignore[attr-defined]


def test_redis_cache_is_shared_by_two_processes(redis_env: str) -> None:
    assert os.environ["OPERO_REDIS_URL"] == redis_env
    first = run_shared("redis")
    second = run_shared("redis")
    assert first.splitlines() == ["computed 4", "result 40"]
    assert second.splitlines() == ["result 40"]


def test_redis_async_works_on_successive_event_loops(redis_env: str) -> None:
    counter = Counter()

    @opero(cache_backend="redis")
    async def f(x: int) -> int:
        await asyncio.sleep(0)
        return counter(x)

    assert asyncio.run(f(5)) == 1
    assert asyncio.run(f(5)) == 1
    assert asyncio.run(f(6)) == 2


async def test_redis_async_io_stays_off_the_event_loop_thread(redis_env: str) -> None:
    from opero._cache import backends as cache_backends

    counter = Counter()

    @opero(cache_backend="redis")
    async def f(x: int) -> int:
        return counter(x)

    threads: list[threading.Thread] = []
    original_get = cache_backends.RedisBackend.get

    def recording_get(self: Any, key: str) -> object:
        threads.append(threading.current_thread())
        return original_get(self, key)

    cache_backends.RedisBackend.get = recording_get  # type: ignore[method-assign]
    try:
        assert await f(1) == await f(1) == 1
    finally:
        cache_backends.RedisBackend.get = original_get  # type: ignore[method-assign]
    assert len(threads) >= 2
    assert threading.current_thread() not in threads


def test_redis_outage_degrades_to_uncached_calls(
    monkeypatch: pytest.MonkeyPatch, opero_logs: list[str]
) -> None:
    from conftest import _free_port

    monkeypatch.setenv("OPERO_REDIS_URL", f"redis://127.0.0.1:{_free_port()}/0")
    counter = Counter()

    @opero(cache_backend="redis")
    def f(x: int) -> int:
        return counter(x)

    assert (f(1), f(1)) == (1, 2)
    assert any("cache read failed with ConnectionError" in line for line in opero_logs)


# -- the cache command line -------------------------------------------------------------


def cli(*args: str) -> tuple[int, str]:
    import contextlib
    import io

    from opero.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["cache", *args])
    return code, out.getvalue()


def test_cli_lists_and_clears_namespaces(cache_dir: Path) -> None:
    @opero(cache_backend="disk", cache_namespace="alpha")
    def f(x: int) -> int:
        return x

    @opero(cache_backend="disk", cache_namespace="beta")
    def g(x: int) -> int:
        return x

    for i in range(3):
        f(i)
    g(1)
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    code, out = cli("list")
    assert code == 0
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:]}
    assert rows == {"alpha": "3", "beta": "1"}

    code, out = cli("clear", "alpha")
    assert code == 1
    assert "--yes" in out
    assert f.cache_info().size == 3  # type: ignore[attr-defined]

    code, out = cli("clear", "alpha", "--yes")
    assert (code, out.strip()) == (0, "cleared alpha: 3 entries")
    assert f.cache_info().size == 0  # type: ignore[attr-defined]
    assert g.cache_info().size == 1  # type: ignore[attr-defined]

    code, out = cli("clear", "--all", "--yes")
    assert code == 0
    assert "cleared beta: 1 entry" in out


@pytest.mark.parametrize("bad", ["..", "../etc", "/abs"])
def test_cli_refuses_namespaces_that_escape(cache_dir: Path, bad: str) -> None:
    code, out = cli("clear", bad, "--yes")
    assert code == 2
    assert "plain folder name" in out


def test_cli_unknown_namespace_and_empty_root(cache_dir: Path) -> None:
    assert cli("list") == (0, f"disk caches under {cache_dir}\n  (none)\n")
    code, out = cli("clear", "nothing", "--yes")
    assert code == 1
    assert "no namespace 'nothing'" in out
    assert cli("clear")[0] == 2


# -- identity and stale entries --------------------------------------------------------


def stock(item: str) -> str:
    return f"stock of {item}"


def price(item: str) -> str:
    return f"price of {item}"


def fetch(base: str, item: str) -> str:
    return f"{base}/{item}"


def test_partials_and_closures_get_distinct_identities(cache_dir: Path) -> None:
    import functools

    a = opero(cache_backend="disk")(functools.partial(stock))
    b = opero(cache_backend="disk")(functools.partial(price))
    c = opero(cache_backend="disk")(functools.partial(fetch, "https://a"))
    d = opero(cache_backend="disk")(functools.partial(fetch, "https://b"))
    assert [a("tea"), b("tea"), c("tea"), d("tea")] == [
        "stock of tea",
        "price of tea",
        "https://a/tea",
        "https://b/tea",
    ]

    def make(n: int) -> Any:
        @opero(cache_backend="disk")
        def add(x: int) -> int:
            return x + n

        return add

    assert (make(1)(1), make(2)(1)) == (2, 3)
    first = opero(cache_backend="disk")(lambda x: x * 10)
    second = opero(cache_backend="disk")(lambda x: x * 100)
    assert (first(1), second(1)) == (10, 100)


def test_unidentifiable_callables_are_refused_at_decoration(cache_dir: Path) -> None:
    lock = threading.Lock()

    def holds_a_lock(x: int) -> int:
        with lock:
            return x

    with pytest.raises(ValueError, match=r"cannot tell .*holds_a_lock apart"):
        opero(cache_backend="disk")(holds_a_lock)
    assert opero(holds_a_lock)(3) == 3  # the memory backend needs no identity


def test_portable_keys_of_objects_do_not_depend_on_the_hash_seed() -> None:
    code = """
        import dataclasses
        from opero._cache.keys import portable_key

        @dataclasses.dataclass(frozen=True)
        class Query:
            tags: frozenset
            limit: int = 10

        print(portable_key("m:f", (Query(frozenset({"alpha", "beta", "gamma", "delta"})),)))
    """
    outputs = set()
    for seed in ("1", "2", "3"):
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        outputs.add(result.stdout)
    assert len(outputs) == 1


def test_an_entry_that_no_longer_unpickles_is_replaced(cache_dir: Path) -> None:
    import diskcache

    counter = Counter()

    @opero(cache_backend="disk", cache_namespace="stale")
    def f(x: int) -> int:
        return counter(x)

    assert f(1) == 1
    with diskcache.Cache(str(cache_dir / "stale")) as raw:
        (key,) = list(raw.iterkeys())
        raw.set(key, Unpicklable())
    Unpicklable.broken = True
    try:
        assert f(1) == 2  # the stale entry was dropped and recomputed
        assert f(1) == 2
    finally:
        Unpicklable.broken = False
    assert counter.calls == 2


class Unpicklable:
    broken = False

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, ())


def _rebuild() -> Unpicklable:
    if Unpicklable.broken:
        raise ModuleNotFoundError("moved")
    return Unpicklable()


def test_redis_down_keeps_cache_info_working(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import _free_port

    monkeypatch.setenv("OPERO_REDIS_URL", f"redis://127.0.0.1:{_free_port()}/0")

    @opero(cache_backend="redis")
    def f(x: int) -> int:
        return x

    assert f(1) == 1
    assert f.cache_info() == (0, 0, None)  # type: ignore[attr-defined]


def test_an_unusable_disk_folder_is_a_value_error_at_decoration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("OPERO_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(ValueError, match="set OPERO_CACHE_DIR to a writable folder"):
        opero(cache_backend="disk")(lambda x: x)


def test_missing_redis_py_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis now fails
    with pytest.raises(ImportError, match=r"pip install 'opero\[redis\]'"):
        opero(cache_backend="redis")(lambda x: x)
    with pytest.raises(ImportError, match="redis-py"):
        opero(rate_limit=5, rate_limit_backend="redis")(lambda x: x)
