"""`@opmap(resume=path)`: a map killed with SIGKILL and run again redoes no finished item."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from opero import OpmapError, opmap
from opero._maps.journal import done_indices

POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and sessions")

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from opero import opmap

    CALLS = ""  # set under the main guard: a fork server imports this module too (3.13+)

    def work(x: int, offset: int) -> int:
        with open(CALLS, "a") as calls:  # one short O_APPEND write per call
            calls.write(f"{x}\\n")
        time.sleep(0.002)
        return x * x + offset

    async def awork(x: int, offset: int) -> int:
        with open(CALLS, "a") as calls:
            calls.write(f"{x}\\n")
        await asyncio.sleep(0.004)
        return x * x + offset

    if __name__ == "__main__":
        MODE, JOURNAL, CALLS, COUNT = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
        common = dict(resume=JOURNAL, progress=False, retries=0, cache=False)
        if MODE == "async":
            mapped = opmap(mode="async", workers=4, **common)(awork)
            results = asyncio.run(mapped(range(COUNT), offset=7))
        else:
            mapped = opmap(mode=MODE, workers=2, chunksize=4, **common)(work)
            results = mapped(range(COUNT), offset=7)
        print(json.dumps(results))
    """
)


def _calls(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _wait_for_group_to_end(pgid: int) -> None:
    """Workers of a killed parent exit on their own; the rerun waits for them."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    os.killpg(pgid, signal.SIGKILL)
    raise AssertionError("the killed map's workers outlived it")


@POSIX_ONLY
@pytest.mark.parametrize("mode", ["process", "thread", "async"])
def test_a_map_killed_mid_way_redoes_no_finished_item(mode: str, tmp_path: Path) -> None:
    count, journal, calls = 600, tmp_path / "map.journal", tmp_path / "calls"
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    command = [sys.executable, str(script), mode, str(journal), str(calls), str(count)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        while not (journal.exists() and len(done_indices(str(journal))) >= 20):
            assert child.poll() is None, "the map ended before it was killed"
            time.sleep(0.005)
        time.sleep(random.uniform(0, 0.1))  # a random point after some items are done
        child.kill()
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    _wait_for_group_to_end(child.pid)
    done = done_indices(str(journal))
    first = _calls(calls)
    assert 20 <= len(done) < count
    calls.unlink()
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=True)
    # The same results, in the same order, as a map that was never interrupted.
    assert json.loads(rerun.stdout) == [x * x + 7 for x in range(count)]
    second = _calls(calls)
    # No finished item ran again; every other one ran exactly once more.
    assert sorted(second) == sorted(set(range(count)) - done)
    assert sorted(set(first) | set(second)) == list(range(count))
    # Run once more: everything is done, nothing runs.
    calls.unlink()
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=True)
    assert json.loads(again.stdout) == [x * x + 7 for x in range(count)]
    assert _calls(calls) == []


FAILING: set[int] = set()  # items of _counted that fail (not an argument: that is the call)


def _counted(x: int, log: list[int], fail: frozenset[int] = frozenset()) -> int:
    log.append(x)
    if x in fail or x in FAILING:
        raise ValueError(f"item {x}")
    return 10 * x


def test_failed_items_run_again_and_imap_unordered_serves_the_rest(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    log: list[int] = []
    options: dict[str, Any] = {"mode": "thread", "workers": 2, "progress": False, "retries": 0}
    first = opmap(resume=path, chunksize=3, **options)(_counted)
    FAILING.update({4, 8})
    try:
        with pytest.raises(OpmapError) as failed:
            first(range(10), log)
    finally:
        FAILING.clear()
    assert sorted(failed.value.failures) == [4, 8]
    log.clear()
    # Other options, the same call: the failed items run again, alone, and the rest is
    # served from the journal (as a stream, in completion order).
    again = opmap(resume=path, ordered=False, chunksize=5, **options)(_counted)
    assert sorted(again.imap(range(10), log)) == [10 * x for x in range(10)]
    assert sorted(log) == [4, 8]
    log.clear()
    assert list(first.imap(range(10), log)) == [10 * x for x in range(10)]  # all done
    assert log == []


def test_changed_items_and_changed_arguments_are_not_served_stale(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    log: list[int] = []
    mapped = opmap(mode="thread", workers=1, chunksize=4, progress=False, resume=path)(_counted)
    assert mapped(range(12), log) == [10 * x for x in range(12)]
    log.clear()
    items = [*range(5), 99, *range(6, 12)]  # item 5 changed: its chunk (4..7) runs again
    assert mapped(items, log) == [10 * x for x in items]
    assert sorted(log) == [4, 6, 7, 99]
    log.clear()
    # Another call (its extra arguments differ): the journal starts afresh.
    assert mapped(items, log, frozenset({1000})) == [10 * x for x in items]
    assert sorted(log) == sorted(items)


def test_a_torn_last_record_is_ignored_and_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "j"
    log: list[int] = []
    mapped = opmap(mode="thread", workers=1, chunksize=2, progress=False, resume=path)(_counted)
    mapped(range(6), log)
    whole = path.read_bytes()
    with path.open("ab") as file:  # a kill while writing: a frame's first bytes only
        file.write(b"\x40\x00\x00\x00\x12\x34\x56\x78partial")
    log.clear()
    assert mapped(range(8), log) == [10 * x for x in range(8)]
    assert sorted(log) == [6, 7]
    assert path.read_bytes().startswith(whole)
    assert done_indices(str(path)) == set(range(8))


def test_process_mode_with_the_parent_cache_resumes_item_by_item(tmp_path: Path) -> None:
    path, calls = str(tmp_path / "j"), tmp_path / "calls"
    mapped = opmap(workers=2, progress=False, retries=0, resume=path, return_exceptions=True)(
        _logged
    )
    shown = [repr(r) for r in mapped([1, 2, 2, 3, 4], str(calls))]
    assert shown == ["10", "20", "20", "ValueError('three')", "40"]
    assert sorted(_calls(calls)) == [1, 2, 3, 4]  # the duplicate came from the cache
    assert done_indices(path) == {0, 1, 2, 4}  # and is done too; the failure is not
    mapped.cache_clear()
    calls.unlink()
    assert [repr(r) for r in mapped([1, 2, 2, 3, 4], str(calls))] == shown
    assert _calls(calls) == [3]


def _logged(x: int, calls: str) -> int:
    with open(calls, "a") as file:
        file.write(f"{x}\n")
    if x == 3:
        raise ValueError("three")
    return 10 * x


async def test_async_mode_resumes(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    log: list[int] = []
    broken = [True]

    @opmap(mode="async", workers=3, progress=False, retries=0, resume=path)
    async def fetch(x: int) -> int:
        log.append(x)
        await asyncio.sleep(0)
        if x == 2 and broken[0]:
            raise ValueError("flaky")
        return x + 1

    with pytest.raises(OpmapError):
        await fetch(range(5))
    log.clear()
    broken[0] = False
    assert await fetch(range(5)) == [1, 2, 3, 4, 5]
    assert log == [2]


def _tens(x: int) -> int:
    return 10 * x


def test_one_map_at_a_time_per_journal(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    mapped = opmap(mode="thread", workers=1, progress=False, resume=path)(_tens)
    stream = mapped.imap([1, 2])
    next(stream)  # the journal is open while the stream is
    with pytest.raises(RuntimeError, match="another map is using this journal"):
        mapped([1])
    stream.close()
    assert mapped([1]) == [10]


@pytest.mark.parametrize(
    ("value", "error", "text"),
    [
        (42, TypeError, "resume must be a path"),
        (True, TypeError, "resume must be a path"),
        (b"bytes", TypeError, "resume must be a path"),
        ("", ValueError, "resume must name a file"),
        ("   ", ValueError, "resume must name a file"),
    ],
)
def test_bad_resume_fails_at_decoration(value: object, error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        opmap(resume=value)(_tens)  # type: ignore[call-overload]


def test_resume_must_not_be_a_directory_or_under_a_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory"):
        opmap(resume=tmp_path)(_tens)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        opmap(resume=tmp_path / "file" / "j")(_tens)


def test_a_file_that_is_not_a_journal_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my notes, which a typo in resume= must not destroy\n")
    mapped = opmap(mode="thread", progress=False, resume=path)(_tens)
    with pytest.raises(ValueError, match="not an opero journal"):
        mapped([1])
    assert path.read_text().startswith("my notes")


def test_a_function_that_cannot_be_identified_fails_at_decoration(tmp_path: Path) -> None:
    lock = __import__("threading").Lock()

    def closure(x: int) -> int:
        with lock:
            return x

    with pytest.raises(ValueError, match="resume="):
        opmap(mode="thread", resume=tmp_path / "j")(closure)
