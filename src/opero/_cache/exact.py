"""Memory hit paths that take the function's own parameters.

A wrapper written ``def cached(*args, **kwargs)`` pays for what Python builds for it on
every call (a dict for the keywords, the test for them) and, for a call by keyword, for
binding the keywords to the parameters in Python (`KeyBuilder.bound`): about 0.2 us of a
0.45 us hit (issue 20 asks at most 0.3 us positionally and 0.5 us by keyword, TTL or
not). A wrapper with the function's own parameter list binds in C, as the function
would: ``f(2)``, ``f(x=2)`` and ``f()`` with ``x=2`` as default arrive as the same
values, and the key is their tuple, which is what `KeyBuilder.bound` returns for them.

So, for a function whose parameters are all plain (positional-only or
positional-or-keyword, defaults allowed) and whose signature is its own (no
``__wrapped__``, no ``__signature__``: what `inspect.signature` reports is what the
function accepts), with the memory backend and no custom `cache_key`, the hit path is
compiled from source at decoration, as `dataclasses` and `collections.namedtuple` write
their methods. A call that does not bind raises the same `TypeError` the function would
(`functools.update_wrapper` gives the wrapper the function's name), without entering the
pipeline, as before. Misses, unhashable arguments and expired entries go on to
`CacheStep.after_lookup_*` with the bound values as positional arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opero._observe.events import CACHE_HIT, CallInfo

if TYPE_CHECKING:
    from opero._cache.step import CacheStep

_PREFIX = "_opero_"  # every name the generated code reads; a parameter named so is refused
_PLAIN = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)

# Each template is the body of `_opero_make`, whose parameters are the names it reads.
_HIT = """\
            _opero_log.append(_opero_entry)
            if _opero_len(_opero_log) > _opero_limit:
                _opero_compact()"""

_TTL_HIT = """\
            _opero_now = _opero_timer()
            if not _opero_now < _opero_entry.expires:
                _opero_expired = _opero_KeyError(_opero_key)  # a miss: the write purges it
                return _opero_slow(_opero_func, _opero_key, {}, _opero_key, _opero_expired)
            _opero_log.append(_opero_entry)
            if _opero_now > _opero_due[0]:
                _opero_compact()"""

_SYNC = """\
def _opero_make({names}):
    def cached({parameters}):
        _opero_key = ({key})
        try:
            _opero_entry = _opero_hot[_opero_key]
        except _opero_Exception as _opero_exc:
            _opero_problem = _opero_exc
        else:
{hit}
            if _opero_observer.on:
                _opero_observer.emit(_opero_CACHE_HIT, _opero_CallInfo(_opero_observer.function))
            return _opero_entry.value
        # Outside the except block, so the call's own errors get no cache context.
        return _opero_slow(_opero_func, _opero_key, {{}}, _opero_key, _opero_problem)
    return cached
"""

_ASYNC = """\
def _opero_make({names}):
    async def cached({parameters}):
        _opero_key = ({key})
        try:
            _opero_value = _opero_get(_opero_key)
        except _opero_Exception as _opero_exc:
            _opero_problem = _opero_exc
        else:
            if _opero_observer.on:
                _opero_observer.emit(_opero_CACHE_HIT, _opero_CallInfo(_opero_observer.function))
            return _opero_value
        return await _opero_slow(_opero_func, _opero_key, {{}}, _opero_key, _opero_problem)
    return cached
"""


def exact_parameters(
    func: Callable[..., Any], signature: inspect.Signature | None
) -> tuple[inspect.Parameter, ...] | None:
    """`func`'s parameters if a wrapper may take them as its own, else None."""
    if signature is None or not inspect.isfunction(func):
        return None
    if hasattr(func, "__wrapped__") or "__signature__" in vars(func):
        return None  # the signature reported may not be what the function accepts
    params = tuple(signature.parameters.values())
    if any(p.kind not in _PLAIN or p.name.startswith(_PREFIX) for p in params):
        return None
    return params


def memory_sync_exact(step: CacheStep, func: Callable[..., Any]) -> Callable[..., Any]:
    """`memory_sync` (in `opero._cache.hits`) with the function's own parameters."""
    backend = step.backend
    values = {
        "hot": backend.hot,
        "log": backend.log,
        "compact": backend.compact_hits,
        "slow": step.after_lookup_sync,
    }
    if backend.ttl is None:
        values["limit"] = backend.limit
        return _compiled(_SYNC, _HIT, step, func, values)
    values.update(timer=backend.timer, due=backend.due)
    return _compiled(_SYNC, _TTL_HIT, step, func, values)


def memory_async_exact(step: CacheStep, func: Callable[..., Any]) -> Callable[..., Any]:
    """`memory_async` with the function's own parameters."""
    values = {"get": step.backend.get, "slow": step.after_lookup_async}
    return _compiled(_ASYNC, "", step, func, values)


def _compiled(
    template: str, hit: str, step: CacheStep, func: Callable[..., Any], values: dict[str, Any]
) -> Callable[..., Any]:
    assert step.parameters is not None
    values.update(func=func, observer=step.observer, CACHE_HIT=CACHE_HIT, CallInfo=CallInfo)
    # Builtins too, under opero's names: a parameter may be called `len`.
    values.update(len=len, KeyError=KeyError, Exception=Exception)
    parts, key = [], []
    for number, param in enumerate(step.parameters):
        key.append(param.name)
        if param.default is inspect.Parameter.empty:
            parts.append(param.name)
        else:
            values[f"default{number}"] = param.default
            parts.append(f"{param.name}={_PREFIX}default{number}")
        if param.kind is inspect.Parameter.POSITIONAL_ONLY and (
            number + 1 == len(step.parameters)
            or step.parameters[number + 1].kind is not inspect.Parameter.POSITIONAL_ONLY
        ):
            parts.append("/")
    source = template.format(
        names=", ".join(_PREFIX + name for name in values),
        parameters=", ".join(parts),
        key="".join(f"{name}, " for name in key),
        hit=hit,
    )
    namespace: dict[str, Any] = {}
    name = getattr(func, "__qualname__", "function")
    exec(compile(source, f"<opero cache hit of {name}>", "exec"), namespace)
    return namespace["_opero_make"](**{_PREFIX + name: value for name, value in values.items()})  # type: ignore[no-any-return]
