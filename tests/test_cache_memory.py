"""The memory backend's hit path (issue 20): a plain-dict mirror read without a lock,
keys taken from the arguments as they are. What it must keep of the slow path: which
calls share an entry, counts, events, exact LRU eviction, TTL expiry, and a mirror that
holds exactly what cachetools holds."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import FakeClock, run_threads
from opero import opero
from opero._cache import memory
from opero._cache.memory import MemoryBackend
from opero._observe.events import Event


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(memory, "clock", fake)  # read when a backend is made
    return fake


def backend_of(fn: Any) -> MemoryBackend:
    backend = fn.cache_info.__self__.backend
    assert isinstance(backend, MemoryBackend)
    return backend


def assert_mirror_matches(backend: MemoryBackend) -> None:
    """The mirror holds what cachetools holds, no more and no less."""
    size = len(backend)  # purges what has expired, from cachetools and from the mirror
    assert set(backend.hot) == set(backend._entries)
    assert len(backend.hot) == size


def test_every_spelling_of_a_call_shares_the_entry_of_its_positional_form() -> None:
    calls: list[tuple[int, int]] = []

    @opero
    def f(x: int, y: int = 2) -> int:
        calls.append((x, y))
        return x * 10 + y

    # f(1, 2) is the fast path (the argument tuple is the key); the others bind first.
    assert f(1, 2) == f(1) == f(x=1) == f(1, y=2) == f(y=2, x=1) == f(x=1, y=2) == 12
    assert calls == [(1, 2)]
    assert f.cache_info() == (5, 1, 1)  # type: ignore[attr-defined]
    assert list(backend_of(f).hot) == [(1, 2)]


def test_numbers_that_compare_equal_share_an_entry_as_before() -> None:
    # Keys are the arguments themselves: 1, 1.0 and True are equal and hash alike, so
    # they share one entry, as in functools.lru_cache(typed=False) and in opero before
    # the fast path. Pinned: the fast path must not change which calls share.
    calls: list[Any] = []

    @opero
    def f(x: Any) -> Any:
        calls.append(x)
        return repr(x)

    assert f(1) == f(1.0) == f(True) == f(x=1.0) == "1"
    assert f(2) == "2"
    assert f("1") == "'1'"
    assert calls == [1, 2, "1"]


def test_a_custom_cache_key_never_takes_the_positional_fast_path() -> None:
    calls: list[int] = []

    @opero(cache_key=lambda x, y: x)
    def f(x: int, y: int) -> int:
        calls.append(y)
        return y

    assert f(1, 2) == f(1, 3) == 2  # the key is x alone, although (1, 3) is hashable
    assert calls == [2]


def test_methods_keep_self_in_the_fast_path_key() -> None:
    class Model:
        def __init__(self, name: str) -> None:
            self.name = name

        @opero
        def ask(self, prompt: str) -> str:
            return f"{self.name}:{prompt}"

    a, b = Model("a"), Model("b")
    assert (a.ask("x"), b.ask("x"), a.ask("x"), a.ask(prompt="x")) == ("a:x", "b:x", "a:x", "a:x")
    assert Model.ask.cache_info() == (2, 2, 2)  # type: ignore[attr-defined]


def test_hits_by_any_path_are_events_while_observed() -> None:
    seen: list[Event] = []

    @opero(on_event=seen.append)
    def f(x: int) -> int:
        return x

    f(1)
    f(1)
    f(x=1)
    assert [e.kind for e in seen].count("cache_hit") == 2


def test_lru_order_is_the_order_of_the_last_hits() -> None:
    # b was hit after a's first hit but before its last: b is the least recently used.
    calls: list[str] = []

    @opero(cache_maxsize=2)
    def f(x: str) -> str:
        calls.append(x)
        return x

    f("a"), f("b")
    f("a"), f("b"), f("a")
    f("c")  # evicts b
    f("a")
    f("b")
    assert calls == ["a", "b", "c", "b"]
    assert_mirror_matches(backend_of(f))


def test_ttl_expires_at_its_time_with_a_fake_clock(clock: FakeClock) -> None:
    calls: list[int] = []

    @opero(cache_ttl=10)
    def f(x: int) -> int:
        calls.append(x)
        return len(calls)

    assert f(1) == 1
    clock.now += 9.999
    assert f(1) == f(x=1) == 1
    clock.now += 0.001  # exactly the entry's time: expired, as in cachetools
    assert f(1) == 2
    assert f.cache_info() == (2, 2, 1)  # type: ignore[attr-defined]
    f(2)
    clock.now += 10
    assert f.cache_info().size == 0  # type: ignore[attr-defined]
    assert backend_of(f).hot == {}  # purged from the mirror along with cachetools


def test_the_mirror_never_outgrows_the_cache(clock: FakeClock) -> None:
    for ttl in (None, 5.0):
        backend = MemoryBackend(4, ttl)
        for key in range(50):
            backend.set(key, key)
            assert backend.get(key) == key
            clock.now += 1
            assert_mirror_matches(backend)
            assert len(backend.hot) <= 4
            assert len(backend.log) <= 4  # each write replays and empties it


def test_counts_stay_exact_while_threads_hit_and_evict() -> None:
    computed: list[int] = []
    lock = threading.Lock()

    @opero(cache_maxsize=8)
    def f(x: int, y: int = 0) -> int:
        with lock:
            computed.append(x)
        return x * 2 + y

    threads, rounds = 6, 2000
    bad: list[tuple[int, int]] = []

    def worker(seed: int) -> None:
        for i in range(rounds):
            x = (i * (seed + 1)) % 12  # 12 keys through 8 entries: hits, misses, evictions
            got = f(x) if i % 3 else f(x=x, y=0)
            if got != x * 2:
                bad.append((x, got))

    run_threads(worker, threads)  # switching within hits, not every 5 ms
    info = f.cache_info()  # type: ignore[attr-defined]
    assert bad == []
    assert info.hits + info.misses == threads * rounds
    assert info.misses == len(computed)  # every miss computed once, nothing else did
    assert info.size <= 8
    assert_mirror_matches(backend_of(f))


# A model of what the cache must do: an LRU of `maxsize` entries whose entries expire
# `ttl` after they were stored (hits do not extend them), purged at each store.
class Model:
    def __init__(self, maxsize: int, ttl: float | None) -> None:
        self.maxsize, self.ttl = maxsize, ttl
        self.entries: OrderedDict[Any, float] = OrderedDict()  # key -> expires
        self.hits = self.misses = 0

    def call(self, key: Any, now: float) -> bool:
        """Whether the call of `key` at `now` is a hit."""
        expires = self.entries.get(key)
        if expires is not None and now < expires:
            self.entries.move_to_end(key)
            self.hits += 1
            return True
        self.misses += 1
        for old in [k for k, e in self.entries.items() if not now < e]:
            del self.entries[old]
        if len(self.entries) >= self.maxsize:
            self.entries.popitem(last=False)
        self.entries[key] = now + self.ttl if self.ttl is not None else float("inf")
        return False

    def size(self, now: float) -> int:
        return sum(1 for e in self.entries.values() if now < e)


# How a step calls f(x, y=0); the first two pass y by its default.
SPELLINGS: dict[str, Any] = {
    "f(x)": lambda f, x, y: f(x),
    "f(x=x)": lambda f, x, y: f(x=x),
    "f(x, y)": lambda f, x, y: f(x, y),
    "f(x, y=y)": lambda f, x, y: f(x, y=y),
    "f(y=y, x=x)": lambda f, x, y: f(y=y, x=x),
}
STEPS = st.lists(
    st.tuples(
        st.integers(0, 5),
        st.sampled_from([0, 1]),
        st.sampled_from(list(SPELLINGS)),
        st.sampled_from([0, 0, 3]),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(
    steps=STEPS,
    maxsize=st.integers(1, 4),
    ttl=st.sampled_from([None, 5.0]),
    slack=st.sampled_from([0, memory._SLACK]),  # 0: the hit log compacts often
)
def test_property_random_spellings_behave_like_the_model(
    steps: list[tuple[int, int, str, int]], maxsize: int, ttl: float | None, slack: int
) -> None:
    now = [0.0]
    calls: list[tuple[int, int]] = []
    original = memory.clock, memory._SLACK
    memory.clock = lambda: now[0]  # hypothesis runs the body many times: no fixture
    memory._SLACK = slack
    try:

        @opero(cache_maxsize=maxsize, cache_ttl=ttl)
        def f(x: int, y: int = 0) -> int:
            calls.append((x, y))
            return x * 10 + y

    finally:
        memory.clock, memory._SLACK = original
    model = Model(maxsize, ttl)
    for x, given_y, spelling, wait in steps:
        now[0] += wait
        y = 0 if spelling in ("f(x)", "f(x=x)") else given_y  # the first two: the default
        before = len(calls)
        assert SPELLINGS[spelling](f, x, y) == x * 10 + y
        hit = model.call((x, y), now[0])
        assert len(calls) == before + (0 if hit else 1), (x, y, spelling)
    info = f.cache_info()  # type: ignore[attr-defined]
    assert (info.hits, info.misses, info.size) == (model.hits, model.misses, model.size(now[0]))
    assert_mirror_matches(backend_of(f))


@pytest.mark.parametrize("ttl", [None, 50.0])
def test_compacting_the_hit_log_keeps_last_hits_and_counts(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch, ttl: float | None
) -> None:
    # A cache read and not written compacts its hit log: each entry kept once, at its
    # last hit (not its first), and every hit still counted.
    monkeypatch.setattr(memory, "_SLACK", 0)  # the limit is then twice the cache: 4
    calls: list[str] = []

    @opero(cache_maxsize=2, cache_ttl=ttl)
    def f(x: str) -> str:
        calls.append(x)
        return x

    backend = backend_of(f)

    def hit(x: str) -> None:
        clock.now += 0.01  # past `due`: a TTL hit compacts as soon as the log is over
        assert f(x) == x

    f("a"), f("b")
    for x in "ababa":  # the fifth compacts [a b a b a] to [b a] ...
        hit(x)
    for x in "bbb":  # ... then [b a b b b] to [a b]: first hits would say [b a]
        hit(x)
    assert len(backend.log) <= backend.limit
    f("c")  # evicts a, the least recently used
    hit("b")
    f("a")
    assert calls == ["a", "b", "c", "a"]
    assert f.cache_info() == (9, 4, 2)  # type: ignore[attr-defined]


@pytest.mark.parametrize("ttl", [None, 50.0])
def test_a_log_read_by_threads_stays_bounded_and_counted(
    clock: FakeClock, ttl: float | None
) -> None:
    # Hits only, from threads, past the limit many times: no hit lost, none counted twice.
    @opero(cache_maxsize=4, cache_ttl=ttl)
    def f(x: int) -> int:
        return x

    for x in range(4):
        f(x)
    backend = backend_of(f)
    rounds, threads = 3000, 4
    bad: list[int] = []

    def worker(seed: int) -> None:
        for i in range(rounds):
            if i % 50 == 0:
                clock.now += 0.01  # lets TTL hits compact
            if f((i + seed) % 4) != (i + seed) % 4:
                bad.append(i)

    run_threads(worker, threads)
    assert bad == []
    assert f.cache_info() == (rounds * threads, 4, 4)  # type: ignore[attr-defined]
    assert len(backend.log) <= backend.limit + threads * 50


async def test_async_and_frozen_hits_are_counted_once() -> None:
    @opero
    async def f(x: Any) -> Any:
        return x

    assert await f(1) == await f(1) == await f(x=1) == 1
    assert await f([1]) == await f([1]) == [1]  # unhashable: found through its frozen key
    assert f.cache_info() == (3, 2, 2)  # type: ignore[attr-defined]
    f.cache_clear()  # type: ignore[attr-defined]
    assert f.cache_info() == (0, 0, 0)  # type: ignore[attr-defined]
    assert await f(1) == 1
    assert f.cache_info() == (0, 1, 1)  # type: ignore[attr-defined]


def test_delete_replays_the_log_and_lets_go_of_the_value() -> None:
    backend = MemoryBackend(4, None)
    backend.set("k", "v")
    assert backend.get("k") == "v"
    backend.delete("k")
    assert backend.log == []
    assert backend.hits == 1
    with pytest.raises(KeyError):
        backend.get("k")
