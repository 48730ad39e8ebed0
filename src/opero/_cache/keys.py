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
from collections.abc import Callable
from typing import Any

_EMPTY: Any = inspect.Parameter.empty
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
    """Builds one function's keys from its calls' arguments."""

    __slots__ = ("custom", "defaults", "names", "plain", "required", "signature", "size")

    def __init__(self, func: Callable[..., Any], custom: Callable[..., object] | None) -> None:
        self.custom = custom
        try:
            self.signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):  # some builtins: fall back to the raw arguments
            self.signature = None
        params = list(self.signature.parameters.values()) if self.signature else []
        self.plain = self.signature is not None and all(p.kind in _PLAIN_KINDS for p in params)
        self.size = len(params)
        self.defaults = tuple(p.default for p in params)
        # Plain parameters with defaults all come after those without.
        self.required = sum(1 for p in params if p.default is _EMPTY)
        keywordable = (inspect.Parameter.POSITIONAL_OR_KEYWORD,)
        self.names = tuple(p.name if p.kind in keywordable else None for p in params)

    def bound(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The call's arguments bound with defaults (possibly unhashable).

        Raises `TypeError` when they do not bind to the signature.
        """
        if self.custom is not None:
            return ("custom", self.custom(*args, **kwargs))
        count = len(args)
        if self.plain and self.required <= count <= self.size and not kwargs:
            return args + self.defaults[count:] if count < self.size else args
        if self.plain and kwargs:
            filled = self._fill_keywords(args, kwargs)
            if filled is not None:
                return filled
        return self._bind(args, kwargs)

    def _fill_keywords(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Keyword calls of plain signatures, without Signature.bind; None when unsure.
        values = list(args)
        used = 0
        for index in range(len(args), self.size):
            name = self.names[index]
            if name is not None and name in kwargs:
                values.append(kwargs[name])
                used += 1
            elif self.defaults[index] is not _EMPTY:
                values.append(self.defaults[index])
            else:
                return None
        return tuple(values) if used == len(kwargs) else None

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.signature is None:
            return (args, kwargs)
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if self.plain:  # the same shape as the fast paths
            return tuple(bound.arguments.values())
        return tuple(bound.arguments.items())


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
