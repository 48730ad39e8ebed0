from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

import opero._policies.retry as retry_module
from helpers import start_methods


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every backoff delay instead of sleeping it (sync and async)."""
    recorded: list[float] = []

    def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)

    async def fake_async_sleep(seconds: float) -> None:
        recorded.append(seconds)
        await asyncio.sleep(0)

    monkeypatch.setattr(retry_module, "sync_sleep", fake_sleep)
    monkeypatch.setattr(retry_module, "async_sleep", fake_async_sleep)
    return recorded


@pytest.fixture
def opero_logs() -> Iterator[list[str]]:
    """Collect opero's log messages with opero's logging enabled, as a host would."""
    messages: list[str] = []
    handler = logger.add(lambda message: messages.append(str(message)), format="{message}")
    logger.enable("opero")
    yield messages
    logger.disable("opero")
    logger.remove(handler)


class Flaky:
    """A callable that raises `errors` in turn, then returns its argument."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[tuple[tuple[object, ...], dict[str, object]]] = []

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls.append((args, kwargs))
        if self.errors:
            raise self.errors.pop(0)
        return args[0] if args else kwargs

    async def acall(self, *args: object, **kwargs: object) -> object:
        await asyncio.sleep(0)
        return self(*args, **kwargs)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, for this test session only.

    Skipped when redis-server is not installed, unless OPERO_REQUIRE_REDIS=1 (as in CI),
    where a missing server fails the run instead.
    """
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("OPERO_REQUIRE_REDIS") == "1":
            pytest.fail("OPERO_REQUIRE_REDIS=1 but redis-server is not installed")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    command = [
        server,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    process = subprocess.Popen(
        [*command, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def redis_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """OPERO_REDIS_URL pointing at the test server, emptied before each test."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    monkeypatch.setenv("OPERO_REDIS_URL", redis_url)
    yield redis_url
    client.close()


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """OPERO_CACHE_DIR pointing at a fresh folder."""
    root = tmp_path / "opero-cache"
    monkeypatch.setenv("OPERO_CACHE_DIR", str(root))
    return root


@pytest.fixture(params=start_methods())
def start_method(request: pytest.FixtureRequest) -> str:
    """Each process start method this platform offers: fork, forkserver, spawn."""
    method: str = request.param
    return method


@pytest.fixture(params=["fast", "observed"])
def both_pipelines(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every policy test runs twice: on the fast pipeline, and on its observed twin (a
    second copy of the steps, taken while any hook listens) with a no-op global hook."""
    if request.param == "fast":
        yield "fast"
        return
    from opero import add_hook

    remove = add_hook(lambda event: None)
    try:
        yield "observed"
    finally:
        remove()
