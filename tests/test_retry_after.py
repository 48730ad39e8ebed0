"""server_delay: the Retry-After a server asked for, read off an exception."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from opero._policies.retry_after import server_delay

NOW = datetime(2015, 10, 21, 7, 27, 0, tzinfo=UTC)


def fixed_now() -> datetime:
    return NOW


class WithRetryAfter(Exception):
    def __init__(self, retry_after: object) -> None:
        super().__init__("slow down")
        self.retry_after = retry_after


class FakeResponse:
    def __init__(self, headers: object) -> None:
        self.headers = headers


class WithResponse(Exception):
    def __init__(self, headers: object, retry_after: object = None) -> None:
        super().__init__("http error")
        self.response = FakeResponse(headers)
        self.retry_after = retry_after


def header_delay(value: object) -> float | None:
    return server_delay(WithResponse({"Retry-After": value}), now=fixed_now)


# --- the `retry_after` attribute ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3.0),
        (0, 0.0),
        (2.5, 2.5),
        (timedelta(seconds=4, milliseconds=500), 4.5),
        (timedelta(0), 0.0),
        ("7", 7.0),
        (" 8 ", 8.0),
        ("1.5", 1.5),
        (b"9", 9.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0),
    ],
)
def test_attribute_forms(value: object, expected: float) -> None:
    delay = server_delay(WithRetryAfter(value), now=fixed_now)
    assert delay == expected
    assert type(delay) is float


@pytest.mark.parametrize(
    "value",
    [
        -1,
        -0.5,
        math.nan,
        math.inf,
        -math.inf,
        True,
        False,
        10**400,  # too big for a float
        timedelta(seconds=-1),
        "",
        "   ",
        "abc",
        "-3",
        "+3",
        "1e3",
        "inf",
        "nan",
        "1_0",
        "٣",  # an Arabic-Indic digit: float() takes it, HTTP does not
        "3 seconds",
        object(),
        [1],
        {"seconds": 1},
    ],
    ids=repr,
)
def test_bad_attribute_gives_none(value: object) -> None:
    assert server_delay(WithRetryAfter(value), now=fixed_now) is None


def test_no_attributes_gives_none() -> None:
    assert server_delay(ValueError("plain")) is None
    assert server_delay(KeyboardInterrupt()) is None


def test_attribute_wins_over_header() -> None:
    assert server_delay(WithResponse({"Retry-After": "30"}, retry_after=5)) == 5.0


@pytest.mark.parametrize("retry_after", [None, "soon", -5, math.nan, True, object()], ids=repr)
def test_bad_attribute_falls_back_to_header(retry_after: object) -> None:
    exc = WithResponse({"Retry-After": "30"}, retry_after=retry_after)
    assert server_delay(exc) == 30.0


class RaisingRetryAfter(WithResponse):
    @property
    def retry_after(self) -> float:
        raise RuntimeError("no retry_after here")

    @retry_after.setter
    def retry_after(self, value: object) -> None:
        pass


def test_attribute_that_raises_gives_none() -> None:
    assert server_delay(RaisingRetryAfter({})) is None


def test_attribute_that_raises_falls_back_to_header() -> None:
    assert server_delay(RaisingRetryAfter({"Retry-After": "4"})) == 4.0


# --- the Retry-After header -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 5 ", 5.0),
        ("\t5\r\n", 5.0),
        ("2.5", 2.5),
        ("007", 7.0),
        (b"11", 11.0),
    ],
)
def test_header_delta_seconds(value: object, expected: float) -> None:
    assert header_delay(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0),  # IMF-fixdate
        ("Wednesday, 21-Oct-15 07:28:00 GMT", 60.0),  # obsolete RFC 850
        ("Wed Oct 21 07:28:00 2015", 60.0),  # obsolete asctime, no zone: UTC
        ("Wed, 21 Oct 2015 07:28:00 -0000", 60.0),
        ("Wed, 21 Oct 2015 08:28:30 +0100", 90.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # now
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # past: floored at 0
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ],
)
def test_header_http_date(value: str, expected: float) -> None:
    assert header_delay(value) == expected


def test_header_http_date_with_naive_now_is_utc() -> None:
    exc = WithResponse({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert server_delay(exc, now=lambda: NOW.replace(tzinfo=None)) == 60.0


def test_header_http_date_default_now_is_the_real_clock() -> None:
    soon = datetime.now(UTC) + timedelta(hours=1)
    exc = WithResponse({"Retry-After": soon.strftime("%a, %d %b %Y %H:%M:%S GMT")})
    delay = server_delay(exc)
    assert delay is not None
    assert 3590.0 < delay <= 3600.0


@pytest.mark.parametrize(
    "value",
    [
        "",
        "  ",
        "abc",
        "-5",
        "+5",
        "1e3",
        "inf",
        "nan",
        "5 s",
        "9" * 400,  # delta-seconds too big for a float
        "Wed, 99 Foo 2015 07:28:00 GMT",
        "Wed, 21 Oct 99999 07:28:00 GMT",
        7,  # not text
        None,
    ],
    ids=repr,
)
def test_bad_header_gives_none(value: object) -> None:
    assert header_delay(value) is None


@pytest.mark.parametrize("name", ["Retry-After", "retry-after"])
def test_header_name_in_plain_dict(name: str) -> None:
    assert server_delay(WithResponse({name: "12"})) == 12.0


@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Type": "text/plain"}, None, [("Retry-After", "5")], "Retry-After: 5"],
    ids=repr,
)
def test_no_usable_headers_give_none(headers: object) -> None:
    assert server_delay(WithResponse(headers)) is None


def test_response_without_headers_gives_none() -> None:
    exc = ValueError("x")
    exc.response = object()  # type: ignore[attr-defined]
    assert server_delay(exc) is None


def test_response_none_gives_none() -> None:
    exc = ValueError("x")
    exc.response = None  # type: ignore[attr-defined]
    assert server_delay(exc) is None


def test_response_property_that_raises_gives_none() -> None:
    class Raising(Exception):
        @property
        def response(self) -> Any:
            raise RuntimeError("no response yet")

    assert server_delay(Raising()) is None


def test_headers_property_that_raises_gives_none() -> None:
    class Response:
        @property
        def headers(self) -> Any:
            raise KeyError("headers")

    exc = ValueError("x")
    exc.response = Response()  # type: ignore[attr-defined]
    assert server_delay(exc) is None


def test_now_that_raises_gives_none() -> None:
    def broken_now() -> datetime:
        raise RuntimeError("clock broke")

    exc = WithResponse({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert server_delay(exc, now=broken_now) is None


# --- real client exceptions -------------------------------------------------------------


def httpx_error(status: int, headers: dict[str, str]) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "https://example.invalid/")
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError("error", request=request, response=response)


def test_httpx_status_error_delta_seconds() -> None:
    assert server_delay(httpx_error(429, {"Retry-After": "7"})) == 7.0


def test_httpx_status_error_http_date() -> None:
    exc = httpx_error(503, {"retry-after": "Wed, 21 Oct 2015 07:29:00 GMT"})
    assert server_delay(exc, now=fixed_now) == 120.0


def test_httpx_headers_any_case() -> None:
    assert server_delay(httpx_error(429, {"RETRY-AFTER": "3"})) == 3.0


def test_httpx_status_error_without_header() -> None:
    assert server_delay(httpx_error(500, {})) is None


def test_httpx_request_error_without_response() -> None:
    # `RequestError` has no `response`; its `request` property raises when unset.
    assert server_delay(httpx.ConnectError("refused")) is None


# --- properties ---------------------------------------------------------------------------


def assert_usable(delay: float | None) -> None:
    if delay is not None:
        assert type(delay) is float
        assert math.isfinite(delay)
        assert delay >= 0.0


@given(st.text())
def test_any_text_header_is_safe(value: str) -> None:
    assert_usable(header_delay(value))


@given(
    st.one_of(
        st.text(),
        st.from_regex(r"\s*[0-9]{1,30}(\.[0-9]{1,30})?\s*", fullmatch=True),
        st.datetimes(timezones=st.just(UTC)).map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT")),
    ),
)
def test_any_header_shape_is_safe(value: str) -> None:
    assert_usable(header_delay(value))


@given(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(),
        st.binary(),
        st.timedeltas(),
        st.datetimes(),
        st.lists(st.integers()),
        st.complex_numbers(),
    )
)
def test_any_attribute_is_safe(value: object) -> None:
    assert_usable(server_delay(WithRetryAfter(value), now=fixed_now))


@given(st.integers(min_value=0, max_value=10**15))
def test_integer_header_round_trips(seconds: int) -> None:
    assert header_delay(str(seconds)) == float(seconds)
