"""Where the SIGALRM handler may raise a timeout into the running attempt, and where it
must wait (fire again a little later) because an exception there would leave a lock
held or a resource without its cleanup.

It raises only when every frame from the one interrupted out to the innermost timed
attempt's is code the exception can pass through:

- not opero's own (a nested opero call's cache, breaker, bulkhead or rate limit would be
  left half updated), not a `__del__` (Python drops an exception raised there);
- not in the stdlib modules below. A review ran tight loops of timeouts against them
  and found the exception landing between a lock's acquire and the `try`/`with` that
  releases it: in `threading.Condition.__enter__` (every `queue.Queue` put and get), in
  `logging.Handler.handle` (`self.acquire()` then `try:`), and in `weakref.finalize`
  callbacks, which dropped it. Other threads then deadlocked on the lock left held. The
  list is the modules whose Python code takes locks or runs finalisers on the caller's
  thread: threading, queue, _threading_local, logging (with logging.handlers),
  concurrent.futures, weakref and _weakrefset, importlib (its module locks, frozen or
  not). User code they call (a custom logging handler, a finalize callback) waits too;
- asyncio, whole: an exception landing in its own code (a task's `call_soon`) loses a
  task's wake-up, and `asyncio.run`'s cleanup then waits for that task forever. An
  `asyncio.run` (or `loop.run_until_complete`) inside a timed sync attempt is waited
  out, and the timeout is raised when it returns. Except in a task's own coroutine
  (code that is not asyncio's, run by a task's step): the exception raised there ends
  the task as any error would, and `asyncio.run` raises it after its cleanup;
- contextlib only as the frame interrupted: an exception inside a `@contextmanager`'s
  `__enter__` after the generator reached its `yield` would skip its `__exit__`. The
  generator's own code (the user's, called from there) is cut as usual: the exception
  leaves through it like any other.

One exemption keeps blocking waits interruptible: a frame interrupted *while blocked*
in `threading.Condition.wait` (the wait inside `Event.wait`, `Queue.get`,
`Future.result`, `Semaphore.acquire`, ...) or in `Thread.join`'s wait is at a point
written to survive Ctrl-C: the lock is given back by its `finally`. There the stdlib
frames around it do not make the handler wait (opero's and `__del__` still do).

What no check can see: the user's own `lock.acquire()` followed by `try:` (or any
resource taken a line before the `try` that frees it). Ctrl-C has the same gap; use
`with lock:`, which Python enters atomically.
"""

from __future__ import annotations

import inspect
import os
import threading
from types import CodeType, FrameType

_OPERO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_STDLIB = os.path.dirname(os.path.abspath(threading.__file__)) + os.sep
_MODULES = ("threading", "queue", "_threading_local", "weakref", "_weakrefset")
_PACKAGES = ("logging", "concurrent", "importlib", "asyncio")
# Filenames starting with one of these are code the exception must not land in.
_HOLDERS = (
    _OPERO_DIR,
    *(_STDLIB + name + ".py" for name in _MODULES),
    *(_STDLIB + name + os.sep for name in _PACKAGES),
    "<frozen importlib.",  # importlib._bootstrap and _bootstrap_external, as frozen
)
# The same by module name: a stdlib compiled elsewhere (a distribution's build root)
# keeps that path in its code objects, not the one it is imported from.
_HOLDER_MODULES = frozenset(_MODULES) | frozenset(_PACKAGES)
_HOLDER_PACKAGES = tuple(name + "." for name in _PACKAGES)
_CONTEXTLIB = _STDLIB + "contextlib.py"
_CO_COROUTINE = inspect.CO_COROUTINE
# What runs a task's step, the frame above its coroutine's: `Handle._run` (the C task),
# the pure-Python task's own step methods.
_STEPS = frozenset({"_run", "__step", "__step_run_and_handle_result"})

# The blocking waits that survive an exception (see the docstring): code -> lines.
# Found from the source when first needed: None until then.
_safe_waits: dict[CodeType, frozenset[int]] | None = None


def must_wait(frame: FrameType | None, boundaries: frozenset[CodeType]) -> bool:
    """Whether the handler must not raise in `frame`: unless every frame from it out to
    the innermost timed attempt's (its code in `boundaries`, excluded) may take it."""
    if frame is None or frame.f_code in boundaries:
        return True
    if frame.f_code.co_filename == _CONTEXTLIB or frame.f_globals.get("__name__") == "contextlib":
        return True
    stdlib = not _at_safe_wait(frame)
    holders = _HOLDERS if stdlib else (_OPERO_DIR,)
    inner: CodeType | None = None
    while frame is not None and frame.f_code not in boundaries:
        code = frame.f_code
        if inner is not None and inner.co_flags & _CO_COROUTINE and code.co_name in _STEPS:
            return False  # a task's own coroutine: its step takes the exception (above)
        if code.co_filename.startswith(holders) or code.co_name == "__del__":
            return True
        if stdlib and _holder_module(frame.f_globals.get("__name__")):
            return True
        inner, frame = code, frame.f_back
    return frame is None  # no timed attempt around it: not ours to cut


def _holder_module(name: object) -> bool:
    return isinstance(name, str) and (name in _HOLDER_MODULES or name.startswith(_HOLDER_PACKAGES))


def _at_safe_wait(frame: FrameType) -> bool:
    global _safe_waits  # noqa: PLW0603 - built once, on the first signal that needs it
    if _safe_waits is None:
        _safe_waits = _find_safe_waits()
    lines = _safe_waits.get(frame.f_code)
    return lines is not None and frame.f_lineno in lines


def _find_safe_waits() -> dict[CodeType, frozenset[int]]:
    """The lines of the stdlib's blocking waits inside their `try` (Python 3.11-3.12:
    `Condition.wait` and `Thread._wait_for_tstate_lock`; 3.13+: `Thread.join`'s handle
    join, which holds no Python-level lock)."""
    waits: dict[CodeType, frozenset[int]] = {}
    wanted = (
        (getattr(threading.Condition, "wait", None), "acquire(", True),
        (getattr(threading.Thread, "_wait_for_tstate_lock", None), "lock.acquire(", True),
        (getattr(threading.Thread, "join", None), "_handle.join(", False),
    )
    for func, call, in_try in wanted:
        code = getattr(func, "__code__", None)
        if code is not None:
            found = _lines_calling(code, call, in_try=in_try)
            if found:
                waits[code] = found
    return waits


def _lines_calling(code: CodeType, call: str, *, in_try: bool) -> frozenset[int]:
    import linecache

    numbers = sorted({line for _, _, line in code.co_lines() if line is not None})
    if not numbers:
        return frozenset()
    found: set[int] = set()
    inside = not in_try
    for number in range(numbers[0], numbers[-1] + 1):
        text = linecache.getline(code.co_filename, number).split("#")[0].strip()
        if text == "try:":
            inside = True
        elif text.startswith(("finally:", "except")):
            inside = not in_try
        elif inside and call in text:
            found.add(number)
    return frozenset(found)
