"""A Redis that accepts connections and never answers (a host dropping packets, a hung
server) costs a call at most the client's timeout, never the OS's minutes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("redis")

from opero import opero
from opero._utils.redis import COMMAND_TIMEOUT, CONNECT_TIMEOUT, redis_client


@pytest.fixture
def silent_redis() -> Iterator[int]:
    """A TCP port that accepts connections and reads nothing back."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            held.append(connection)  # kept open, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for connection in held:
        connection.close()
    server.close()


def test_clients_get_timeouts_by_default() -> None:
    client = redis_client("redis://127.0.0.1:6399/0")
    settings = client.connection_pool.connection_kwargs
    assert settings["socket_timeout"] == COMMAND_TIMEOUT
    assert settings["socket_connect_timeout"] == CONNECT_TIMEOUT
    # The URL's own query wins.
    tuned = redis_client("redis://127.0.0.1:6399/0?socket_timeout=7")
    assert tuned.connection_pool.connection_kwargs["socket_timeout"] == 7.0


def test_a_silent_redis_cache_costs_the_timeout_then_calls_without_it(
    silent_redis: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import opero._utils.redis as redis_module
    from opero._cache.backends import RedisBackend

    monkeypatch.setattr(redis_module, "COMMAND_TIMEOUT", 0.2)  # the default, made short
    calls: list[int] = []
    url = f"redis://127.0.0.1:{silent_redis}/0"

    @opero(retries=0, cache_backend=RedisBackend("timeouts", "double", url))
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    began = time.monotonic()
    assert double(21) == 42  # the read timed out, the store too: the call still answers
    took = time.monotonic() - began
    assert calls == [21]
    assert 0.15 < took < 3  # the client's timeout (twice at most), not the OS's minutes
