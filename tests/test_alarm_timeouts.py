"""Sync attempt timeouts in the default mode (`timeout_mode="abandon"`): SIGALRM only in
@opmap workers (whatever the mode), and never into opero's code. The main thread's
`timeout_mode="interrupt"` is tested in test_interrupt_timeouts.py.

Each subprocess test runs in a fresh interpreter: pytest-timeout holds SIGALRM in this
one (its signal method), which would hide what the main thread of a script does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import output_of
from opero import AttemptTimeoutError, opmap

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no SIGALRM on Windows")


run = output_of


def test_a_scripts_main_thread_keeps_its_sigalrm_and_timers() -> None:
    # A host's watchdog alarm() outlives opero's timed calls, and SIGALRM stays the
    # host's (the review found opero cancelling and swallowing both).
    out = run(
        """
        import signal, threading, time
        from opero import AttemptTimeoutError, opero

        @opero(cache=False, retries=0, timeout=0.05)
        def slow():
            time.sleep(0.2)
            return "late"

        try:
            slow()
        except AttemptTimeoutError:
            print("timed out")
        signal.alarm(30)                      # the host's watchdog
        slow.__wrapped__                      # (the decorated function is untouched)
        try:
            slow()
        except AttemptTimeoutError:
            print("timed out")
        print(signal.getsignal(signal.SIGALRM) == signal.SIG_DFL, signal.alarm(0) > 0)
        print(any(t.name == "opero-attempt" for t in threading.enumerate()))
        """
    )
    assert out.splitlines() == ["timed out", "timed out", "True True", "True"]


NESTED = """
import sys, threading
from opero import opero, opmap
from opero._timeouts import alarm

UNGUARDED = "--unguarded" in sys.argv  # travels to the worker with `item`

@opero(cache_maxsize=64)
def inner(x):
    return x * 2

@opero(cache=False, retries=0, timeout=0.0002)
def timed(seed):
    key = seed
    while True:  # cut by the timer, wherever it lands: often inside inner's cache step
        key = (key * 1103515245 + 12345) % 1_000_003
        inner(key)

def item(n):
    if UNGUARDED:  # what the handler did before: raise wherever it lands
        alarm._must_wait = lambda frame: False
    for i in range(1000):
        try:
            timed(n * 10_000 + i)
        except TimeoutError:
            pass
    step = inner.cache_clear.__self__
    stuck = len(step._flights)
    inner.cache_clear()
    answered = []
    probe = threading.Thread(target=lambda: answered.extend(inner(k) for k in range(500)))
    probe.daemon = True
    probe.start()
    probe.join(3)
    return stuck, len(answered) == 500

if __name__ == "__main__":
    mapped = opmap(workers=1, cache=False, progress=False, retries=0)(item)
    print(mapped(range(1)))
"""


def nested_run(*flags: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", NESTED, *flags],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_a_nested_cached_call_inside_a_timed_item_leaves_no_stuck_flight(
    tmp_path: Path,
) -> None:
    # The review's reproduction, in a worker (where SIGALRM cuts items): an item with a
    # tiny timeout calls a cached opero function thousands of times; no single-flight
    # entry is left behind, and every key still answers afterwards.
    assert nested_run(tmp_path / "nested.py") == "[(0, True)]"
    # Without the guard, flights are left behind (51 of 2,000 calls in one run here).
    assert nested_run(tmp_path / "nested.py", "--unguarded") != "[(0, True)]"


_HELD = threading.Lock()


def _hold_forever_or_pid(x: int) -> int:
    if x == 0:
        _HELD.acquire()  # the timer cuts the sleep below: held for good in this process
        time.sleep(30)
    with _HELD:
        return os.getpid()


# One worker, one item a chunk, each item its own chunk, failures kept in place.
_ONE_WORKER = opmap(
    mode="process",
    workers=1,
    chunksize=1,
    timeout=0.5,
    retries=0,
    cache=False,
    progress=False,
    return_exceptions=True,
)(_hold_forever_or_pid)


def test_a_worker_whose_item_a_timer_cut_is_replaced_before_the_next_chunk() -> None:
    # An interrupted item may leave anything half done in its process (here a lock it
    # never releases). Its worker leaves once that chunk is answered: without that, item
    # 1 would wait on the lock in the same process until its own timeout failed it.
    started = time.monotonic()
    first, *pids = _ONE_WORKER([0, 1, 2, 3])
    assert isinstance(first, AttemptTimeoutError)
    assert all(isinstance(pid, int) for pid in pids), pids
    assert len(set(pids)) == 1  # one fresh worker, kept: nothing cut it
    assert os.getpid() not in pids
    assert time.monotonic() - started < 10


def test_a_worker_nothing_cut_runs_every_chunk() -> None:
    pids = _ONE_WORKER([1, 2, 3, 4])
    assert all(isinstance(pid, int) for pid in pids), pids
    assert len(set(pids)) == 1
