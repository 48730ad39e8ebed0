"""Sync attempt timeouts on the main thread run the attempt there, under SIGALRM.

Each test runs in a fresh interpreter: pytest-timeout holds SIGALRM in this one (its
signal method), which is exactly the host handler opero must leave alone.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no SIGALRM on Windows")


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_the_attempt_stops_at_its_timeout_on_the_main_thread() -> None:
    out = run(
        """
        import threading, time
        from opero import AttemptTimeoutError, current_attempt, opero
        from opero._timeouts.threads import abandoned_attempts

        after, seen = [], []

        @opero(cache=False, retries=1, min_delay=0, timeout=0.1)
        def slow_then_fast():
            seen.append(current_attempt())
            if len(seen) == 1:
                time.sleep(2)          # a blocking call: the signal interrupts it
                after.append("late")
            return "ok"

        began = time.perf_counter()
        assert slow_then_fast() == "ok"
        took = time.perf_counter() - began
        time.sleep(0.3)
        names = sorted(t.name for t in threading.enumerate())
        print(seen, after, names, abandoned_attempts(), 0.09 < took < 1.5)
        """
    )
    # Attempt 1 was cut at 0.1 s and never went on; no helper thread ever started.
    assert out == "[1, 2] [] ['MainThread'] 0 True"


def test_a_timeout_still_raises_attempt_timeout_error_and_leaves_sigalrm_to_opero() -> None:
    out = run(
        """
        import signal, time
        from opero import AttemptTimeoutError, opero

        @opero(cache=False, retries=0, timeout=0.05)
        def stuck():
            while True:                # pure Python: cut between two bytecodes
                pass

        try:
            stuck()
        except AttemptTimeoutError as exc:
            print(type(exc).__name__, isinstance(exc, TimeoutError))
        print(signal.getitimer(signal.ITIMER_REAL))  # no timer left pending
        """
    )
    assert out.splitlines() == ["AttemptTimeoutError True", "(0.0, 0.0)"]


def test_a_host_sigalrm_handler_is_left_alone_and_the_attempt_handed_off() -> None:
    out = run(
        """
        import signal, threading, time
        from opero import AttemptTimeoutError, opero

        def host(signum, frame):
            print("host handler ran")

        signal.signal(signal.SIGALRM, host)

        @opero(cache=False, retries=0, timeout=0.05)
        def slow():
            time.sleep(0.3)
            return "late"

        try:
            slow()
        except AttemptTimeoutError:
            print("timed out")
        print(signal.getsignal(signal.SIGALRM) is host)
        print(any(t.name == "opero-attempt" for t in threading.enumerate()))
        """
    )
    assert out.splitlines() == ["timed out", "True", "True"]


def test_other_threads_and_nested_timeouts_hand_the_attempt_off() -> None:
    out = run(
        """
        import threading, time
        from opero import AttemptTimeoutError, opero
        from opero._timeouts.threads import abandoned_attempts

        @opero(cache=False, retries=0, timeout=0.05)
        def inner():
            time.sleep(0.3)
            return "late"

        @opero(cache=False, retries=0, timeout=2)
        def outer():
            try:
                return inner()         # nested: the timer is outer's; inner hands off
            except AttemptTimeoutError:
                return "inner timed out"

        print(outer())
        results = []
        worker = threading.Thread(target=lambda: results.append(outer()))
        worker.start()
        worker.join()
        print(results, abandoned_attempts() >= 1)
        """
    )
    assert out.splitlines() == ["inner timed out", "['inner timed out'] True"]
