"""Cache keys: the function's identity plus the call's arguments, bound with defaults.

`f(2)`, `f(x=2)` and `f()` with `x=2` as default all give one key. Calls of plain
signatures never touch `Signature.bind` (the hit path must stay well under a
microsecond); anything else is bound once per call.

Two forms: in-process keys for the memory backend (the bound values themselves, frozen
into hashable form only when they are not hashable), and portable keys for backends
shared between processes (a SHA-256 of a canonical encoding, never Python's `hash()`).
"""

from __future__ import annotations

import enum
import functools
import inspect
import operator
from collections.abc import Callable
from typing import Any

_EMPTY: Any = inspect.Parameter.empty
NO_KEY: Any = object()  # a call without a key (its arguments did not bind), or no value
_PLAIN_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class UnkeyableArgumentsError(Exception):
    """The call's arguments cannot be turned into a key (unhashable and unpicklable)."""


class _Tag:
    """Marks a frozen list/dict/set: an object no caller can pass, so no collision."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_LIST, _DICT, _SET, _PICKLED = _Tag("list"), _Tag("dict"), _Tag("set"), _Tag("pickled")


def function_identity(func: Callable[..., Any]) -> str:
    """What names `func` in keys shared between processes.

    Module and qualified name for functions; partials add their bound arguments;
    lambdas and closures (several can share one qualified name) add their code and
    captured values; callable objects add their state. Raises `ValueError` when `func`
    cannot be told apart from other callables that way.
    """
    extra: list[Any] = []
    while isinstance(func, functools.partial):
        extra.append(("partial", func.args, func.keywords))
        func = func.func
    if inspect.ismethod(func):
        extra.append(("bound to", func.__self__))
        func = func.__func__
    if inspect.isfunction(func):
        name = f"{_module_name(func.__module__)}:{func.__qualname__}"
        if "<lambda>" in func.__qualname__ or "<locals>" in func.__qualname__:
            cells = tuple(cell.cell_contents for cell in func.__closure__ or ())
            extra.append(("code", _code_fingerprint(func.__code__), cells))
    else:  # a callable object: its class, and its state
        cls = type(func)
        name = f"{_module_name(cls.__module__)}:{cls.__qualname__}"
        extra.append(("state", func))
    if not extra:
        return name
    import hashlib

    try:
        digest = hashlib.sha256(_canonical(tuple(extra))).hexdigest()[:16]
    except Exception as exc:
        raise ValueError(
            f"cannot tell {name} apart from other callables in a cache shared between "
            f"processes ({type(exc).__name__} while encoding what it holds); decorate a "
            "module-level function, or use the memory backend"
        ) from exc
    return f"{name}#{digest}"


def _module_name(module: str) -> str:
    # The main script is "__main__" in its own process and "__mp_main__" in the worker
    # processes multiprocessing spawns from it: one module, one name.
    return "__main__" if module == "__mp_main__" else module


def _code_fingerprint(code: Any) -> tuple[Any, ...]:
    # Code objects do not pickle; their bytecode, names and constants tell them apart.
    consts = tuple(
        _code_fingerprint(const) if inspect.iscode(const) else const for const in code.co_consts
    )
    return (code.co_code, code.co_names, consts)


class KeyBuilder:
    """Builds one function's keys from its calls' arguments.

    `bound(args, kwargs)` gives the call's arguments bound with defaults (possibly
    unhashable), and raises `TypeError` when they do not bind to the signature. It is a
    closure made at decoration, not a method: on a memory hit by keyword, building the
    key is most of the cost, and closures read their variables faster than attributes.
    """

    __slots__ = ("arity", "bound", "custom", "defaults", "plain", "required", "signature")

    def __init__(self, func: Callable[..., Any], custom: Callable[..., object] | None) -> None:
        self.custom = custom
        try:
            self.signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):  # some builtins: fall back to the raw arguments
            self.signature = None
        params = list(self.signature.parameters.values()) if self.signature else []
        self.plain = self.signature is not None and all(p.kind in _PLAIN_KINDS for p in params)
        self.defaults = tuple(p.default for p in params)
        # Plain parameters with defaults all come after those without.
        self.required = sum(1 for p in params if p.default is _EMPTY)
        # A call of exactly this many positional arguments and no keywords is its own key
        # (what `bound` returns): the cache's hit path tests that without calling `bound`.
        self.arity = len(params) if self.plain and custom is None else -1
        self.bound: Callable[[tuple[Any, ...], dict[str, Any]], Any]
        if custom is not None:
            self.bound = lambda args, kwargs: ("custom", custom(*args, **kwargs))
        elif self.plain:
            self.bound = self._plain_bound(params)
        else:
            self.bound = self._bind

    def _plain_bound(self, params: list[inspect.Parameter]) -> Callable[..., Any]:
        """`bound` for signatures of positional-or-keyword parameters, without
        `Signature.bind` for the calls that bind: positional ones, and keyword ones (a
        dict merge and an itemgetter, both in C, where a loop over the parameters cost
        most of a keyword hit)."""
        size, required, defaults, bind = len(params), self.required, self.defaults, self._bind
        tails = tuple(_tail(params[count:]) for count in range(size + 1))

        def bound(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            count = len(args)
            if not kwargs:
                if required <= count <= size:
                    return args + defaults[count:] if count < size else args
                return bind(args, kwargs)  # raises the natural TypeError
            tail = tails[count] if count <= size else None
            if tail is not None:
                fill, pick, wanted = tail
                given = {**fill, **kwargs} if fill else kwargs
                if len(given) == wanted:  # else a keyword names no parameter left
                    try:
                        return args + (pick(given) if wanted > 1 else (given[pick],))
                    except KeyError:  # a parameter without a default was not given
                        pass
            return bind(args, kwargs)

        return bound

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.signature is None:
            return (args, kwargs)
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if self.plain:  # the same shape as the fast paths
            return tuple(bound.arguments.values())
        return tuple(bound.arguments.items())


def _tail(params: list[inspect.Parameter]) -> tuple[Any, ...] | None:
    """How keywords fill the parameters after a call's positional arguments: the
    defaults of those that have one (by name), what takes the values of all of them from
    a dict of names (an itemgetter; the name itself when there is one), and how many
    they are. None when a positional-only parameter is left (no keyword may fill it) or
    none is."""
    if not params or any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
        return None
    names = [p.name for p in params]
    pick = operator.itemgetter(*names) if len(names) > 1 else names[0]
    defaults = {p.name: p.default for p in params if p.default is not _EMPTY}
    return (defaults, pick, len(names))


def freeze(value: Any) -> Any:
    """A hashable stand-in for `value`: lists, dicts and sets become tagged tuples, other
    unhashable objects their pickle. Raises `UnkeyableArgumentsError` if that fails."""
    if isinstance(value, tuple):
        return tuple(freeze(item) for item in value)
    if isinstance(value, list):
        return (_LIST, tuple(freeze(item) for item in value))
    if isinstance(value, dict):
        items = [(freeze(k), freeze(v)) for k, v in value.items()]
        return (_DICT, frozenset(items))
    if isinstance(value, set):
        return (_SET, frozenset(freeze(item) for item in value))
    try:
        hash(value)
    except TypeError:
        import pickle

        try:
            return (_PICKLED, type(value), pickle.dumps(value, protocol=5))
        except Exception as exc:
            raise UnkeyableArgumentsError(type(exc).__name__) from exc
    return value


def memory_key(bound: Any) -> Any:
    """The in-process key of bound arguments: themselves when hashable."""
    try:
        hash(bound)
    except TypeError:
        return freeze(bound)
    return bound


def portable_key(identity: str, bound: Any) -> str:
    """A key that means the same in every process: ``<identity>:<sha256>``.

    Never Python's `hash()`, which is salted per process for str and bytes.
    """
    import hashlib  # here, not at import: hashlib loads OpenSSL

    digest = hashlib.sha256(identity.encode())
    digest.update(b"\0")
    try:
        digest.update(_canonical(bound))
    except Exception as exc:
        raise UnkeyableArgumentsError(type(exc).__name__) from exc
    return f"{identity}:{digest.hexdigest()}"


def _canonical(value: Any) -> bytes:  # noqa: PLR0911 - one return per kind of value
    # Equal values give equal bytes in every process: types are spelt out, containers
    # sorted where order does not matter, objects encoded field by field.
    if value is None or type(value) in (bool, int, float, str, bytes):
        return f"{type(value).__name__}:{value!r}".encode()
    if isinstance(value, tuple | list):
        inner = b",".join(_canonical(item) for item in value)
        return _type_name(value) + b"[" + inner + b"]"
    if isinstance(value, dict):
        items = sorted(_canonical(k) + b"=" + _canonical(v) for k, v in value.items())
        return _type_name(value) + b"{" + b",".join(items) + b"}"
    if isinstance(value, set | frozenset):
        items = sorted(_canonical(item) for item in value)
        return _type_name(value) + b"{" + b",".join(items) + b"}"
    if isinstance(value, enum.Enum):
        return _type_name(value) + b"." + value.name.encode()
    plain_types: tuple[type[Any], ...] = (bool, int, float, str, bytes)
    for base in plain_types:  # subclasses of the plain types
        if isinstance(value, base):
            return _type_name(value) + b":" + _canonical(base(value))
    state = getattr(value, "__dict__", None)
    if isinstance(state, dict) and not callable(value):
        return _type_name(value) + b"(" + _canonical(state) + b")"
    import pickle

    return b"pickle:" + pickle.dumps(value, protocol=5)


def _type_name(value: Any) -> bytes:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}".encode()
