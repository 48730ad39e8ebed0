"""A map's item events reach the parent's hooks in every mode."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from opero import Event, OpmapError, add_hook, opmap

ITEM_KINDS = ("item_started", "item_succeeded", "item_failed", "worker_crashed")


@pytest.fixture
def item_events() -> Iterator[list[Event]]:
    seen: list[Event] = []
    remove = add_hook(lambda event: seen.append(event) if event.kind in ITEM_KINDS else None)
    yield seen
    remove()


def odd_fails(x: int) -> int:
    if x % 2:
        raise LookupError(f"item {x}")
    return x


async def odd_fails_async(x: int) -> int:
    return odd_fails(x)


def by_kind(seen: list[Event]) -> dict[str, list[int]]:
    kinds: dict[str, list[int | None]] = {}
    for event in seen:
        kinds.setdefault(event.kind, []).append(event.item)
    return {
        kind: sorted(items, key=lambda i: -1 if i is None else i) for kind, items in kinds.items()
    }


@pytest.mark.parametrize("mode", ["thread", "process", "async"])
async def test_every_item_starts_and_ends_once_whatever_the_mode(
    mode: str, item_events: list[Event]
) -> None:
    func = odd_fails_async if mode == "async" else odd_fails
    mapped = opmap(
        mode=mode, workers=2, retries=0, cache=False, progress=False, return_exceptions=True
    )(func)
    results = await mapped(range(6)) if mode == "async" else mapped(range(6))
    assert [isinstance(r, LookupError) for r in results] == [False, True] * 3
    assert by_kind(item_events) == {
        "item_started": [0, 1, 2, 3, 4, 5],
        "item_succeeded": [0, 2, 4],
        "item_failed": [1, 3, 5],
    }
    failed = [e for e in item_events if e.kind == "item_failed"]
    assert {e.error for e in failed} == {"LookupError"}
    # One map run, one correlation id; the function's name; never a value.
    assert len({e.call_id for e in item_events}) == 1
    assert {e.function for e in item_events} == {func.__qualname__}


@pytest.mark.skipif(sys.platform == "win32", reason="kills by os._exit in a worker")
def test_a_dead_worker_is_reported_with_its_item(item_events: list[Event]) -> None:
    mapped = opmap(mode="process", workers=2, retries=0, cache=False, progress=False)(
        _dies_on_three
    )
    results = mapped.imap(range(5))
    with pytest.raises(OpmapError):
        list(results)
    crashed = [e for e in item_events if e.kind == "worker_crashed"]
    assert [e.item for e in crashed] == [3]
    assert crashed[0].error == "WorkerCrashedError"


def _dies_on_three(x: int) -> int:
    if x == 3:
        os._exit(1)
    return x


def test_the_functions_own_hooks_see_them() -> None:
    seen: list[Event] = []
    mapped = opmap(
        mode="thread",
        workers=2,
        retries=0,
        cache=False,
        progress=False,
        on_event=seen.append,
    )(odd_fails)
    assert mapped(range(0, 6, 2)) == [0, 2, 4]
    assert [e.kind for e in seen].count("item_succeeded") == 3


def test_cached_items_report_success_without_starting(item_events: list[Event]) -> None:
    mapped = opmap(mode="process", workers=2, retries=0, progress=False)(odd_fails)
    assert mapped([0, 2, 0, 2]) == [0, 2, 0, 2]  # duplicates wait for the first
    kinds = by_kind(item_events)
    assert kinds["item_succeeded"] == [0, 1, 2, 3]
    assert kinds["item_started"] == [0, 1]  # only the first of each key went out
