"""The sans-io RFC 9111 core and the msgpack codec, without ASGI."""

from __future__ import annotations

import math
from email.utils import formatdate
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_resilience.caching._policy import (
    CacheRule,
    Entry,
    RequestDirectives,
    VaryMarker,
    build_entry,
    cache_status,
    client_conditional_matches,
    decide_store,
    freshness,
    initial_age,
    invalidation_targets,
    normalize_query,
    parse_cache_control,
    parse_http_date,
    primary_key,
    quick_refusal,
    request_directives,
    response_tags,
    revalidation_headers,
    update_from_304,
    usable_fresh,
    vary_values,
)
from asgi_resilience.caching._spec import Forward, RequestFacts, StorePolicy, on_response
from asgi_resilience.caching._storage import decode, encode

T = 1_700_000_000.0


def h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in pairs]


def store(*pairs: tuple[str, str], status: int = 200, auth: bool = False, rule: CacheRule | None = None, **kw: Any):  # type: ignore[no-untyped-def]
    return decide_store(
        method=kw.pop("method", "GET"),
        status=status,
        headers=h(*pairs),
        request_time=T,
        response_time=T,
        has_authorization=auth,
        rule=rule,
        default_swr=kw.pop("swr", 0.0),
        default_sie=kw.pop("sie", 0.0),
    )


def test_parse_cache_control_quotes_duplicates_and_garbage() -> None:
    cc = parse_cache_control([b'Max-Age=60, no-cache="set-cookie, x-a", private', b"max-age=5, =x, bad key, s-maxage"])
    assert cc == {"max-age": "60", "no-cache": "set-cookie, x-a", "private": None, "s-maxage": None}


def test_parse_http_date() -> None:
    assert parse_http_date(formatdate(T, usegmt=True).encode()) == T
    assert parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT") == 784111777.0
    for bad in (b"garbage", b"", b"0", b"Sun, 06 Nov 1994 08:49:37", None):
        assert parse_http_date(bad) is None


def test_request_directives() -> None:
    d = request_directives(h(("cache-control", "max-stale, min-fresh=5, only-if-cached")))
    assert d.max_stale == math.inf and d.min_fresh == 5 and d.only_if_cached and not d.no_cache
    assert request_directives(h(("cache-control", "max-age=0"))).no_cache
    assert request_directives(h(("cache-control", "max-age=abc"))).no_cache  # invalid counts as 0
    assert request_directives(h(("cache-control", "max-stale=7"))).max_stale == 7
    assert request_directives(h(("pragma", "no-cache"))).no_cache
    assert not request_directives(h(("pragma", "no-cache"), ("cache-control", "max-age=5"))).no_cache
    assert request_directives([]) == request_directives(h(("pragma", "x")))


@pytest.mark.parametrize(
    ("pairs", "kw", "reason"),
    [
        ((("cache-control", "max-age=60"),), {"method": "HEAD"}, "method"),
        ((("cache-control", "max-age=60"),), {"status": 206}, "status"),
        ((("cache-control", "max-age=60"),), {"status": 101}, "status"),
        ((("cache-control", "max-age=60"),), {"status": 418}, "status"),
        ((("cache-control", "no-store"),), {}, "no-store"),
        ((("cache-control", "private"),), {}, "private"),
        ((("cache-control", "max-age=60"),), {"auth": True}, "authorization"),
        ((("cache-control", "max-age=60"), ("set-cookie", "a=1")), {}, "set-cookie"),
        ((("cache-control", "max-age=60"), ("vary", "accept, *")), {}, "vary-star"),
        ((), {}, "not-fresh"),
        ((("expires", "0"),), {}, "not-fresh"),
        ((("cache-control", "no-cache"),), {}, "not-fresh"),  # no validator to revalidate with
    ],
)
def test_refusals_name_the_rule(pairs: Any, kw: dict[str, Any], reason: str) -> None:
    d = store(*pairs, **kw)
    assert not d.store and d.reason == reason


def test_freshness_precedence() -> None:
    date = formatdate(T, usegmt=True)
    assert store(("cache-control", "max-age=10, s-maxage=20")).lifetime == 20
    assert store(("cache-control", "max-age=10"), ("expires", formatdate(T + 99, usegmt=True))).lifetime == 10
    assert store(("date", date), ("expires", formatdate(T + 99, usegmt=True))).lifetime == 99
    assert store(("expires", formatdate(T + 50, usegmt=True))).lifetime == 50  # no Date: response time
    assert store(rule=CacheRule(ttl=30)).lifetime == 30
    assert store(("date", date), ("last-modified", formatdate(T - 500, usegmt=True))).lifetime == 50
    # heuristics only for heuristically cacheable statuses, or public
    lm = ("last-modified", formatdate(T - 500, usegmt=True))
    assert not store(lm, status=302).store
    assert store(lm, ("cache-control", "public"), status=302).lifetime == 50
    assert store(("cache-control", "max-age=99999999999")).lifetime == 10 * 365 * 86400


def test_authorization_allowed_by_public_s_maxage_must_revalidate() -> None:
    for cc in ("public, max-age=5", "s-maxage=5", "max-age=5, must-revalidate"):
        d = store(("cache-control", cc), auth=True)
        assert d.store and d.shared_auth


def test_stale_directives_rules_and_defaults() -> None:
    d = store(("cache-control", "max-age=5, stale-while-revalidate=10, stale-if-error=20"))
    assert (d.swr, d.sie, d.must_revalidate) == (10, 20, False)
    d = store(("cache-control", "max-age=5"), swr=3, sie=4)
    assert (d.swr, d.sie) == (3, 4)
    d = store(("cache-control", "max-age=5"), swr=3, rule=CacheRule(stale_while_revalidate=7, stale_if_error=8))
    assert (d.swr, d.sie) == (7, 8)
    d = store(("cache-control", "max-age=5, must-revalidate, stale-if-error=9"))
    assert (d.swr, d.sie, d.must_revalidate) == (0, 0, True)
    d = store(("cache-control", "s-maxage=5"), swr=30)
    assert d.must_revalidate and d.swr == 0  # s-maxage implies proxy-revalidate
    d = store(("cache-control", "s-maxage=5, stale-while-revalidate=30"))
    assert not d.must_revalidate and d.swr == 30


def test_vary_and_connection_fields() -> None:
    d = store(("cache-control", "max-age=5"), ("vary", "Accept, accept-language"), ("connection", "x-hop, close"))
    assert d.vary == (b"accept", b"accept-language")
    assert b"x-hop" in d.strip
    d = store(("cache-control", "max-age=5"), ("vary", "accept"), rule=CacheRule(vary=("X-Tenant", "accept")))
    assert d.vary == (b"accept", b"x-tenant")
    values = vary_values((b"accept", b"x-tenant"), h(("accept", "a,  b"), ("accept", "c")))
    assert values == vary_values((b"accept", b"x-tenant"), h(("accept", "a,b,c")))
    assert values != vary_values((b"accept", b"x-tenant"), h(("accept", "a,b,c"), ("x-tenant", "")))
    secret = vary_values((b"authorization",), h(("authorization", "Bearer secret-token")))
    assert b"secret" not in secret[0][1] and len(secret[0][1]) == 12


def test_age_rfc9111_4_2_3() -> None:
    date = formatdate(T - 30, usegmt=True).encode()
    # apparent age 30 from Date; Age 10 + response delay 2 = 12 -> 30
    assert initial_age([(b"date", date), (b"age", b"10")], T - 2, T) == 30
    # Age larger than the apparent age wins
    assert initial_age([(b"date", date), (b"age", b"100")], T - 2, T) == 102
    # a Date in the future never makes the age negative; an invalid Age is ignored
    assert initial_age([(b"date", formatdate(T + 60, usegmt=True).encode()), (b"age", b"x")], T, T) == 0


def entry(**kw: Any) -> Entry:
    decision = store(("cache-control", "max-age=60"), *kw.pop("extra", ()))
    return build_entry(
        decision,
        status=kw.pop("status", 200),
        headers=h(("cache-control", "max-age=60"), *kw.pop("headers", ())),
        body=kw.pop("body", b"body"),
        request_time=T,
        response_time=T,
        vary=(),
        tags=("a",),
        index="/",
    )


def test_build_entry_strips_fields_and_adds_a_strong_etag() -> None:
    e = entry(headers=(("keep-alive", "5"), ("set-cookie", "x"), ("age", "3"), ("x-ok", "1")))
    names = [k for k, _ in e.headers]
    assert b"keep-alive" not in names and b"set-cookie" not in names and b"age" not in names
    assert e.etag_generated and e.etag == entry().etag and e.etag != entry(body=b"other").etag
    own = entry(headers=(("etag", '"mine"'),))
    assert own.etag == b'"mine"' and not own.etag_generated


def test_freshness_usable_and_conditionals() -> None:
    e = entry(headers=(("last-modified", formatdate(T - 100, usegmt=True)),))
    f = freshness(e, T + 10)
    assert (f.age, f.ttl, f.fresh) == (10, 50, True)
    assert usable_fresh(f, request_directives([]))
    assert not usable_fresh(f, request_directives(h(("cache-control", "min-fresh=51"))))
    stale = freshness(e, T + 70)
    assert not usable_fresh(stale, request_directives([]))
    assert usable_fresh(stale, request_directives(h(("cache-control", "max-stale"))))
    soft = freshness(Entry(**{**_fields(e), "invalidated": True}), T)
    assert not soft.fresh
    assert client_conditional_matches(h(("if-none-match", "W/" + e.etag.decode())), e)  # type: ignore[union-attr]
    assert client_conditional_matches(h(("if-modified-since", formatdate(T - 50, usegmt=True))), e)
    assert not client_conditional_matches(h(("if-modified-since", formatdate(T - 150, usegmt=True))), e)
    assert not client_conditional_matches(h(("if-modified-since", "garbage")), e)
    assert not client_conditional_matches([], e)
    assert not client_conditional_matches(h(("if-none-match", "*")), entry(status=404))


def _fields(e: Entry) -> dict[str, Any]:
    return {name: getattr(e, name) for name in Entry.__dataclass_fields__}


def test_revalidation_headers_and_update_from_304() -> None:
    e = entry(headers=(("etag", '"v1"'), ("x-v", "1"), ("content-type", "text/plain")))
    headers, validated = revalidation_headers(h(("if-none-match", '"client"'), ("accept", "x")), e)
    assert validated and (b"if-none-match", b'"v1"') in headers and (b"if-none-match", b'"client"') not in headers
    _, validated = revalidation_headers([], entry())  # only a generated ETag: nothing to send
    assert not validated
    updated = update_from_304(
        e, h(("cache-control", "max-age=120"), ("x-v", "2"), ("content-type", "evil"), ("age", "5")), T + 100, T + 100
    )
    assert updated.lifetime == 120 and updated.response_time == T + 100 and updated.initial_age == 5
    assert (b"x-v", b"2") in updated.headers and (b"content-type", b"text/plain") in updated.headers
    assert updated.body == e.body
    gone = update_from_304(e, h(("cache-control", "no-store")), T, T)
    assert gone.lifetime == 0


def test_invalidation_targets() -> None:
    targets = invalidation_targets(
        "api.example",
        "/items",
        "",
        h(("location", "/items/2?b=1&a=2"), ("content-location", "https://API.example/items/3")),
    )
    assert targets == ["/items", "/items/2?a=2&b=1", "/items/3"]
    assert invalidation_targets("a", "/x", "q=1", h(("location", "http://other/x"), ("content-location", "x"))) == [
        "/x?q=1"
    ]
    assert invalidation_targets("a", "/x", "", h(("location", "http://[::1"))) == ["/x"]


def test_keys_queries_tags_and_cache_status() -> None:
    # sorted by name only, stably: repeated names keep their order (the app may read the last one)
    assert normalize_query("b=2&a=1&a=0") == "a=1&a=0&b=2" and normalize_query("") == ""
    assert primary_key("http", "Example.COM", "/p", "a=1") == "http://example.com/p?a=1"
    with_cookie = primary_key("http", "h", "/", "", cookie=b"sid=secret")
    assert "secret" not in with_cookie and with_cookie != primary_key("http", "h", "/", "", cookie=b"sid=other")
    assert response_tags(h(("surrogate-key", "a  b"), ("cache-tag", "c, d,"))) == ["a", "b", "c", "d"]
    assert cache_status(hit=True, ttl=-3.5) == b"asgi-resilience; hit; ttl=-4"
    assert cache_status(fwd="miss", stored=True, collapsed=True, detail="x") == (
        b"asgi-resilience; fwd=miss; stored; collapsed; detail=x"
    )


def test_rule_matching() -> None:
    rule = CacheRule("/products/*")
    assert rule.matches("/products/1") and rule.matches("/products/1/reviews") and not rule.matches("/product")
    assert CacheRule("*").matches("/anything") and CacheRule("/exact").matches("/exact")
    assert CacheRule(tags="one").tags == ("one",) and CacheRule(vary="X-A").vary == ("x-a",)
    with pytest.raises(ValueError, match="stale_if_error"):
        CacheRule(stale_if_error=math.inf)


def test_codec_round_trip_and_garbage() -> None:
    e = entry(headers=(("etag", '"v"'),))
    assert decode(encode(e)) == e
    marker = VaryMarker(names=(b"accept",), nonce="ab")
    assert decode(encode(marker)) == marker
    for junk in (b"", b"\xc1", msgpack.packb([9, 1]), msgpack.packb([2, ["x"], 3]), msgpack.packb({"a": 1})):
        with pytest.raises(ValueError):
            decode(junk)


@given(st.binary(max_size=64))
def test_decode_never_raises_anything_but_value_error(blob: bytes) -> None:
    try:
        decode(blob)
    except ValueError:
        pass


@pytest.mark.parametrize(
    ("fields", "quick"),
    [
        ((("Cache-Control", "no-store"),), "no-store"),
        ((("cache-control", "Public, NO-STORE, max-age=60"),), "no-store"),
        ((("cache-control", "no-store=x"),), "no-store"),
        ((("cache-control", "private"),), "private"),
        ((("cache-control", "max-age=60"), ("cache-control", "private, no-store")), "no-store"),
        ((("cache-control", "private=x-a"),), None),  # only the named field is withheld
        ((("cache-control", "private=x-a, private"),), None),  # the first private counts
        ((("cache-control", 'private="x-a"'),), None),  # quoted: parsed in full
        ((("cache-control", 'community="a, no-store, b"'),), None),  # not a directive of ours
        ((("cache-control", "no-store"), ("CDN-Cache-Control", "max-age=60")), None),  # the targeted field decides
        ((("cache-control", "max-age=60"),), None),
        ((("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "max-age=60")), "event-stream"),
        ((("content-type", "application/json"), ("content-type", "text/event-stream")), None),  # the first counts
        ((), None),
    ],
)
def test_quick_refusal_agrees_with_the_full_decision(fields: tuple[tuple[str, str], ...], quick: str | None) -> None:
    """The one-pass check on the response path refuses exactly what decide_store refuses, or defers to it."""
    headers = h(*fields)
    assert quick_refusal(headers) == quick
    if quick not in (None, "event-stream"):
        assert store(*fields).reason == quick
        assert store(*fields, status=206).reason == "status"  # status is decided first, as before
    for status in (200, 206, 404, 500):
        step = on_response(
            RequestFacts("GET", RequestDirectives()),
            status,
            [(k.lower(), v) for k, v in headers],
            request_time=T,
            response_time=T,
            rule=None,
            policy=StorePolicy(),
        )
        if quick == "event-stream":
            assert step == Forward("event-stream", True)
        elif isinstance(step, Forward):
            decision = store(*fields, status=status)
            assert not decision.store and step.reason == decision.reason
