"""`timeout_mode="interrupt"`: sync attempts run in the caller's thread under SIGALRM on
the main thread while it is free, and are handed off elsewhere; the timer never raises
into opero's code, a finaliser or the stdlib's lock-holding code, never over the host's
own handler or timer, and an attempt that returns past its deadline still times out.

Each subprocess test runs in a fresh interpreter: pytest-timeout holds SIGALRM in this
one (its signal method), which would hide what the main thread of a script does. The
tests of the bugs reviews found in earlier versions also run a deliberately broken
variant (`--naive`), to show that they catch the bug.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

import pytest

from helpers import output_of, run_python
from opero._timeouts import alarm, frames

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no SIGALRM on Windows")


script, run = run_python, output_of


# --- the review's three bugs -------------------------------------------------------------

NESTED = """
import sys, threading
from opero import opero
from opero._timeouts import alarm

if "--naive" in sys.argv:  # raise wherever the signal lands
    alarm._must_wait = lambda frame: False

@opero(cache_maxsize=64)
def inner(x):
    return x * 2

@opero(timeout_mode="interrupt", cache=False, retries=0, timeout=0.0002)
def timed(seed):
    key = seed
    while True:  # cut by the timer, wherever it lands: often inside inner's cache step
        key = (key * 1103515245 + 12345) % 1_000_003
        inner(key)

escaped = 0
for i in range(int(sys.argv[1])):
    try:
        timed(i)
    except TimeoutError:
        pass
    except BaseException:  # the naive variant lets the raw signal exception out
        escaped += 1
step = inner.cache_clear.__self__
stuck = len(step._flights)
inner.cache_clear()
answered = []
probe = threading.Thread(target=lambda: answered.extend(inner(k) for k in range(500)))
probe.daemon = True
probe.start()
probe.join(3)
print(stuck, escaped, len(answered) == 500, threading.active_count())
"""


def test_bug1_a_nested_cached_call_on_the_main_thread_leaves_no_stuck_flight() -> None:
    # The review's reproduction on a script's main thread: a timed attempt calls a
    # cached opero function thousands of times; the timer never lands inside its
    # single-flight bookkeeping, so no entry is left and every key still answers.
    # (Fewer rounds: here the attempt is nearly all opero's code, so the timeout waits
    # for the rare signal that lands in the user's loop, a few ms an attempt.)
    assert run(NESTED, "500") == "0 0 True 1"  # 1 thread: nothing was handed off
    # Raising wherever it lands leaves flights behind (43 of 2,000 attempts here).
    assert run(NESTED, "2000", "--naive") != "0 0 True 1"


FINALISER = """
import sys, time, weakref
from opero import AttemptTimeoutError, opero
from opero._timeouts import alarm

KIND = sys.argv[1]
if "--naive" in sys.argv:  # raise once, and only where the signal lands
    alarm._REFIRE = 3600.0
    alarm._must_wait = lambda frame: False

class Thing:
    def __del__(self):
        if KIND == "del":
            time.sleep(0.3)  # a finaliser that blocks: the timer lands in it

def gone(ref):
    time.sleep(0.3)  # a weakref callback that blocks: the timer lands in it

@opero(timeout_mode="interrupt", cache=False, retries=0, timeout=0.1)
def work():
    thing = Thing()
    ref = weakref.ref(thing, gone if KIND == "weakref" else None)
    del thing  # the finaliser runs now, inside the attempt
    time.sleep(1.5)
    return "ran on"

began = time.perf_counter()
try:
    outcome = work()
except AttemptTimeoutError:
    outcome = "timed out"
print(outcome, time.perf_counter() - began < 0.6)
"""


@pytest.mark.parametrize("kind", ["weakref", "del"])
def test_bug2_a_timeout_landing_in_a_finaliser_is_not_lost(kind: str) -> None:
    # Python drops an exception raised in a finaliser ("Exception ignored in ..."). A
    # `__del__` is waited out (the timeout lands once it returned); a weakref callback
    # cannot be told apart, but the timer fires again 1 ms later, in the attempt.
    assert run(FINALISER, kind) == "timed out True"
    # Raised once where it lands, the timeout is lost: the attempt runs on to its end
    # (where it returns past its deadline, and times out only then).
    assert run(FINALISER, kind, "--naive") == "timed out False"


HOST = """
import signal, sys, time
from opero import AttemptTimeoutError, opero
from opero._timeouts import alarm

if "--naive" in sys.argv:  # keep SIGALRM once taken, and never look for a host timer
    alarm._alarm.enable()
    set_timer = alarm._setitimer
    alarm._setitimer = lambda *timer: (set_timer(*timer), (0.0, 0.0))[1]

@opero(timeout_mode="interrupt", cache=False, retries=0, timeout=5)
def fast():
    return 1

@opero(timeout_mode="interrupt", cache=False, retries=0, timeout=0.05)
def slow():
    time.sleep(0.3)
    return "late"

def cut():
    try:
        return slow()
    except AttemptTimeoutError:
        return "timed out"

fired = []
def host(signum, frame):
    fired.append(round(time.monotonic() - set_at, 1))

# Between opero's calls SIGALRM is as the host left it.
print(fast(), cut(), signal.getsignal(signal.SIGALRM) == signal.SIG_DFL)
# The host's timer, set between calls, outlives timed calls and fires into its handler.
set_at = time.monotonic()
signal.setitimer(signal.ITIMER_REAL, 0.4)
print(sum(fast() for _ in range(1000)), cut())
signal.signal(signal.SIGALRM, host)
time.sleep(0.6)
# The host's handler and watchdog alarm, set first, are kept: opero hands off meanwhile.
set_at = time.monotonic()
signal.setitimer(signal.ITIMER_REAL, 0.3)
print(fast(), cut(), signal.getsignal(signal.SIGALRM) is host)
time.sleep(0.5)
print(fired)
"""


def test_bug3_the_hosts_alarm_and_handler_are_kept_and_fire() -> None:
    assert run(HOST).splitlines() == [
        "1 timed out True",
        "1000 timed out",
        "1 timed out True",
        "[0.4, 0.3]",
    ]
    # Keeping SIGALRM and ignoring the host's timer cancels and swallows the host's.
    assert run(HOST, "--naive").splitlines()[-1] != "[0.4, 0.3]"


def test_a_foreign_sigalrm_during_an_attempt_gets_the_default_action() -> None:
    # A SIGALRM sent while opero holds the signal is not swallowed: the default action
    # (the process ends), as without opero.
    done = script(
        """
        import os, signal, time
        from opero import opero

        @opero(timeout_mode="interrupt", cache=False, retries=0, timeout=5)
        def work():
            os.kill(os.getpid(), signal.SIGALRM)
            time.sleep(1)
            print("survived")

        work()
        """
    )
    assert done.returncode == -signal.SIGALRM, (done.returncode, done.stdout, done.stderr)
    assert "survived" not in done.stdout


# --- what the timer cuts, and what it leaves ---------------------------------------------


def test_a_blocking_sleep_on_the_main_thread_stops_at_the_timeout() -> None:
    out = run(
        """
        import threading, time
        from opero import AttemptTimeoutError, opero

        after = []

        @opero(timeout_mode="interrupt", cache=False, retries=0, timeout=0.2)
        def slow():
            time.sleep(5)  # a blocking call: the signal interrupts it
            after.append("late")

        @opero(timeout_mode="interrupt", cache=False, retries=0, timeout=0.1)
        def spin():
            while True:  # pure Python: cut between two bytecodes
                pass

        for func in (slow, spin):
            began = time.perf_counter()
            try:
                func()
            except AttemptTimeoutError as exc:
                took = time.perf_counter() - began
                print(exc, 0.09 < took < 0.5)
        time.sleep(0.2)
        print(after, threading.active_count())
        """
    )
    assert out.splitlines() == [
        "slow(): attempt timed out after 0.2s True",
        "spin(): attempt timed out after 0.1s True",
        "[] 1",
    ]


def test_retries_after_a_timeout_run_in_place_and_count_attempts() -> None:
    out = run(
        """
        import threading, time
        from opero import current_attempt, opero
        from opero._timeouts.threads import abandoned_attempts

        seen = []

        @opero(
            cache=False, retries=2, min_delay=0, max_delay=0, timeout=0.1, timeout_mode="interrupt"
        )
        def flaky():
            seen.append(current_attempt())
            if len(seen) < 3:
                time.sleep(2)
            return "ok"

        began = time.perf_counter()
        print(flaky(), seen, 0.19 < time.perf_counter() - began < 1.0)
        print(threading.active_count(), abandoned_attempts())
        """
    )
    assert out.splitlines() == ["ok [1, 2, 3] True", "1 0"]


def test_no_thread_is_started_on_the_success_path() -> None:
    out = run(
        """
        import signal, threading
        from opero import opero

        @opero(timeout_mode="interrupt", cache=False, retries=3, timeout=5, total_timeout=10)
        def ok(x):
            return x

        print(sum(ok(i) for i in range(10_000)), threading.active_count())
        print(signal.getsignal(signal.SIGALRM) == signal.SIG_DFL)
        print(signal.getitimer(signal.ITIMER_REAL))
        """
    )
    assert out.splitlines() == [f"{sum(range(10_000))} 1", "True", "(0.0, 0.0)"]


def test_nested_timeouts_belong_to_their_own_attempts() -> None:
    out = run(
        """
        import time
        from opero import AttemptTimeoutError, opero

        inner_attempts = []

        @opero(
            cache=False, retries=3, min_delay=0, max_delay=0, timeout=2, timeout_mode="interrupt"
        )
        def long_inner():
            inner_attempts.append(1)
            time.sleep(5)

        @opero(timeout_mode="interrupt", cache=False, retries=0, timeout=0.2)
        def short_outer():
            return long_inner()

        # The outer deadline passes inside the inner attempt: the outer's timeout, and
        # the inner's retries do not take it for their own.
        began = time.perf_counter()
        try:
            short_outer()
        except AttemptTimeoutError as exc:
            print(exc, len(inner_attempts), 0.19 < time.perf_counter() - began < 0.6)

        @opero(
            cache=False, retries=1, min_delay=0, max_delay=0, timeout=0.1, timeout_mode="interrupt"
        )
        def short_inner():
            time.sleep(5)

        @opero(timeout_mode="interrupt", cache=False, retries=0, timeout=3)
        def long_outer():
            try:
                short_inner()
            except AttemptTimeoutError as exc:
                return f"caught {exc}"

        # The inner's own timeout: retried by the inner, then the outer goes on.
        began = time.perf_counter()
        print(long_outer(), 0.19 < time.perf_counter() - began < 1.0)

        @opero(
            cache=False, retries=1, min_delay=0, max_delay=0, timeout=0.2, timeout_mode="interrupt"
        )
        def retried_outer():
            from opero import current_attempt
            if current_attempt() == 1:
                long_inner()
            return "second"

        inner_attempts.clear()
        print(retried_outer(), len(inner_attempts))
        """
    )
    assert out.splitlines() == [
        "short_outer(): attempt timed out after 0.2s 1 True",
        "caught short_inner(): attempt timed out after 0.1s True",
        "second 1",
    ]


def test_a_deadline_cuts_the_attempt_in_place() -> None:
    out = run(
        """
        import threading, time
        from opero import DeadlineExceededError, opero

        @opero(
            cache=False, retries=5, min_delay=0, max_delay=0, timeout=1, total_timeout=0.3,
            timeout_mode="interrupt",
        )
        def slow():
            time.sleep(0.2)
            raise ValueError("again")

        began = time.perf_counter()
        try:
            slow()
        except DeadlineExceededError:
            print("deadline", 0.29 < time.perf_counter() - began < 0.7, threading.active_count())
        """
    )
    assert out == "deadline True 1"


def test_other_threads_and_a_host_handler_hand_the_attempt_off() -> None:
    out = run(
        """
        import signal, threading, time
        from opero import AttemptTimeoutError, opero

        @opero(timeout_mode="interrupt", cache=False, retries=0, timeout=0.05)
        def slow():
            time.sleep(0.3)
            return "late"

        def cut():
            try:
                return slow()
            except AttemptTimeoutError:
                return "timed out"

        results = []
        caller = threading.Thread(target=lambda: results.append(cut()))
        caller.start()
        caller.join()
        print(results, any(t.name == "opero-attempt" for t in threading.enumerate()))
        """
    )
    assert out == "['timed out'] True"


# --- the handler's guard, in this process ---------------------------------------------------


def frame_in(filename: str, through: Any) -> FrameType:
    """A frame whose code claims to live in `filename`, called by `through(callee)`."""
    namespace: dict[str, Any] = {"sys": sys}
    exec(compile("def here():\n    return sys._getframe()\n", filename, "exec"), namespace)
    frame: FrameType = through(namespace["here"])
    return frame


def attempt_frame(callee: Any) -> Any:
    return callee()  # stands for `_Alarm.run` calling the attempt


def test_the_handler_waits_in_opero_code_and_finalisers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alarm, "_RUN_CODES", frozenset({attempt_frame.__code__}))
    user = frame_in(os.path.join(os.sep, "app", "user_code.py"), attempt_frame)
    assert not alarm._must_wait(user)  # the user's own code: the timeout lands
    opero_code = frame_in(os.path.join(frames._OPERO_DIR, "_cache", "step.py"), attempt_frame)
    assert alarm._must_wait(opero_code)  # a nested opero call's cache step: not there
    assert alarm._must_wait(frame_in(os.path.join(os.sep, "app", "x.py"), lambda f: f()))
    namespace: dict[str, Any] = {"sys": sys}
    exec(compile("def __del__():\n    return sys._getframe()\n", "/app/x.py", "exec"), namespace)
    assert alarm._must_wait(attempt_frame(namespace["__del__"]))  # a finaliser: after it


# --- the second review's findings ----------------------------------------------------------

LOCKS = """
import logging, os, queue, sys, threading
from opero import AttemptTimeoutError, opero
from opero._timeouts import frames

if "--naive" in sys.argv:  # raise anywhere but opero's own code, as the first version did
    frames._HOLDERS = (frames._OPERO_DIR,)
    frames._holder_module = lambda name: False

jobs = queue.Queue()
handler = logging.StreamHandler(open(os.devnull, "w"))
log = logging.getLogger("locks")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False

@opero(cache=False, retries=0, timeout=2e-4, timeout_mode="interrupt")
def busy():
    n = 0
    while True:  # cut wherever the timer lands: often inside queue's or logging's locks
        jobs.put(1)
        jobs.get()
        log.info("n %s", n)
        for i in range(20):
            n += i

held = None
for i in range(int(sys.argv[1])):
    try:
        busy()
    except AttemptTimeoutError:
        pass
    if jobs.mutex.locked() or handler.lock._is_owned():
        held = i
        break
other = threading.Thread(target=lambda: (jobs.put(2), log.info("other")), daemon=True)
other.start()
other.join(2)
print(held, other.is_alive())
"""


def test_review1_no_stdlib_lock_is_left_held() -> None:
    # The exception must not land inside `Condition.__enter__` (a Queue's put and get) or
    # between logging's `Handler.acquire()` and its `try:`: the lock would stay held and
    # every other thread using the queue or the logger would hang.
    assert run(LOCKS, "1000") == "None False"
    # Raising there leaves a lock held within a few calls (the 6th, in one run here).
    assert run(LOCKS, "1000", "--naive") != "None False"


BLOCKING_WAITS = """
import queue, threading, time
from concurrent.futures import ThreadPoolExecutor
from opero import AttemptTimeoutError, opero

jobs = queue.Queue()
pool = ThreadPoolExecutor(1)
never = threading.Event()

@opero(cache=False, retries=0, timeout=0.1, timeout_mode="interrupt")
def wait_on(what):
    if what == "queue":
        jobs.get()
    elif what == "event":
        never.wait()
    elif what == "future":
        pool.submit(never.wait, 3).result()
    elif what == "join":
        worker = threading.Thread(target=never.wait, args=(3,), daemon=True)
        worker.start()
        worker.join()
    return "returned"

for what in ("queue", "event", "future", "join"):
    began = time.perf_counter()
    try:
        wait_on(what)
    except AttemptTimeoutError:
        print(what, time.perf_counter() - began < 1.5)
jobs.put(1)
print(jobs.get(timeout=1), jobs.mutex.locked())
never.set()
pool.shutdown()
"""


def test_blocking_waits_on_threading_primitives_are_still_cut() -> None:
    # Blocked inside `Condition.wait` or a thread join, the exception is safe (those
    # waits give their lock back in a `finally`): the stdlib frames around do not make
    # the timer wait there.
    assert run(BLOCKING_WAITS).splitlines() == [
        "queue True",
        "event True",
        "future True",
        "join True",
        "1 False",
    ]


NESTED_UNTIMED = """
import sys, time
from opero import AttemptTimeoutError, opero
from opero._timeouts import alarm

if "--naive" in sys.argv:  # no deadline check when an attempt returns
    alarm._monotonic = lambda: 0.0

@opero(cache=False, retries=0)
def inner():
    time.sleep(0.3)  # opero's frames are around it: the timer waits for it to return
    return "inner value"

@opero(cache=False, retries=0, timeout=0.05, timeout_mode="interrupt")
def outer():
    return inner()  # and returns straight after it: the timer never got in

began = time.perf_counter()
try:
    print(outer())
except AttemptTimeoutError as exc:
    print(exc, time.perf_counter() - began < 1.0)
"""


def test_review2_an_outer_timeout_is_not_lost_after_a_nested_untimed_call() -> None:
    assert run(NESTED_UNTIMED) == "outer(): attempt timed out after 0.05s True"
    assert run(NESTED_UNTIMED, "--naive") == "inner value"


UNDELIVERED = """
import signal, sys, threading, time
from opero import AttemptTimeoutError, opero
from opero._timeouts import alarm

if "--naive" in sys.argv:  # no deadline check when an attempt returns
    alarm._monotonic = lambda: 0.0

if sys.argv[1] == "sigwait":
    got = []
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    threading.Thread(
        target=lambda: got.append(signal.sigwait({signal.SIGALRM})), daemon=True
    ).start()
else:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})

@opero(cache=False, retries=0, timeout=0.05, timeout_mode="interrupt")
def slow():
    time.sleep(0.2)
    return "finished"

for _ in range(2):  # the second is handed off: opero's signal is still undelivered
    began = time.perf_counter()
    try:
        print(slow())
    except AttemptTimeoutError as exc:
        print(exc, time.perf_counter() - began < 1.0)
"""


@pytest.mark.parametrize("host", ["blocked", "sigwait"])
def test_review3_a_blocked_or_sigwaited_sigalrm_still_times_out(host: str) -> None:
    # The signal never reaches the attempt; when it returns past its deadline, it
    # raises the timeout then (its result dropped), as the hand-off would have.
    assert run(UNDELIVERED, host).splitlines() == ["slow(): attempt timed out after 0.05s True"] * 2
    assert run(UNDELIVERED, host, "--naive").splitlines()[0] == "finished"


ATTEMPTS_HANDLER = """
import signal, time
from opero import AttemptTimeoutError, opero

hits = []
def own(signum, frame):
    hits.append(signum)

@opero(cache=False, retries=0, timeout=0.05, timeout_mode="interrupt")
def installs():
    signal.signal(signal.SIGALRM, own)  # the attempt's own handler takes opero's signal
    time.sleep(0.2)
    return "finished"

try:
    print(installs())
except AttemptTimeoutError as exc:
    print(exc)
print(signal.getsignal(signal.SIGALRM) is own, hits)
hits.clear()
signal.setitimer(signal.ITIMER_REAL, 0.05)  # and the application relies on it later
time.sleep(0.3)
print(hits)
"""


def test_review4_a_handler_the_attempt_installs_stays() -> None:
    assert run(ATTEMPTS_HANDLER).splitlines() == [
        "installs(): attempt timed out after 0.05s",
        "True [14]",
        "[14]",
    ]


# --- falling back, the default mode, options -----------------------------------------------

FALLBACK = """
import signal, sys, threading, time
from loguru import logger
from opero import AttemptTimeoutError, opero

logger.remove()
logger.add(sys.stdout, level="DEBUG", format="{message}")
logger.enable("opero")
after = []

@opero(cache=False, retries=0, timeout=0.05, timeout_mode="interrupt")
def slow(secret):
    time.sleep(0.2)
    after.append("ran on")

def cut():
    try:
        slow("s3cr3t")
    except AttemptTimeoutError:
        print("timed out")

caller = threading.Thread(target=cut)  # not the main thread: handed off
caller.start()
caller.join()
signal.signal(signal.SIGALRM, lambda signum, frame: None)  # the host's handler: handed off
cut()
cut()  # said once per function and reason
time.sleep(0.4)
print(after)
"""


def test_interrupt_falls_back_to_the_hand_off_and_says_why_once() -> None:
    lines = [line for line in run(FALLBACK).splitlines() if "abandoned" not in line]
    assert [line for line in lines if "hands attempts" not in line] == [
        "timed out",
        "timed out",
        "timed out",
        "['ran on', 'ran on', 'ran on']",  # handed off: abandoned, they ran on
    ]
    said = [line for line in lines if "hands attempts" in line]
    assert len(said) == 2, said
    assert "not on the main thread" in said[0]
    assert "not opero's (the host's)" in said[1]
    assert not any("s3cr3t" in line for line in lines)


DEFAULT = """
import signal, threading, time
from opero import AttemptTimeoutError, opero

after = []

@opero(cache=False, retries=0, timeout=0.05)
def slow():
    time.sleep(0.2)
    after.append("ran on")

try:
    slow()
except AttemptTimeoutError:
    print("timed out", any(t.name == "opero-attempt" for t in threading.enumerate()))
print(signal.getsignal(signal.SIGALRM) == signal.SIG_DFL, after)
time.sleep(0.4)
print(after)
"""


def test_the_default_mode_still_hands_off_and_abandons() -> None:
    assert run(DEFAULT).splitlines() == ["timed out True", "True []", "['ran on']"]


def test_interrupt_with_total_timeout_alone_cuts_the_attempt_at_the_deadline() -> None:
    out = run(
        """
        import threading, time
        from opero import DeadlineExceededError, opero

        after = []

        @opero(cache=False, retries=0, total_timeout=0.1, timeout_mode="interrupt")
        def slow():
            time.sleep(5)
            after.append("ran on")

        began = time.perf_counter()
        try:
            slow()
        except DeadlineExceededError:
            print("deadline", time.perf_counter() - began < 1.0, threading.active_count())
        time.sleep(0.2)
        print(after)
        """
    )
    assert out.splitlines() == ["deadline True 1", "[]"]


def test_timeout_mode_is_checked_at_decoration() -> None:
    from opero import opero

    def f() -> None:
        pass

    with pytest.raises(ValueError, match=r"timeout_mode \('kill'\).*|timeout_mode must be"):
        opero(timeout=1, timeout_mode="kill")(f)  # type: ignore[typeddict-item]
    with pytest.raises(TypeError, match="timeout_mode must be"):
        opero(timeout=1, timeout_mode=1)(f)  # type: ignore[typeddict-item]
    with pytest.raises(ValueError, match=r"timeout_mode .* needs timeout or total_timeout"):
        opero(timeout_mode="interrupt")(f)
    opero(total_timeout=1, timeout_mode="interrupt")(f)
    opero(timeout=1, timeout_mode="abandon")(f)


def test_timeout_mode_has_no_effect_on_async_functions() -> None:
    import asyncio

    from opero import AttemptTimeoutError, opero

    @opero(cache=False, retries=0, timeout=0.05, timeout_mode="interrupt")
    async def slow() -> None:
        await asyncio.sleep(5)

    with pytest.raises(AttemptTimeoutError):
        asyncio.run(slow())


def test_the_handler_waits_in_stdlib_code_holding_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging
    import queue
    import threading

    monkeypatch.setattr(alarm, "_RUN_CODES", frozenset({attempt_frame.__code__}))
    for module in (threading, queue, logging, weakref_module()):
        path = os.path.abspath(str(module.__file__))
        assert alarm._must_wait(frame_in(path, attempt_frame)), path
    frozen = frame_in("<frozen importlib._bootstrap>", attempt_frame)
    assert alarm._must_wait(frozen)
    # Known by module name too: a stdlib built elsewhere keeps its build path in its code.
    namespace: dict[str, Any] = {"sys": sys, "__name__": "logging.handlers"}
    exec(compile("def here():\n    return sys._getframe()\n", "/build/x.py", "exec"), namespace)
    assert alarm._must_wait(attempt_frame(namespace["here"]))
    # Only its own frame in contextlib: a @contextmanager's body is the user's code.
    contextlib_file = os.path.join(frames._STDLIB, "contextlib.py")
    assert alarm._must_wait(frame_in(contextlib_file, attempt_frame))
    user = frame_in(
        os.path.join(os.sep, "app", "gen.py"), lambda f: called_from(contextlib_file, f)
    )
    assert not alarm._must_wait(user)
    # User code called by logging (a custom handler) waits too: logging holds the lock.
    in_logging = frame_in(
        os.path.join(os.sep, "app", "emit.py"),
        lambda f: called_from(os.path.abspath(str(logging.__file__)), f),
    )
    assert alarm._must_wait(in_logging)


def weakref_module() -> Any:
    import weakref

    return weakref


def called_from(filename: str, callee: Any) -> Any:
    """`callee()` called from a frame whose code claims to live in `filename`, itself
    called from the attempt's frame."""
    namespace: dict[str, Any] = {}
    exec(compile("def caller(f):\n    return f()\n", filename, "exec"), namespace)
    return attempt_frame(lambda: namespace["caller"](callee))


CLEANUP = """
import sys, time
from opero import AttemptTimeoutError, opero
from opero._timeouts import alarm

if "--naive" in sys.argv:  # look at the exception being handled only, not its context
    alarm._on_its_way_out = lambda owner: isinstance(sys.exception(), alarm._AlarmFired)

cleaned = []

@opero(cache=False, retries=0, timeout=0.05, timeout_mode="interrupt")
def cleanup():
    try:
        time.sleep(5)
    finally:  # runs because of the timeout: not cut again, its own try/except included
        for step in range(20):
            try:
                {}["missing"]
            except KeyError:
                time.sleep(0.002)
            cleaned.append(step)

try:
    cleanup()
except AttemptTimeoutError as exc:
    print(exc, len(cleaned))
"""


def test_review5_cleanup_handling_the_timeout_is_not_cut_short() -> None:
    assert run(CLEANUP) == "cleanup(): attempt timed out after 0.05s 20"
    assert run(CLEANUP, "--naive") != "cleanup(): attempt timed out after 0.05s 20"


BOUNDARY = """
import random, signal, sys, time
from opero import AttemptTimeoutError, opero
from opero._timeouts import alarm

clock = time.perf_counter

def spin(seconds):
    end = clock() + seconds
    while clock() < end:
        pass

@opero(
    cache=False, retries=1, min_delay=0, max_delay=0, timeout=2e-4, timeout_mode="interrupt"
)
def inner(d):
    spin(d)
    return 1

@opero(
    cache=False, retries=2, min_delay=0, max_delay=0, timeout=3e-4, timeout_mode="interrupt"
)
def outer(d):
    inner(d / 2)
    spin(d / 2)
    return 2

random.seed(int(sys.argv[1]))
stray = 0
for k in range(4000):  # work about as long as the timeouts: the timer fires at the end
    try:
        try:
            (outer if k % 2 else inner)(random.uniform(5e-5, 6e-4))
        except AttemptTimeoutError:
            pass
        spin(1e-4)  # the caller's own code after the call: no timeout may land here
    except BaseException:
        stray += 1
time.sleep(0.05)
given_back = signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
print(stray, given_back, signal.getitimer(signal.ITIMER_REAL))
print(alarm._alarm.straggler, alarm._alarm.stack)
"""


def test_timeouts_at_the_boundary_leave_nothing_behind() -> None:
    # A timer that fires as the attempt ends must not raise in the caller's code, nor
    # leave opero's handler in place (a fired timer's signal the kernel dropped when
    # the timer was cancelled was once waited for forever, handing every later attempt
    # off).
    assert run(BOUNDARY, "1").splitlines() == ["0 True (0.0, 0.0)", "False []"]


def test_the_raw_timeout_pickles_as_the_context_of_the_timeout() -> None:
    # From an @opmap worker the AttemptTimeoutError travels back with its __context__,
    # the handler's exception: it must rebuild, or the item arrives as a RemoteError.
    import pickle

    raw = pickle.loads(pickle.dumps(alarm._AlarmFired([1.0])))
    assert isinstance(raw, alarm._AlarmFired)


# --- review 6: asyncio, dropped generators, nested default-mode calls, late errors ------


def test_review6_asyncio_run_inside_an_attempt_never_hangs() -> None:
    # A cut inside asyncio's own code lost a task's wake-up: asyncio.run's cleanup then
    # waited forever (faulthandler ends the script with an error instead).
    out = run("""
        import asyncio, faulthandler, sys, time
        from opero import opero, AttemptTimeoutError
        faulthandler.dump_traceback_later(60, exit=True)

        async def coro():
            for _ in range(50):
                await asyncio.sleep(0)

        @opero(cache=False, timeout=0.002, retries=0, timeout_mode="interrupt")
        def loop():
            while True:
                asyncio.run(coro())

        timed_out = 0
        for _ in range(300):
            try:
                loop()
            except AttemptTimeoutError:
                timed_out += 1
        print(timed_out)
    """)
    assert out == "300"


def test_review6_a_dropped_generators_cleanup_is_not_cut() -> None:
    # Its `finally` runs as a finaliser: a timeout raised there was dropped by Python.
    done = script(
        """
        import sys, time
        from opero import opero, AttemptTimeoutError
        from opero._timeouts import alarm

        started = finished = 0

        def spin(seconds):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                pass

        def gen():
            global started, finished
            try:
                yield 1
            finally:
                started += 1
                spin(0.001)
                finished += 1

        @opero(cache=False, timeout=0.01, retries=0, timeout_mode="interrupt")
        def work():
            while True:
                it = gen()
                next(it)
                del it
                spin(0.0002)

        for _ in range(5):
            try:
                work()
            except AttemptTimeoutError:
                pass
        print(started - finished)
    """,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "0"
    assert "Exception ignored" not in done.stderr


NESTED_ABANDON = """
import time
from opero import opero, AttemptTimeoutError

@opero(cache=False, timeout=3.0, retries=0)  # the default mode
def inner():
    time.sleep(10)

@opero(cache=False, timeout=0.05, retries=0, timeout_mode="interrupt")
def outer():
    return inner()

start = time.monotonic()
try:
    outer()
except AttemptTimeoutError as exc:
    print("outer" in str(exc), round(time.monotonic() - start, 1))
"""


def test_review6_a_nested_default_mode_call_keeps_the_outer_deadline() -> None:
    # It was handed off, and the outer attempt waited for the inner's whole timeout.
    assert run(NESTED_ABANDON) == "True 0.1"


def test_review6_an_attempt_raising_after_its_deadline_times_out() -> None:
    # A nested untimed call retried past the deadline (waited out), then raised its own
    # error: that error came out instead of the timeout.
    out = run("""
        import time
        from opero import opero, AttemptTimeoutError

        @opero(cache=False, retries=2, min_delay=0.15, max_delay=0.15, jitter=False)
        def untimed():
            raise ConnectionError("down")

        @opero(cache=False, timeout=0.05, retries=0, timeout_mode="interrupt")
        def outer():
            return untimed()

        try:
            outer()
        except AttemptTimeoutError as exc:
            print(type(exc.__cause__).__name__)
    """)
    assert out == "ConnectionError"


def test_review6_wrapping_the_cut_in_an_error_still_times_out() -> None:
    out = run("""
        import time
        from opero import opero, AttemptTimeoutError

        @opero(cache=False, timeout=0.05, retries=0, timeout_mode="interrupt")
        def wraps():
            try:
                time.sleep(1)
            except BaseException as exc:
                raise RuntimeError("wrapped") from exc

        try:
            wraps()
        except AttemptTimeoutError as exc:
            print(type(exc.__cause__).__name__)
    """)
    assert out == "RuntimeError"
