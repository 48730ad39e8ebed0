"""The public surface: exports, decorator forms, what the wrapper keeps of the function."""

from __future__ import annotations

import inspect
import pickle
import typing

import pytest

import opero
from opero import AllFailedError, OperoError, OpmapError, RemoteError, WorkerCrashedError


def test_exports_are_the_contract() -> None:
    for name in (
        "opero",
        "opmap",
        "OperoError",
        "AllFailedError",
        "OpmapError",
        "WorkerCrashedError",
        "RemoteError",
        "__version__",
    ):
        assert name in opero.__all__
        assert getattr(opero, name) is not None
    assert isinstance(opero.__version__, str)
    assert opero.__version__[0].isdigit()


def test_exception_family() -> None:
    for cls in (AllFailedError, OpmapError, WorkerCrashedError, RemoteError):
        assert issubclass(cls, OperoError)
    assert issubclass(AllFailedError, ExceptionGroup)
    assert issubclass(OpmapError, ExceptionGroup)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = opero.no_such_name  # type: ignore[attr-defined]


def test_bare_and_called_forms_both_wrap() -> None:
    @opero.opero
    def bare(x: int) -> int:
        return x + 1

    @opero.opero()
    def called(x: int) -> int:
        return x + 2

    @opero.opero(retries=1, cache=False)
    def with_options(x: int) -> int:
        return x + 3

    assert (bare(1), called(1), with_options(1)) == (2, 3, 4)
    for fn in (bare, called, with_options):
        assert hasattr(fn, "__wrapped__")


def documented(a: int, b: str = "x", *, c: float = 1.0) -> str:
    """Documented function."""
    return f"{a}{b}{c}"


async def documented_async(a: int, b: str = "x") -> str:
    """Documented coroutine."""
    return f"{a}{b}"


@pytest.mark.parametrize("func", [documented, documented_async])
def test_wrapper_keeps_name_doc_signature_hints(func: typing.Callable[..., object]) -> None:
    wrapped = opero.opero(retries=2)(func)
    assert wrapped.__name__ == func.__name__
    assert wrapped.__qualname__ == func.__qualname__
    assert wrapped.__doc__ == func.__doc__
    assert wrapped.__wrapped__ is func  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(func)
    assert typing.get_type_hints(wrapped) == typing.get_type_hints(func)
    assert inspect.iscoroutinefunction(wrapped) == inspect.iscoroutinefunction(func)


def test_async_wrapper_is_a_coroutine_function() -> None:
    wrapped = opero.opero(documented_async)
    assert inspect.iscoroutinefunction(wrapped)
    assert not inspect.iscoroutinefunction(opero.opero(documented))


def test_cache_clear_is_present() -> None:
    wrapped = opero.opero(documented)
    wrapped.cache_clear()  # type: ignore[attr-defined]
    assert documented(1) == wrapped(1)


@opero.opero(retries=1)
def module_level(x: int) -> int:
    return x * 2


def test_decorated_function_pickles_by_reference() -> None:
    clone = pickle.loads(pickle.dumps(module_level))
    assert clone is module_level
    assert clone(21) == 42


def test_decorating_a_non_callable_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="decorates a function"):
        opero.opero(42)  # type: ignore[call-overload]


def test_opmap_maps_through_the_public_import() -> None:
    mapped = opero.opmap(mode="thread", workers=2, progress=False)(abs)
    assert mapped([-1, 2, -3]) == [1, 2, 3]
