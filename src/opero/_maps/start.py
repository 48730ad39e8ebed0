"""How process-mode workers start: the start method, and what they are sent.

Under ``fork`` a worker inherits the item pipeline as built in the parent: nothing is
pickled but the items. Under ``forkserver`` and ``spawn`` (macOS, Windows, and Linux's
default from Python 3.14) a worker starts from a fresh interpreter, so the function, its
options and the map's extra arguments travel as one cloudpickle payload, once per worker
(the pool initializer's argument), and each worker builds the pipeline from it. Functions
of ``__main__``, lambdas and closures travel by value, as cloudpickle does for Dask.

What the parent shares with its workers (the dead-worker slots, the shared rate limit)
comes from the pool's own multiprocessing context, which passes it to the workers under
every start method.
"""

from __future__ import annotations

import functools
import os
import sys
import types
from typing import Any, NamedTuple

START_METHODS = ("fork", "forkserver", "spawn")
ENV_START_METHOD = "OPERO_START_METHOD"


def available_start_methods() -> list[str]:
    """The start methods this platform offers (Windows: spawn only)."""
    import multiprocessing

    return [m for m in multiprocessing.get_all_start_methods() if m in START_METHODS]


def default_start_method() -> str:
    """opero's choice when ``start_method=None`` and ``OPERO_START_METHOD`` is unset.

    ``spawn`` on macOS and Windows (their Python default; fork is unsafe on macOS).
    Elsewhere ``forkserver``, the default of Python 3.14+ on Linux, on every Python:
    forking the parent itself is unsafe once it runs threads (opero's timeouts, a progress
    bar, the user's), Python 3.12+ warns about it, and a worker forked from the fork
    server starts in tens of milliseconds. ``start_method="fork"`` stays available.
    """
    if sys.platform == "win32" or sys.platform == "darwin":
        return "spawn"
    return "forkserver" if "forkserver" in available_start_methods() else "spawn"


def check_start_method(decorator: str, value: object, mode: str) -> str | None:
    """The validated `start_method` (None for process mode means: resolve at map time)."""
    if value is None:
        env = os.environ.get(ENV_START_METHOD)
        if mode != "process" or not env:
            return None
        value, origin = env, f"the environment variable {ENV_START_METHOD}"
    else:
        origin = "start_method"
        if mode != "process":
            raise ValueError(
                f"{decorator}(): start_method applies to mode='process', not mode={mode!r}"
            )
    if not isinstance(value, str):
        raise TypeError(f"{decorator}(): start_method must be a str or None, got {value!r}")
    if value not in START_METHODS:
        raise ValueError(
            f"{decorator}(): {origin} must be one of {', '.join(START_METHODS)}, got {value!r}"
        )
    here = available_start_methods()
    if value not in here:
        raise ValueError(
            f"{decorator}(): {origin} is {value!r}, which this platform ({sys.platform}) "
            f"does not offer; it offers {', '.join(here)}"
        )
    return value


def context_for(kind: str, method: str) -> Any:
    """The multiprocessing context of a pool engine: twat-mp's pools run on `multiprocess`
    (dill), the stdlib engine on `multiprocessing`; shared objects must come from the
    same one, whose pickler knows how to pass them to a starting worker."""
    if kind == "twat-mp":
        import multiprocess as engine
    else:
        import multiprocessing as engine
    context = engine.get_context(method)
    if method == "forkserver":
        _preload(context, engine.__name__)
    return context


# What a worker needs before its first item, beyond the main module: imported once in
# the fork server, not in each worker it forks (16 workers on 2 cores each spent ~0.1 s
# importing them before their first item, so the last started seconds after the first).
# The mapped functions' own modules join them (`preload_module`).
_WORKER_MODULES = [
    "opero._maps.worker",
    "opero._policies.rate_limit_shared",
    "cloudpickle",
    "{engine}.pool",
    "{engine}.sharedctypes",
]


def preload_module(func: Any) -> None:
    """Have the fork server import the module `func` was defined in (an application
    module importing httpx, numpy, ...), once for all the workers it forks. A module
    the server cannot import is skipped by it (multiprocessing ignores ImportError)."""
    module = getattr(getattr(func, "__wrapped__", func), "__module__", None)
    if isinstance(module, str) and module != "__main__" and module not in _WORKER_MODULES:
        _WORKER_MODULES.append(module)


def _preload(context: Any, engine: str) -> None:
    """Add the worker modules to the fork server's preload list, keeping the main module
    and whatever the application set. It takes effect when the server starts (at the
    first forkserver pool of the process): a server already running keeps its own."""
    server = getattr(sys.modules.get(f"{engine}.forkserver"), "_forkserver", None)
    modules = list(getattr(server, "_preload_modules", None) or ["__main__"])
    missing = [name.format(engine=engine) for name in _WORKER_MODULES]
    missing = [name for name in missing if name not in modules]
    if missing:
        context.set_forkserver_preload(modules + missing)


class WorkerStart(NamedTuple):
    """What a process worker receives once, through the pool initializer.

    `job` is the `Job` itself under fork (inherited, never pickled), else the payload it
    is built from. `limiter` is the map's shared rate limiter, to put in the rebuilt
    pipeline (under fork the inherited pipeline holds it already). `testing` is the
    parent's `opero.testing.no_waits()` state; `observed`, whether the parent has global
    hooks (the worker then collects every opero function's events for the parent).
    """

    job: Any
    limiter: Any
    testing: tuple[bool, int | None]
    observed: bool
    # The parent's environment and import path as the map starts: a worker forked from
    # the fork server has the server's, from when it started (OPERO_REDIS_URL set since,
    # a folder added to sys.path since).
    environ: dict[str, str] | None = None
    sys_path: list[str] | None = None


def job_payload(
    func: Any,
    options: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    keep_hooks: bool = False,
) -> bytes:
    """The function, options and extra arguments of a map, for workers that build the
    pipeline themselves (spawn, forkserver, Dask, Ray).

    Process workers send their events to the parent, whose hooks get them: there the
    hooks stay behind and a stand-in keeps the worker's observer collecting. Cluster
    workers run the hooks themselves (`keep_hooks`). Raises `TypeError` naming what
    cannot be pickled and how to fix it.
    """
    options = _hooks_stay_behind(options, keep_hooks)
    if not options.cache:  # the cache lives in the parent; a backend object stays there
        options = options._replace(cache_backend="memory", cache_key=None)
    try:
        return _dumps((func, options, args, kwargs), keep_hooks=keep_hooks)
    except Exception as exc:
        raise TypeError(_unpicklable_message(func, options, args, kwargs, exc)) from exc


def _parent_hook(event: Any) -> None:
    """Stands in for a function's hooks in a worker; the parent delivers the event."""


def _hooks_stay_behind(options: Any, keep_hooks: bool) -> Any:
    """`options` for a process worker: a stand-in for the function's hooks, which stay
    in the parent (`keep_hooks`: a cluster worker runs them itself)."""
    if options.on_event is None or keep_hooks:
        return options
    return options._replace(on_event=_parent_hook)


def _dumps(value: Any, *, keep_hooks: bool = False) -> bytes:
    """cloudpickle, but an opero-decorated function that the worker cannot import (one of
    ``__main__``, a closure) travels as its function and options, and is decorated again
    there: its locks and per-process state cannot travel, and need not."""
    import io

    buffer = io.BytesIO()
    _pickler_class()(buffer, keep_hooks=keep_hooks).dump(value)
    return buffer.getvalue()


@functools.cache
def _pickler_class() -> Any:
    import cloudpickle

    from opero._pipeline.build import made_by_decorate

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        def __init__(self, file: Any, *, keep_hooks: bool) -> None:
            super().__init__(file)
            self.keep_hooks = keep_hooks

        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is types.FunctionType and not _importable(obj):
                reference = _wrapped_reference(obj)
                if reference is not None:  # a decorated module-level function's original
                    return _import_wrapped, reference
                if made_by_decorate(obj):
                    options = _hooks_stay_behind(obj.__dict__["__opero_options__"], self.keep_hooks)
                    return _redecorate, (obj.__dict__["__wrapped__"], options)
                if "__opero_options__" in obj.__dict__:  # functools.wraps over one of ours
                    obj = _without_copied_attributes(obj)
            return super().reducer_override(obj)

    return Pickler


def _attribute_path(root: Any, qualname: str) -> Any:
    """What `qualname` names below `root` (a module), or None."""
    found = root
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found


def _importable(func: Any) -> bool:
    """Whether a worker finds `func` itself by importing its module (pickle by name)."""
    module = sys.modules.get(func.__module__)
    if module is None or func.__module__ == "__main__":
        return False
    return _attribute_path(module, func.__qualname__) is func


def _wrapped_reference(func: Any) -> tuple[str, str, int] | None:
    """Where a worker finds `func` by import when its module's name for it holds a
    decorated version (``@opmap`` or ``@opero`` at module level): the name, and how
    many ``__wrapped__`` steps lead from what it holds to `func`. Pickled by value
    instead, `func` would take every module global it uses along (a lock, a client)."""
    name = func.__module__
    module = sys.modules.get(name)
    if module is None or name == "__main__" or "<locals>" in func.__qualname__:
        return None
    found = _attribute_path(module, func.__qualname__)
    for depth in range(1, 9):
        found = getattr(found, "__wrapped__", None)
        if found is None:
            return None
        if found is func:
            return name, func.__qualname__, depth
    return None


def _import_wrapped(module: str, qualname: str, depth: int) -> Any:
    """A worker's side of `_wrapped_reference`."""
    import importlib

    found = _attribute_path(importlib.import_module(module), qualname)
    for _ in range(depth):
        found = found.__wrapped__
    return found


def _without_copied_attributes(func: Any) -> Any:
    """`func` (a user's wrapper) with the attributes it copied from an opero function
    left behind; what it wraps still travels, through its closure or ``__wrapped__``."""
    copy = types.FunctionType(
        func.__code__, func.__globals__, func.__name__, func.__defaults__, func.__closure__
    )
    copy.__kwdefaults__ = func.__kwdefaults__
    copy.__qualname__ = func.__qualname__
    copy.__module__ = func.__module__
    copy.__doc__ = func.__doc__
    from opero._pipeline.build import ATTACHED

    copy.__dict__.update({k: v for k, v in func.__dict__.items() if k not in ATTACHED})
    return copy


def _redecorate(func: Any, options: Any) -> Any:
    """A worker's copy of an opero-decorated function (see `_dumps`)."""
    from opero._pipeline.build import decorate

    return decorate(func, options)


def _unpicklable_message(
    func: Any, options: Any, args: tuple[Any, ...], kwargs: dict[str, Any], error: Exception
) -> str:
    parts: list[tuple[str, Any]] = [("the function", func)]
    parts += [(f"option {name}", getattr(options, name)) for name in options._fields]
    parts += [(f"extra argument {i + 1} (after the item)", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {name!r}", value) for name, value in kwargs.items()]
    culprit = "the map's job"
    for label, value in parts:
        try:
            _dumps(value)
        except Exception as exc:
            culprit, error = label, exc
            break
    name = getattr(func, "__qualname__", repr(func))
    what = f"the function {name}" if culprit == "the function" else f"{culprit} of {name}"
    return (
        f"opmap(): {what} cannot be sent to the worker processes: "
        f"{type(error).__name__}: {error}. Under the spawn and forkserver start methods the "
        "function (with what it refers to), its options and the map's extra arguments are "
        "pickled once per worker: keep unpicklable objects (locks, open files, clients) "
        "out of them, e.g. create them inside the function or at module level of an "
        "importable module, or use start_method='fork' where the platform has it"
    )


def build_start(
    func: Any,
    options: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    method: str,
    job: Any,
    limiter: Any,
) -> WorkerStart:
    """What this map's workers start from: `job` under fork, else its payload."""
    from opero._observe.events import _hub
    from opero._utils.testing_state import state

    testing = (state.active, state.max_attempts)
    observed = bool(_hub.hooks)
    if method == "fork":
        return WorkerStart(job, None, testing, observed)
    payload = job_payload(func, options, args, kwargs)
    if method == "forkserver":
        preload_module(func)
    return WorkerStart(payload, limiter, testing, observed, dict(os.environ), list(sys.path))
