"""RFC conformance of the shared cache, each test written from the RFC text it names.

RFC 9110 section 5.6.7 (HTTP-date), RFC 9111 sections 4.2 / 5.1 / 5.3 (freshness, ``Age``,
``Expires``), RFC 9213 (targeted cache-control fields), RFC 9112 section 6 (message framing).
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_resilience import CacheMiddleware, ConfigurationError
from asgi_resilience.caching._headers import (
    _Invalid,
    _SFParser,
    content_length,
    parse_age,
    parse_cache_control,
    parse_http_date,
    parse_targeted,
)
from asgi_resilience.caching._policy import (
    build_entry,
    client_conditional_matches,
    decide_store,
    invalidation_targets,
    normalize_query,
    request_directives,
    response_tags,
    update_from_304,
    vary_values,
)
from asgi_resilience.caching._ranges import if_range_matches, parse_ranges, render_range
from asgi_resilience.testing import ASGIHarness, ManualClock

from .conftest import OFF, T0, Origin, get, status_of

# RFC 9110 section 5.6.7: the three forms of one instant
SUNDAY = 784111777.0
IMF = "Sun, 06 Nov 1994 08:49:37 GMT"
RFC850 = "Sunday, 06-Nov-94 08:49:37 GMT"
ASCTIME = "Sun Nov  6 08:49:37 1994"


def make(origin: Origin, now: float = T0, **kwargs: Any) -> tuple[CacheMiddleware, ManualClock]:
    clock = ManualClock(now)
    return CacheMiddleware(origin, clock=clock, telemetry=OFF, **kwargs), clock


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


# --- HTTP-date ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [IMF, RFC850, ASCTIME, f"  {IMF}\t"])
def test_the_three_date_forms_denote_the_same_instant(value: str) -> None:
    """'Recipients of timestamp values are encouraged to be robust': all three formats MUST be accepted."""
    assert parse_http_date(value.encode()) == SUNDAY


def test_rfc850_two_digit_years_more_than_50_years_ahead_are_in_the_past() -> None:
    # 2070 is 44 years after 2026: taken as written; 2077 would be 51 years ahead: 1977
    assert parse_http_date(b"Tuesday, 01-Jan-70 00:00:00 GMT", now_year=2026) == parse_http_date(
        b"Tue, 01 Jan 2070 00:00:00 GMT"
    )
    assert parse_http_date(b"Friday, 01-Jan-77 00:00:00 GMT", now_year=2026) == parse_http_date(
        b"Sat, 01 Jan 1977 00:00:00 GMT"
    )


INVALID_DATES = {
    "utc-zone": "Sun, 06 Nov 1994 08:49:37 UTC",
    "aest-zone": "Sun, 06 Nov 1994 08:49:37 AEST",
    "numeric-zone": "Sun, 06 Nov 1994 08:49:37 +0000",
    "two-digit-year-imf": "Sun, 06 Nov 94 08:49:37 GMT",
    "four-digit-year-rfc850": "Sunday, 06-Nov-1994 08:49:37 GMT",
    "missing-comma": "Sun 06 Nov 1994 08:49:37 GMT",
    "double-space": "Sun,  06 Nov 1994 08:49:37 GMT",
    "dashes-in-imf": "Sun, 06-Nov-1994 08:49:37 GMT",
    "periods-in-time": "Sun, 06 Nov 1994 08.49.37 GMT",
    "one-digit-hour": "Sun, 06 Nov 1994 8:49:37 GMT",
    "one-digit-day": "Sun, 6 Nov 1994 08:49:37 GMT",
    "lower-case": "sun, 06 nov 1994 08:49:37 gmt",
    "folded": "Sun, 06 Nov 1994\r\n 08:49:37 GMT",
    "day-32": "Sun, 32 Nov 1994 08:49:37 GMT",
    "hour-24": "Sun, 06 Nov 1994 24:49:37 GMT",
    "trailing-text": "Sun, 06 Nov 1994 08:49:37 GMT x",
    "non-ascii-digit": "Sun, 0² Nov 1994 08:49:37 GMT",
    "number": "0",
    "empty": "",
}


@pytest.mark.parametrize("value", INVALID_DATES.values(), ids=INVALID_DATES.keys())
def test_values_outside_the_grammar_are_not_dates(value: str) -> None:
    assert parse_http_date(value.encode("latin-1")) is None


@pytest.mark.parametrize("value", INVALID_DATES.values(), ids=INVALID_DATES.keys())
async def test_an_invalid_expires_means_already_expired(value: str) -> None:
    """RFC 9111 section 5.3: 'A cache recipient MUST interpret invalid date formats ... as representing
    a time in the past (i.e., "already expired")'."""
    origin = Origin(headers=[("date", http_date(T0)), ("expires", value)])
    mw, _ = make(origin)
    await get(mw)
    second = await get(mw)
    assert origin.calls == 2 and "hit" not in status_of(second)


@pytest.mark.parametrize("form", [IMF, RFC850, ASCTIME])
async def test_a_valid_expires_in_any_form_gives_freshness(form: str) -> None:
    origin = Origin(headers=[("date", "Sun, 06 Nov 1994 08:48:37 GMT"), ("expires", form)])
    mw, clock = make(origin, now=SUNDAY - 60)
    await get(mw)
    clock.advance(30)  # 60 s lifetime from Date to Expires
    assert status_of(await get(mw)).startswith("asgi-resilience; hit") and origin.calls == 1


async def test_two_expires_fields_are_invalid() -> None:
    """Expires is a singleton field: a list of dates is not an HTTP-date."""
    origin = Origin(headers=[("date", http_date(T0)), ("expires", http_date(T0 + 60)), ("expires", http_date(T0))])
    mw, _ = make(origin)
    await get(mw)
    await get(mw)
    assert origin.calls == 2


# --- Age ------------------------------------------------------------------------------------------


def test_age_list_uses_the_first_member_and_invalid_values_are_flagged() -> None:
    assert parse_age([(b"age", b"7200, 0")]) == (7200.0, True)
    assert parse_age([(b"age", b"7200"), (b"age", b"0")]) == (7200.0, True)
    assert parse_age([]) == (0.0, True)
    for bad in (b"abc", b"-7200", b"7200.0", b"\xc2\xb2", b"", b"7200;x=1", b"+5"):
        assert parse_age([(b"age", bad)]) == (0.0, False), bad


@pytest.mark.parametrize("age", [["7200, 0"], ["7200", "0"]], ids=["one-line", "two-lines"])
async def test_age_list_takes_the_first_member(age: list[str]) -> None:
    """RFC 9111 section 5.1: a cache 'SHOULD use the first member of the field value'; 7200 > max-age."""
    origin = Origin(headers=[("cache-control", "max-age=3600"), *[("age", a) for a in age]])
    mw, _ = make(origin)
    await get(mw)
    await get(mw)
    assert origin.calls == 2


@pytest.mark.parametrize("age", ["abc", "-7200", "7200.5", "²", "1 2", "0x10"])
async def test_an_invalid_age_makes_the_response_stale(age: str) -> None:
    origin = Origin(headers=[("cache-control", "max-age=3600"), ("age", age)])
    mw, _ = make(origin)
    first = await get(mw)
    assert first.status == 200
    await get(mw)
    assert origin.calls == 2


async def test_a_valid_age_counts_and_leaves_the_response_fresh() -> None:
    origin = Origin(headers=[("cache-control", "max-age=3600"), ("age", "600")])
    mw, _ = make(origin)
    await get(mw)
    hit = await get(mw)
    assert origin.calls == 1 and hit.header("age") == "600"


# --- targeted cache-control fields (RFC 9213) --------------------------------------------------------


def test_targeted_fields_parse_as_structured_dictionaries() -> None:
    assert parse_targeted([b"max-age=60, stale-if-error=30"]) == {"max-age": "60", "stale-if-error": "30"}
    assert parse_targeted([b'no-cache="set-cookie", private']) == {"no-cache": "set-cookie", "private": None}
    assert parse_targeted([b"max-age=60", b"s-maxage=5"]) == {"max-age": "60", "s-maxage": "5"}
    assert parse_targeted([b"max-age=60;x=1, no-store=?0"]) == {"max-age": "60"}
    for invalid in (b"Max-Age=60", b"max-age=60,", b"max-age=", b"max-age=60 private", b'no-cache="x', b"\xff"):
        assert parse_targeted([invalid]) is None, invalid
    assert parse_targeted([]) is None and parse_targeted([b""]) is None


async def test_cdn_cache_control_takes_precedence_over_cache_control() -> None:
    """RFC 9213 section 2.2: the cache 'MUST ignore the Cache-Control and Expires header fields'."""
    origin = Origin(
        headers=[
            ("cache-control", "no-store"),
            ("expires", http_date(T0 - 10)),
            ("cdn-cache-control", "max-age=60"),
        ]
    )
    mw, clock = make(origin)
    first = await get(mw)
    # forwarded unchanged to the client, which still sees its own Cache-Control
    assert first.header("cdn-cache-control") == "max-age=60" and first.header("cache-control") == "no-store"
    clock.advance(30)
    hit = await get(mw)
    assert origin.calls == 1 and hit.header("cdn-cache-control") == "max-age=60"
    assert hit.header("cache-control") == "no-store"


@pytest.mark.parametrize("targeted", ["no-store", "private", "max-age=0", "no-cache"])
async def test_cdn_cache_control_can_forbid_what_cache_control_allows(targeted: str) -> None:
    origin = Origin(headers=[("cache-control", "public, max-age=600"), ("cdn-cache-control", targeted)])
    mw, _ = make(origin)
    await get(mw)
    await get(mw)
    assert origin.calls == 2


async def test_cdn_cache_control_stale_directives_apply() -> None:
    origin = Origin(
        headers=[("cache-control", "max-age=0"), ("cdn-cache-control", "max-age=10, stale-while-revalidate=60")]
    )
    mw, clock = make(origin)
    await get(mw)
    clock.advance(20)
    assert status_of(await get(mw)).startswith("asgi-resilience; hit; fwd=stale")


async def test_an_invalid_targeted_field_is_ignored() -> None:
    """RFC 9213 section 2.1: an invalid field value is ignored and Cache-Control applies."""
    origin = Origin(headers=[("cache-control", "max-age=60"), ("cdn-cache-control", "No-Store")])
    mw, _ = make(origin)
    await get(mw)
    await get(mw)
    assert origin.calls == 1


async def test_configured_targeted_fields_in_order_of_precedence() -> None:
    origin = Origin(
        headers=[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "no-store"),
            ("acme-cache-control", "max-age=60"),
        ]
    )
    mine, _ = make(origin, targeted_fields=["Acme-Cache-Control", "CDN-Cache-Control"])
    await get(mine)
    await get(mine)
    assert origin.calls == 1
    cdn_only, _ = make(origin)  # the default list does not know the Acme field
    await get(cdn_only)
    await get(cdn_only)
    assert origin.calls == 3
    none, _ = make(
        Origin(headers=[("cache-control", "max-age=60"), ("cdn-cache-control", "no-store")]), targeted_fields=()
    )
    await get(none)
    assert status_of(await get(none)).startswith("asgi-resilience; hit")


async def test_targeted_fields_can_be_removed_before_the_client() -> None:
    origin = Origin(headers=[("cache-control", "max-age=5"), ("cdn-cache-control", "max-age=60")])
    mw, clock = make(origin, strip_targeted_fields=True)
    first = await get(mw)
    assert first.header("cdn-cache-control") is None and first.header("cache-control") == "max-age=5"
    clock.advance(30)
    hit = await get(mw)
    assert origin.calls == 1 and hit.header("cdn-cache-control") is None


@pytest.mark.parametrize("value", [["bad name"], [""], [3], ["x:y"]])
def test_targeted_field_names_are_validated(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="targeted_fields"):
        CacheMiddleware(Origin(), targeted_fields=value)


# --- Transfer-Encoding (RFC 9112 section 6) -----------------------------------------------------------


def on_the_wire(h: ASGIHarness) -> tuple[int, dict[str, str], bytes]:
    """Serialise the recorded response with h11 as an HTTP/1.1 server would, and read it back as a client.

    h11 raises (the server's 500) on framing errors such as a body longer than its Content-Length.
    """
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nhost: testserver\r\n\r\n")
    assert isinstance(server.next_event(), h11.Request)
    wire = server.send(h11.Response(status_code=h.status, headers=[(k, v) for k, v in h.headers])) or b""
    for message in h.messages:
        if message["type"] == "http.response.body" and message.get("body"):
            wire += server.send(h11.Data(data=message["body"])) or b""
    wire += server.send(h11.EndOfMessage()) or b""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "testserver")]))
    client.receive_data(wire)
    response = client.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data)
        body += event.data
    return response.status_code, {k.decode(): v.decode() for k, v in response.headers}, body


async def test_transfer_encoding_is_not_stored_and_never_breaks_framing() -> None:
    """A Content-Length next to Transfer-Encoding is wrong by definition (RFC 9112 section 6.3)."""
    origin = Origin(
        headers=[("cache-control", "max-age=60"), ("transfer-encoding", "chunked"), ("content-length", "3")],
        chunks=[b"hel", b"lo"],
    )
    mw, _ = make(origin)
    miss = await get(mw)
    assert miss.header("transfer-encoding") is None and miss.header("content-length") is None
    assert on_the_wire(miss)[::2] == (200, b"hello")
    hit = await get(mw)
    assert origin.calls == 1 and hit.header("transfer-encoding") is None
    assert hit.header("content-length") == "5"
    status, headers, body = on_the_wire(hit)
    assert (status, body) == (200, b"hello") and "transfer-encoding" not in headers


# --- every header parser survives arbitrary input (RFC 5234: DIGIT is %x30-39 only) ------------------

_FIELDS = [
    b"expires",
    b"date",
    b"last-modified",
    b"age",
    b"cache-control",
    b"content-length",
    b"vary",
    b"etag",
    b"if-none-match",
    b"if-modified-since",
    b"if-range",
    b"range",
    b"location",
    b"surrogate-key",
    b"cache-tag",
    b"pragma",
    b"connection",
]
_VALUES = st.one_of(st.text(max_size=40).map(lambda t: t.encode("utf-8")), st.binary(max_size=40))
_DIGITISH = st.text(alphabet='0123456789²³¹٣߂,-= \t."', max_size=12).map(lambda t: t.encode("utf-8"))


@pytest.mark.parametrize("digit", ["²", "¹", "³", "٣"])
async def test_non_ascii_digits_in_cache_control_are_invalid_values_not_errors(digit: str) -> None:
    raw = digit.encode("utf-8").decode("latin-1")
    for directive in ("max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"):
        mw, _ = make(Origin(headers=[("cache-control", f"{directive}={raw}")]))
        assert (await get(mw)).status == 200
    mw, _ = make(Origin())
    for directive in ("max-age", "max-stale", "min-fresh"):
        assert (await get(mw, headers=[("cache-control", f"{directive}={raw}")])).status == 200
    assert request_directives([(b"cache-control", f"max-age={raw}".encode("latin-1"))]).max_age == 0.0


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(_FIELDS), value=st.one_of(_VALUES, _DIGITISH), other=_VALUES)
def test_no_header_parser_raises_on_arbitrary_input(name: bytes, value: bytes, other: bytes) -> None:
    headers = [(name, value), (b"cache-control", other), (b"cdn-cache-control", value)]
    parse_http_date(value)
    parse_age(headers)
    parse_cache_control([value])
    parse_targeted([value, other])
    content_length(headers)
    request_directives(headers)
    decision = decide_store(
        method="GET",
        status=200,
        headers=headers,
        request_time=T0,
        response_time=T0,
        has_authorization=False,
        rule=None,
        default_swr=0.0,
        default_sie=0.0,
    )
    if decision.store:
        e = build_entry(
            decision,
            status=200,
            headers=headers,
            body=b"0123456789",
            request_time=T0,
            response_time=T0,
            vary=vary_values(decision.vary, headers),
            tags=tuple(response_tags(headers)),
            index="/",
        )
        client_conditional_matches(headers, e)
        update_from_304(e, headers, T0, T0)
    parse_ranges(value, 10)
    if_range_matches(value, other, value)
    render_range(200, headers, b"0123456789", [(b"range", value), (b"if-range", other)], boundary="b")
    invalidation_targets("h", "/", "", headers)
    normalize_query(value.decode("latin-1"))


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='abz*-_.09 ,=;"\\?()1AZ+/\t', max_size=16))
def test_targeted_field_syntax_agrees_with_an_rfc8941_parser(text: str) -> None:
    """A targeted field is valid exactly when http-sf (a reference RFC 8941 parser) accepts it."""
    import http_sf

    value = text.strip(" ").encode("ascii")
    try:
        http_sf.parse(value, tltype="dictionary")
        reference = True
    except Exception:
        reference = False
    try:
        _SFParser(value.decode()).dictionary()
        ours = True
    except _Invalid:
        ours = False
    assert ours == reference
