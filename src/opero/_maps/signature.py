"""What a mapper looks like to its caller: its signature, and the items it refuses."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any


def mapper_signature(func: Callable[..., Any]) -> inspect.Signature | None:
    """What the caller calls: ``(items, /, <the function's other parameters>)``, not the
    per-item signature that `inspect.signature` would find through ``__wrapped__``."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    parameters = list(signature.parameters.values())
    rest = parameters
    annotation: Any = inspect.Parameter.empty
    if parameters and parameters[0].kind is not inspect.Parameter.VAR_POSITIONAL:
        first, rest = parameters[0], parameters[1:]
        if first.annotation is not inspect.Parameter.empty:
            item = first.annotation
            annotation = f"Iterable[{item}]" if isinstance(item, str) else Iterable[item]  # type: ignore[valid-type]
    items = inspect.Parameter("items", inspect.Parameter.POSITIONAL_ONLY, annotation=annotation)
    result = signature.return_annotation
    if result is not inspect.Signature.empty:
        result = f"list[{result}]" if isinstance(result, str) else list[result]  # type: ignore[valid-type]
    rest = [
        p.replace(kind=inspect.Parameter.POSITIONAL_ONLY)
        if p.kind is inspect.Parameter.POSITIONAL_ONLY
        else p
        for p in rest
    ]
    return signature.replace(parameters=[items, *rest], return_annotation=result)


def check_items(name: str, items: object) -> None:
    if isinstance(items, str | bytes | bytearray):
        kind = type(items).__name__
        raise TypeError(
            f"{name}() maps over items, and got a single {kind}: it would be mapped one "
            f"character at a time. Pass a list of them ([{kind}_value]), or call the "
            "function itself for one value"
        )
