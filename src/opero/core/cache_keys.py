"""Cache keys: the function's identity plus the call's arguments, bound with defaults.

`f(2)`, `f(x=2)` and `f()` with `x=2` as default all give one key. Positional calls of
plain signatures never touch `Signature.bind` (the hit path must stay well under a
microsecond); anything else is bound once per call.
"""

from __future__ import annotations

import hashlib
import inspect
import pickle
from collections.abc import Callable
from typing import Any

_EMPTY: Any = inspect.Parameter.empty
_PLAIN_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def function_identity(func: Callable[..., Any]) -> str:
    """Module and qualified name: the same in every process that imports the function."""
    module = getattr(func, "__module__", None) or type(func).__module__
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}:{name}"


class KeyBuilder:
    """Builds hashable in-process keys for one function's calls."""

    __slots__ = ("custom", "defaults", "plain", "required", "signature", "size")

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

    def build(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The key of one call; raises `TypeError` when the arguments do not bind."""
        if self.custom is not None:
            key: Any = ("custom", self.custom(*args, **kwargs))
        elif not kwargs and self.plain and self.required <= len(args) <= self.size:
            key = args + self.defaults[len(args) :] if len(args) < self.size else args
        else:
            key = self._bind(args, kwargs)
        try:
            hash(key)
        except TypeError:
            key = freeze(key)
        return key

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.signature is None:
            return (args, tuple(sorted(kwargs.items())))
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if self.plain:  # the same shape as the positional fast path
            return tuple(bound.arguments.values())
        return tuple(bound.arguments.items())


def freeze(value: Any) -> Any:
    """A hashable stand-in for `value`: lists, dicts and sets become tagged tuples."""
    if isinstance(value, tuple):
        return tuple(freeze(item) for item in value)
    if isinstance(value, list):
        return ("<list>", tuple(freeze(item) for item in value))
    if isinstance(value, dict):
        items = [(freeze(k), freeze(v)) for k, v in value.items()]
        return ("<dict>", tuple(sorted(items, key=repr)))
    if isinstance(value, set | frozenset):
        return ("<set>", tuple(sorted((freeze(item) for item in value), key=repr)))
    try:
        hash(value)
    except TypeError:
        return ("<pickle>", pickle.dumps(value, protocol=4))
    return value


def portable_key(identity: str, key: Any) -> str:
    """A key that means the same in every process: SHA-256 of a canonical encoding.

    Never Python's `hash()`, which is salted per process for str and bytes.
    """
    digest = hashlib.sha256(identity.encode())
    digest.update(b"\0")
    digest.update(_canonical(key))
    return digest.hexdigest()


def _canonical(value: Any) -> bytes:
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return f"{type(value).__name__}:{value!r}".encode()
    if isinstance(value, tuple | list):
        inner = b",".join(_canonical(item) for item in value)
        return type(value).__name__.encode() + b"[" + inner + b"]"
    if isinstance(value, dict):
        items = sorted(_canonical(k) + b"=" + _canonical(v) for k, v in value.items())
        return b"dict{" + b",".join(items) + b"}"
    if isinstance(value, set | frozenset):
        return b"set{" + b",".join(sorted(_canonical(item) for item in value)) + b"}"
    return b"pickle:" + pickle.dumps(value, protocol=4)
