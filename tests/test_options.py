"""Bad configuration fails at decoration, naming the option and the value."""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest

import opero._pipeline.options as options_module
from opero import opero, opmap
from opero._pipeline import option_checks


def target(prompt: str, model: str = "a", *rest: int, key: str = "k", **extra: int) -> str:
    return prompt


class GoodBackend:
    def __init__(self) -> None:
        self.entries: dict[str, object] = {}

    def get(self, key: str) -> object:
        return self.entries[key]

    def set(self, key: str, value: object, ttl: float | None) -> None:
        self.entries[key] = value

    def delete(self, key: str) -> None:
        self.entries.pop(key, None)

    def clear(self) -> None:
        self.entries.clear()


class NotAnException:
    pass


def is_retryable(exc: BaseException) -> bool:
    return True


def shown(value: Any) -> str:
    """How a message names a bad value: the offending tuple item, a class by name."""
    if isinstance(value, tuple) and value:
        value = value[-1]
    return value.__name__ if isinstance(value, type) else repr(value)


TYPE_ERRORS: list[tuple[str, Any]] = [
    ("cache", "yes"),
    ("cache", 1),
    ("cache_ttl", "60"),
    ("cache_ttl", True),
    ("cache_backend", 42),
    ("cache_backend", object()),
    ("cache_backend", GoodBackend),
    ("cache_key", "not callable"),
    ("cache_namespace", 3),
    ("cache_maxsize", 10.5),
    ("cache_maxsize", True),
    ("retries", 2.0),
    ("retries", "3"),
    ("retries", None),
    ("backoff_factor", "2"),
    ("min_delay", None),
    ("max_delay", "10"),
    ("retry_on", "ValueError"),
    ("retry_on", NotAnException),
    ("retry_on", (ValueError, "KeyError")),
    ("jitter", "no"),
    ("arg_fallback", 3),
    ("rate_limit", "10/s"),
    ("rate_limit_backpressure", 1),
    ("rate_limit_backpressure", None),
    ("rate_limit_backend", 1),
]

VALUE_ERRORS: list[tuple[str, Any]] = [
    ("cache_ttl", 0),
    ("cache_ttl", -5),
    ("cache_ttl", float("nan")),
    ("cache_backend", "memcached"),
    ("cache_namespace", ".."),
    ("cache_namespace", "a/b"),
    ("cache_namespace", "a\\b"),
    ("cache_namespace", "/abs"),
    ("cache_namespace", ""),
    ("cache_maxsize", 0),
    ("retries", -1),
    ("backoff_factor", 0.5),
    ("backoff_factor", float("inf")),
    ("min_delay", -0.1),
    ("max_delay", -1),
    ("retry_on", ()),
    ("retry_on", KeyboardInterrupt),
    ("retry_on", (ValueError, SystemExit)),
    ("rate_limit", 0),
    ("rate_limit", -1),
    ("rate_limit", float("inf")),
    ("rate_limit", 1e-11),
    ("rate_limit_backend", "memcached"),
]


@pytest.mark.parametrize(("option", "value"), TYPE_ERRORS)
def test_wrong_type_is_a_type_error_naming_option_and_value(option: str, value: Any) -> None:
    with pytest.raises(TypeError) as info:
        opero(**{option: value})
    assert option in str(info.value)
    assert shown(value) in str(info.value)


@pytest.mark.parametrize(("option", "value"), VALUE_ERRORS)
def test_bad_value_is_a_value_error_naming_option_and_value(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(option)) as info:
        opero(**{option: value})
    assert shown(value) in str(info.value)


def test_rate_limit_options_must_fit_together() -> None:
    with pytest.raises(ValueError, match=r"rate_limit_key .* is only used with"):
        opero(rate_limit=5, rate_limit_key="k")
    with pytest.raises(ValueError, match="rate_limit_backend='redis' needs a rate_limit"):
        opero(rate_limit_backend="redis")
    with pytest.raises(ValueError, match="rate_limit_key"):
        opero(rate_limit=5, rate_limit_backend="redis", rate_limit_key="")
    with pytest.raises(ValueError, match=r"rate_limit_backpressure \(False\) needs a rate_limit"):
        opero(rate_limit_backpressure=False)
    opero(rate_limit=5, rate_limit_backpressure=False)  # fine with a limit


def test_twat_backend_has_no_ttl() -> None:
    with pytest.raises(
        ValueError, match=r"cache_ttl \(60\) is not supported by cache_backend='twat'"
    ):
        opero(cache_backend="twat", cache_ttl=60)


def test_max_delay_below_min_delay() -> None:
    with pytest.raises(ValueError, match=r"max_delay \(1\).*min_delay \(2\)"):
        opero(min_delay=2, max_delay=1)


def test_unknown_option_is_a_type_error_with_a_suggestion() -> None:
    with pytest.raises(TypeError, match="unknown option 'retires'; did you mean 'retries'"):
        opero(retires=3)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("worker", "workers"),
        ("chunksiz", "chunksize"),
        ("start_metod", "start_method"),
        ("retrun_exceptions", "return_exceptions"),
        ("retires", "retries"),
    ],
)
def test_opmap_suggests_its_own_options_too(typo: str, meant: str) -> None:
    # Its own options were taken out before the @opero checks, which knew only theirs.
    with pytest.raises(TypeError, match=f"unknown option '{typo}'; did you mean '{meant}'"):
        opmap(**{typo: 2})


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"cache": False, "cache_ttl": 0.5, "cache_backend": "disk", "cache_namespace": "my-app"},
        {"cache_backend": GoodBackend(), "cache_key": lambda *a, **k: "k", "cache_maxsize": 1},
        {"retries": 0, "backoff_factor": 1, "min_delay": 0, "max_delay": 0},
        {"retry_on": (ValueError, KeyError), "jitter": False},
        {"retry_on": is_retryable},
        {"rate_limit": 0.5, "rate_limit_backend": "redis"},
        {"cache_backend": "redis", "cache": False, "cache_ttl": None, "rate_limit": None},
    ],
)
def test_valid_options_are_accepted(options: dict[str, Any]) -> None:
    wrapped = opero(**options)(target)
    assert wrapped("hi") == "hi"


def test_arg_fallback_must_name_a_parameter() -> None:
    with pytest.raises(ValueError, match=r"arg_fallback='modle' names no parameter of target\(\)"):
        opero(arg_fallback="modle")(target)


@pytest.mark.parametrize("name", ["rest", "extra"])
def test_arg_fallback_cannot_name_star_parameters(name: str) -> None:
    with pytest.raises(ValueError, match=f"arg_fallback={name!r} must name a single parameter"):
        opero(arg_fallback=name)(target)


@pytest.mark.parametrize("name", ["model", "key", "prompt"])
def test_arg_fallback_accepts_any_single_parameter(name: str) -> None:
    assert opero(arg_fallback=name)(target)("p") == "p"


def test_nothing_is_validated_or_inspected_at_call_time(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    calls: list[Any] = []

    @opero(cache=False, retries=1, arg_fallback="model")
    def ask(prompt: str, model: Any = ("a", "b")) -> str:
        calls.append(model)
        if model == "a":
            raise ConnectionError
        return prompt

    @opero(cache=False, retries=2)
    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) < 5:
            raise OSError
        return x

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("called on the call path")

    # tenacity is imported on the first failure and runs inspect while importing (its
    # dataclasses): a one-time import, not a per-call check. Import it before the patch.
    import tenacity

    assert tenacity.Retrying is not None

    monkeypatch.setattr(inspect, "signature", forbidden)
    monkeypatch.setattr(options_module, "build_options", forbidden)
    for name in list(option_checks.CHECKS):
        monkeypatch.setitem(option_checks.CHECKS, name, forbidden)
    assert ask("hi") == "hi"
    assert flaky(7) == 7
    assert calls == ["a", "a", "b", 7, 7]


def test_the_typed_options_the_frozen_options_and_the_checks_agree() -> None:
    # Three declarations of one option set: what type checkers see (OperoKwargs), what
    # build_options fills in (OperoOptions) and what validates each (CHECKS).
    from typing import get_type_hints

    from opero import CircuitBreakerOptions, RetryBudget
    from opero._maps.settings import MapSettings
    from opero._pipeline.options import OperoKwargs, OperoOptions

    # The names the options module imports only for type checkers.
    names = {"CircuitBreakerOptions": CircuitBreakerOptions, "RetryBudget": RetryBudget}
    typed = get_type_hints(OperoKwargs, localns=names)
    frozen = get_type_hints(OperoOptions, localns=names)
    assert list(typed) == list(OperoOptions._fields) == list(option_checks.CHECKS)
    assert typed == frozen
    # @opmap's own options: every setting but mode is typed for users, with its type.
    from opero._decorators.opmap import OpmapKwargs

    hints = get_type_hints(OpmapKwargs, localns=names)
    own = {name: hint for name, hint in hints.items() if name not in typed}
    assert set(own) == set(MapSettings._fields) - {"mode"}
