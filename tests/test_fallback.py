"""arg_fallback: the value reaches the named parameter; each value has its own retries."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opero import AllFailedError, OperoError, RetryPredicateError, opero
from opero._pipeline.fallback import FallbackParameter

# Each test on the fast pipeline and on its observed twin (see conftest.both_pipelines).
pytestmark = pytest.mark.usefixtures("both_pipelines")


class Recorder:
    """Fails for the models in `down`; records every model it was called with."""

    def __init__(self, *down: str) -> None:
        self.down = set(down)
        self.models: list[Any] = []

    def __call__(self, model: Any) -> str:
        self.models.append(model)
        if isinstance(model, str) and model in self.down:
            raise ConnectionError(f"{model} is down")
        return f"answer from {model}"


def make(recorder: Recorder, **options: Any) -> Any:
    @opero(**{"cache": False, "retries": 0, "arg_fallback": "model", **options})
    def ask(prompt: str, model: Any = ("a", "b", "c"), *, temperature: float = 0.0) -> str:
        return recorder(model)

    return ask


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("hi", ["a", "b"]), {}),
        (("hi",), {"model": ["a", "b"]}),
        ((), {"prompt": "hi", "model": ["a", "b"]}),
        (("hi", ["a", "b"]), {"temperature": 0.5}),
    ],
    ids=["positional", "keyword", "all-keyword", "positional-plus-keyword-only"],
)
def test_value_reaches_the_named_parameter(
    sleeps: list[float], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    recorder = Recorder("a")
    assert make(recorder)(*args, **kwargs) == "answer from b"
    assert recorder.models == ["a", "b"]


def test_default_value_is_used_when_not_passed(sleeps: list[float]) -> None:
    recorder = Recorder("a", "b")
    assert make(recorder)("hi") == "answer from c"
    assert recorder.models == ["a", "b", "c"]


def test_other_arguments_are_untouched() -> None:
    seen: list[tuple[Any, ...]] = []

    @opero(cache=False, retries=0, arg_fallback="key")
    def call(url: str, key: Any, /, timeout: float = 1.0, *, verbose: bool = False) -> str:
        seen.append((url, key, timeout, verbose))
        if key == "k1":
            raise PermissionError("bad key")
        return f"{url}:{key}"

    assert call("u", ["k1", "k2"], 3.0, verbose=True) == "u:k2"
    assert seen == [("u", "k1", 3.0, True), ("u", "k2", 3.0, True)]


def test_keyword_only_parameter() -> None:
    calls: list[str] = []

    @opero(cache=False, retries=0, arg_fallback="key")
    def call(url: str, *, key: Any = ("k1", "k2")) -> str:
        calls.append(key)
        if key == "k1":
            raise PermissionError
        return key  # type: ignore[no-any-return]

    assert call("u") == "k2"
    assert call("u", key=["k1", "k3"]) == "k3"
    assert calls == ["k1", "k2", "k1", "k3"]


def test_positional_only_parameter_left_at_its_default() -> None:
    calls: list[tuple[Any, ...]] = []

    @opero(cache=False, retries=0, arg_fallback="model")
    def call(prompt: str, size: int = 1, model: Any = ("a", "b"), /) -> str:
        calls.append((prompt, size, model))
        if model == "a":
            raise ConnectionError
        return f"{prompt}{size}{model}"

    assert call("p") == "p1b"
    assert calls == [("p", 1, "a"), ("p", 1, "b")]
    assert call("q", 7) == "q7b"


def test_missing_required_fallback_argument_is_a_type_error_without_calls() -> None:
    recorder = Recorder()

    @opero(cache=False, arg_fallback="model")
    def ask(model: Any) -> str:
        return recorder(model)

    with pytest.raises(TypeError, match="missing required argument: 'model'"):
        ask()  # type: ignore[call-arg]
    assert recorder.models == []


def test_each_value_gets_its_own_retries(sleeps: list[float]) -> None:
    attempts: dict[str, int] = {}

    @opero(cache=False, retries=2, arg_fallback="model")
    def ask(model: Any = ("a", "b")) -> str:
        attempts[model] = attempts.get(model, 0) + 1
        if model == "a" or attempts[model] < 3:
            raise ConnectionError(model)
        return model  # type: ignore[no-any-return]

    assert ask() == "b"
    assert attempts == {"a": 3, "b": 3}
    assert len(sleeps) == 4


def test_all_failed_error_lists_each_values_last_error_in_order(sleeps: list[float]) -> None:
    attempts: list[str] = []

    @opero(cache=False, retries=1, arg_fallback="model")
    def ask(model: Any = ("a", "b", "c")) -> str:
        attempts.append(model)
        raise ValueError(f"{model} attempt {attempts.count(model)}")

    with pytest.raises(AllFailedError) as info:
        ask()
    group = info.value
    assert isinstance(group, ExceptionGroup)
    assert isinstance(group, OperoError)
    assert [str(e) for e in group.errors] == ["a attempt 2", "b attempt 2", "c attempt 2"]
    assert list(group.exceptions) == group.errors
    assert "3 values of 'model'" in str(group)
    assert attempts == ["a", "a", "b", "b", "c", "c"]


def test_all_failed_error_works_with_except_star() -> None:
    @opero(cache=False, retries=0, arg_fallback="model")
    def ask(model: Any = ("a", "b")) -> str:
        raise (KeyError if model == "a" else ConnectionError)(model)

    caught: list[str] = []
    try:
        ask()
    except* KeyError as group:
        caught.append(f"key:{len(group.exceptions)}:{type(group).__name__}")
    except* ConnectionError as group:
        caught.append(f"conn:{len(group.exceptions)}:{type(group).__name__}")
    assert sorted(caught) == ["conn:1:AllFailedError", "key:1:AllFailedError"]


def test_all_failed_error_never_shows_the_values() -> None:
    @opero(cache=False, retries=0, arg_fallback="api_key")
    def call(api_key: Any) -> str:
        raise PermissionError("denied")

    with pytest.raises(AllFailedError) as info:
        call(["sk-secret-1", "sk-secret-2"])
    assert "sk-secret" not in str(info.value)
    assert "sk-secret" not in repr(info.value)


def test_non_retryable_error_still_moves_to_the_next_value(sleeps: list[float]) -> None:
    recorder = Recorder("a")
    recorder_calls = make(recorder, retries=3, retry_on=TimeoutError)
    assert recorder_calls("hi") == "answer from b"
    assert recorder.models == ["a", "b"]
    assert sleeps == []


@pytest.mark.parametrize(
    "single", ["abc", b"abc", bytearray(b"abc"), 42, None, frozenset({"a"}), iter(["a"])]
)
def test_str_bytes_and_non_sequences_are_a_single_value(single: Any) -> None:
    recorder = Recorder()
    assert make(recorder)("hi", single) == f"answer from {single}"
    assert recorder.models == [single]


def test_single_value_that_fails_raises_all_failed_error() -> None:
    recorder = Recorder("abc")
    with pytest.raises(AllFailedError) as info:
        make(recorder)("hi", "abc")
    assert [type(e) for e in info.value.errors] == [ConnectionError]


@pytest.mark.parametrize("empty", [[], ()])
def test_empty_sequence_is_a_value_error(empty: Any) -> None:
    recorder = Recorder()
    with pytest.raises(ValueError, match="'model' holds an empty sequence"):
        make(recorder)("hi", empty)
    assert recorder.models == []


def test_values_are_snapshotted_before_the_first_call() -> None:
    models = ["a", "b", "c"]
    tried: list[str] = []

    @opero(cache=False, retries=0, arg_fallback="model")
    def ask(model: Any) -> str:
        tried.append(model)
        models.remove(model)  # the caller's list changes under the call
        raise ConnectionError(model)

    with pytest.raises(AllFailedError):
        ask(models)
    assert tried == ["a", "b", "c"]


def test_a_broken_retry_predicate_does_not_move_to_the_next_value() -> None:
    tried: list[str] = []

    def broken(exc: BaseException) -> bool:
        raise RuntimeError("predicate bug")

    @opero(cache=False, retry_on=broken, arg_fallback="model")
    def ask(model: Any = ("a", "b")) -> str:
        tried.append(model)
        raise ConnectionError(model)

    with pytest.raises(RetryPredicateError):
        ask()
    assert tried == ["a"]


def test_base_exception_stops_the_fallback_at_once() -> None:
    recorder_models: list[str] = []

    @opero(cache=False, retries=2, arg_fallback="model")
    def ask(model: Any = ("a", "b")) -> str:
        recorder_models.append(model)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ask()
    assert recorder_models == ["a"]


class Client:
    def __init__(self) -> None:
        self.keys: list[str] = []

    @opero(cache=False, retries=0, arg_fallback="key")
    def get(self, path: str, key: Any = ("k1", "k2")) -> str:
        self.keys.append(key)
        if key == "k1":
            raise PermissionError
        return f"{path}?key={key}"

    @opero(cache=False, retries=0, arg_fallback="key")
    async def aget(self, path: str, key: Any = ("k1", "k2")) -> str:
        return self.get.__wrapped__(self, path, key)  # type: ignore[attr-defined, no-any-return]


def test_methods_count_self_in_the_position() -> None:
    client = Client()
    assert client.get("/x") == "/x?key=k2"
    assert client.get("/y", ["k1", "k3"]) == "/y?key=k3"
    assert client.keys == ["k1", "k2", "k1", "k3"]


async def test_async_fallback(sleeps: list[float]) -> None:
    client = Client()
    assert await client.aget("/x") == "/x?key=k2"
    assert client.keys == ["k1", "k2"]

    @opero(cache=False, retries=1, arg_fallback="model")
    async def ask(model: Any) -> str:
        raise ConnectionError(model)

    with pytest.raises(AllFailedError) as info:
        await ask(["a", "b"])
    assert [str(e) for e in info.value.errors] == ["a", "b"]
    assert len(sleeps) == 2


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.text(min_size=1, max_size=3), min_size=1, max_size=6),
    fail_at=st.sets(st.integers(0, 5)),
    style=st.sampled_from(["positional", "keyword", "default"]),
)
def test_property_first_working_value_wins(
    values: list[str], fail_at: set[int], style: str
) -> None:
    failing = {i for i in fail_at if i < len(values)}
    tried: list[int] = []
    default = tuple(enumerate(values))

    @opero(cache=False, retries=0, arg_fallback="choice")
    def pick(prefix: str, choice: Any = default) -> str:
        index, value = choice
        tried.append(index)
        if index in failing:
            raise RuntimeError(str(index))
        return prefix + value

    given_values = list(enumerate(values))
    if style == "positional":
        call = lambda: pick(">", given_values)  # noqa: E731
    elif style == "keyword":
        call = lambda: pick(">", choice=given_values)  # noqa: E731
    else:
        call = lambda: pick(">")  # noqa: E731

    working = [i for i in range(len(values)) if i not in failing]
    if working:
        assert call() == ">" + values[working[0]]
        assert tried == list(range(working[0] + 1))
    else:
        with pytest.raises(AllFailedError) as info:
            call()
        assert [str(e) for e in info.value.errors] == [str(i) for i in range(len(values))]
        assert tried == list(range(len(values)))


def test_all_failed_error_pickles() -> None:
    error = AllFailedError("f(): all 2 values of 'model' failed", [ValueError("a"), KeyError("b")])
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is AllFailedError
    assert clone.message == error.message
    assert [repr(e) for e in clone.errors] == [repr(e) for e in error.errors]


def pickled_target(prompt: str, model: Any = ("a", "b")) -> str:
    return prompt


def test_fallback_parameter_pickles() -> None:
    located = FallbackParameter(pickled_target, "model", "pickled_target")
    clone = pickle.loads(pickle.dumps(located))
    assert clone.values(("p",), {}) == ("a", "b")
    assert clone.substitute(("p", ["x"]), {}, "y") == (("p", "y"), {})
