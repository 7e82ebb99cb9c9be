"""CacheMiddleware on the memory backend, with exact ASGI message sequences and a ManualClock."""

from __future__ import annotations

import logging
from email.utils import formatdate
from typing import Any

import anyio
import pytest

from asgi_resilience import Cache, CacheMiddleware, CacheRule, ConfigurationError, TimeoutMiddleware
from asgi_resilience.testing import ASGIHarness, ManualClock, http_scope
from asgi_resilience.types import Receive, Scope, Send

from .conftest import OFF, T0, Origin, body_messages, get, status_of


def make(origin: Origin, clock: ManualClock | None = None, **kwargs: Any) -> tuple[CacheMiddleware, ManualClock]:
    clock = clock or ManualClock(T0)
    return CacheMiddleware(origin, clock=clock, telemetry=OFF, **kwargs), clock


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


# --- hits, misses, headers ----------------------------------------------------------------------------


async def test_miss_then_hit_with_age_and_cache_status() -> None:
    origin = Origin(chunks=[b"hel", b"lo"])
    mw, clock = make(origin)
    first = await get(mw)
    assert (first.status, first.body, origin.calls) == (200, b"hello", 1)
    # streamed in two chunks without Content-Length: whether it will be stored is not known when the
    # start goes out, so Cache-Status cannot say "stored" (RFC 9211 section 2.6)
    assert status_of(first) == "asgi-resilience; fwd=miss"
    assert first.header("age") is None
    clock.advance(7)
    second = await get(mw)
    assert second.types == ["http.response.start", "http.response.body"]
    assert (second.status, second.body, origin.calls) == (200, b"hello", 1)
    assert second.header("age") == "7"
    assert status_of(second) == "asgi-resilience; hit; ttl=53"
    assert second.header("content-length") == "5"
    assert (second.header("etag") or "").startswith('"')
    clock.advance(54)  # 61 s old: expired, so the stale entry is replaced
    third = await get(mw)
    assert origin.calls == 2 and status_of(third) == "asgi-resilience; fwd=stale"
    clock.advance(1)
    assert status_of(await get(mw)) == "asgi-resilience; hit; ttl=59"  # the replacement was stored


async def test_generated_etag_is_strong_and_stable_across_instances() -> None:
    a, _ = make(Origin())
    b, _ = make(Origin())
    await get(a)
    await get(b)
    etag_a = (await get(a)).header("etag")
    etag_b = (await get(b)).header("etag")
    assert etag_a == etag_b and etag_a is not None and not etag_a.startswith("W/")


async def test_age_counts_the_stored_age_and_date() -> None:
    """RFC 9111 4.2.3: corrected initial age = max(apparent age, Age + response delay)."""
    origin = Origin(headers=[("cache-control", "max-age=100"), ("age", "30")])
    mw, clock = make(origin)
    await get(mw)
    clock.advance(5)
    hit = await get(mw)
    assert hit.header("age") == "35"
    assert status_of(hit) == "asgi-resilience; hit; ttl=65"

    origin2 = Origin(headers=[("cache-control", "max-age=100"), ("date", http_date(T0 - 40))])
    mw2, clock2 = make(origin2)
    await get(mw2)
    clock2.advance(1)
    assert (await get(mw2)).header("age") == "41"


async def test_expires_and_unparseable_expires() -> None:
    origin = Origin(headers=[("date", http_date(T0)), ("expires", http_date(T0 + 30))])
    mw, clock = make(origin)
    await get(mw)
    clock.advance(29)
    assert status_of(await get(mw)).startswith("asgi-resilience; hit")
    clock.advance(2)
    assert status_of(await get(mw)) == "asgi-resilience; fwd=stale; stored"

    bad = Origin(headers=[("expires", "not a date")])
    mw2, _ = make(bad)
    assert status_of(await get(mw2)) == "asgi-resilience; fwd=miss"
    await get(mw2)
    assert bad.calls == 2


async def test_heuristic_freshness_only_with_last_modified() -> None:
    origin = Origin(headers=[("date", http_date(T0)), ("last-modified", http_date(T0 - 1000))])
    mw, clock = make(origin)
    await get(mw)
    clock.advance(99)  # 10 % of 1000 s
    assert status_of(await get(mw)).startswith("asgi-resilience; hit")
    # without any freshness information nothing is stored
    bare = Origin(headers=[])
    mw2, _ = make(bare)
    await get(mw2)
    await get(mw2)
    assert bare.calls == 2


async def test_headers_never_stored_and_tags_stripped() -> None:
    origin = Origin(
        headers=[
            ("cache-control", "max-age=60"),
            ("connection", "x-secret"),
            ("x-secret", "abc"),
            ("keep-alive", "timeout=5"),
            ("surrogate-key", "product-1 products"),
            ("cache-tag", "catalog"),
            ("x-app", "1"),
        ]
    )
    mw, _ = make(origin)
    miss = await get(mw)
    assert miss.header("surrogate-key") is None and miss.header("cache-tag") is None
    assert miss.header("x-secret") == "abc"  # the app's own response goes out as sent
    hit = await get(mw)
    names = {k for k, _ in hit.headers}
    assert "x-secret" not in names and "keep-alive" not in names and "connection" not in names
    assert "surrogate-key" not in names and hit.header("x-app") == "1"
    assert await mw.purge_tags("catalog") == 1
    await get(mw)
    assert origin.calls == 2


async def test_query_is_normalised_and_part_of_the_key() -> None:
    origin = Origin()
    mw, _ = make(origin)
    await get(mw, "/p?b=2&a=1")
    assert status_of(await get(mw, "/p?a=1&b=2")).startswith("asgi-resilience; hit")
    await get(mw, "/p?a=2")
    assert origin.calls == 2
    raw, _ = make(Origin(), normalize_query=False)
    await get(raw, "/p?b=2&a=1")
    assert "fwd=miss" in status_of(await get(raw, "/p?a=1&b=2"))


async def test_host_and_scheme_are_part_of_the_key() -> None:
    origin = Origin()
    mw, _ = make(origin)
    await get(mw, headers=[("host", "a.example")])
    await get(mw, headers=[("host", "b.example")])
    await get(mw, headers=[("host", "a.example")], scheme="https")
    assert origin.calls == 3


# --- what is never stored --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [("cache-control", "no-store, max-age=60")],
        [("cache-control", "private, max-age=60")],
        [("cache-control", "max-age=60"), ("set-cookie", "sid=1")],
        [("cache-control", "max-age=60"), ("vary", "*")],
    ],
    ids=["no-store", "private", "set-cookie", "vary-star"],
)
async def test_responses_never_stored(headers: list[tuple[str, str]]) -> None:
    origin = Origin(headers=headers)
    mw, _ = make(origin)
    first = await get(mw)
    assert status_of(first) == "asgi-resilience; fwd=miss"
    await get(mw)
    assert origin.calls == 2


@pytest.mark.parametrize("status", [206, 302, 201, 304])
async def test_statuses_not_stored(status: int) -> None:
    origin = Origin(status=status, headers=[("cache-control", "max-age=60")] if status != 302 else [])
    mw, _ = make(origin, rules=[CacheRule("/*", ttl=60)])
    await get(mw)
    await get(mw)
    assert origin.calls == 2


async def test_rule_ttl_applies_only_to_heuristically_cacheable_statuses() -> None:
    ok = Origin(status=404, headers=[])
    mw, _ = make(ok, rules=[CacheRule("/*", ttl=60)])
    await get(mw)
    await get(mw)
    assert ok.calls == 1
    err = Origin(status=500, headers=[])
    mw2, _ = make(err, rules=[CacheRule("/*", ttl=60)])
    await get(mw2)
    await get(mw2)
    assert err.calls == 2


async def test_private_with_field_names_strips_them() -> None:
    origin = Origin(headers=[("cache-control", 'max-age=60, private="x-user"'), ("x-user", "alice")])
    mw, _ = make(origin)
    await get(mw)
    hit = await get(mw)
    assert hit.header("x-user") is None and origin.calls == 1


async def test_set_cookie_allowed_by_rule_is_never_replayed() -> None:
    origin = Origin(headers=[("cache-control", "max-age=60"), ("set-cookie", "sid=alice")])
    mw, _ = make(origin, rules=[CacheRule("/public/*", allow_set_cookie=True)])
    first = await get(mw, "/public/a")
    assert first.header("set-cookie") == "sid=alice"
    hit = await get(mw, "/public/a")
    assert origin.calls == 1 and hit.header("set-cookie") is None
    await get(mw, "/other")
    await get(mw, "/other")
    assert origin.calls == 3


# --- credentials --------------------------------------------------------------------------------------


async def test_authorization_requests_are_not_stored_unless_public() -> None:
    origin = Origin()
    mw, _ = make(origin)
    await get(mw, headers=[("authorization", "Bearer alice")])
    bob = await get(mw, headers=[("authorization", "Bearer bob")])
    assert origin.calls == 2 and "fwd=miss" in status_of(bob)
    anon = await get(mw)
    assert origin.calls == 3 and status_of(anon) == "asgi-resilience; fwd=miss; stored"
    # a stored anonymous response is not served to an authenticated request either
    await get(mw, headers=[("authorization", "Bearer carol")])
    assert origin.calls == 4

    public = Origin(headers=[("cache-control", "public, max-age=60")])
    mw2, _ = make(public)
    await get(mw2, headers=[("authorization", "Bearer alice")])
    await get(mw2, headers=[("authorization", "Bearer bob")])
    assert public.calls == 1


async def test_cookie_policy_vary_bypass_ignore() -> None:
    origin = Origin(respond=lambda scope: (200, [("cache-control", "max-age=60")], [_cookie(scope)]))
    mw, _ = make(origin)
    assert (await get(mw, headers=[("cookie", "sid=alice")])).body == b"sid=alice"
    assert (await get(mw, headers=[("cookie", "sid=bob")])).body == b"sid=bob"
    assert (await get(mw, headers=[("cookie", "sid=alice")])).body == b"sid=alice"
    assert origin.calls == 2

    bypass, _ = make(origin, cookie_policy="bypass")
    await get(bypass, headers=[("cookie", "sid=alice")])
    second = await get(bypass, headers=[("cookie", "sid=alice")])
    assert status_of(second) == "asgi-resilience; fwd=bypass" and origin.calls == 4

    ignore, _ = make(origin, cookie_policy="ignore")
    await get(ignore, headers=[("cookie", "a=1")])
    assert (await get(ignore, headers=[("cookie", "b=2")])).body == b"a=1"  # RFC behaviour, opted into


def _cookie(scope: Scope) -> bytes:
    return dict(scope["headers"]).get(b"cookie", b"none")  # type: ignore[no-any-return]


async def test_vary_on_several_headers() -> None:
    def respond(scope: Scope) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        h = dict(scope["headers"])
        body = h.get(b"accept-language", b"-") + b"/" + h.get(b"accept", b"-")
        return 200, [("cache-control", "max-age=60"), ("vary", "Accept-Language, accept")], [body]

    origin = Origin(respond=respond)
    mw, _ = make(origin)
    en_json = [("accept-language", "en"), ("accept", "application/json")]
    fr_json = [("accept-language", "fr"), ("accept", "application/json")]
    assert (await get(mw, headers=en_json)).body == b"en/application/json"
    assert (await get(mw, headers=fr_json)).body == b"fr/application/json"
    hit = await get(mw, headers=[("accept-language", "en"), ("accept", "application/json")])
    assert hit.body == b"en/application/json" and status_of(hit).startswith("asgi-resilience; hit")
    assert (await get(mw, headers=[("accept-language", "en")])).body == b"en/-"
    # whitespace differences are normalised
    spaced = await get(mw, headers=[("accept-language", "en"), ("accept", "application/json ")])
    assert status_of(spaced).startswith("asgi-resilience; hit")
    assert origin.calls == 3
    # purging the URL removes every variant
    assert await mw.purge("/") == 4  # marker + 3 variants
    await get(mw, headers=en_json)
    assert origin.calls == 4


async def test_rule_vary_adds_request_headers_to_the_key() -> None:
    origin = Origin(respond=lambda s: (200, [], [dict(s["headers"]).get(b"x-tenant", b"")]))
    mw, _ = make(origin, rules=[CacheRule("/*", ttl=30, vary=("X-Tenant",))])
    assert (await get(mw, headers=[("x-tenant", "a")])).body == b"a"
    assert (await get(mw, headers=[("x-tenant", "b")])).body == b"b"
    assert (await get(mw, headers=[("x-tenant", "a")])).body == b"a"
    assert origin.calls == 2


# --- request directives -------------------------------------------------------------------------------


async def test_request_no_store_bypasses_and_no_cache_revalidates() -> None:
    origin = Origin(headers=[("cache-control", "max-age=60"), ("etag", '"v1"')])
    mw, _ = make(origin)
    await get(mw)
    bypass = await get(mw, headers=[("cache-control", "no-store")])
    assert status_of(bypass) == "asgi-resilience; fwd=bypass" and origin.calls == 2
    reval = await get(mw, headers=[("cache-control", "no-cache")])
    assert origin.calls == 3 and origin.request_header("if-none-match") == '"v1"'
    assert "fwd=request" in status_of(reval)
    await get(mw, headers=[("cache-control", "max-age=0")])
    await get(mw, headers=[("pragma", "no-cache")])
    assert origin.calls == 5


async def test_request_max_age_min_fresh_max_stale() -> None:
    origin = Origin()
    mw, clock = make(origin)
    await get(mw)
    clock.advance(30)
    await get(mw, headers=[("cache-control", "max-age=10")])
    assert origin.calls == 2
    clock.advance(40)  # entry stored at +30 is 40 s old, 20 s of freshness left
    await get(mw, headers=[("cache-control", "min-fresh=30")])
    assert origin.calls == 3
    clock.advance(70)  # 10 s stale
    stale = await get(mw, headers=[("cache-control", "max-stale=20")])
    assert origin.calls == 3 and status_of(stale).startswith("asgi-resilience; hit; ttl=-10")
    await get(mw, headers=[("cache-control", "max-stale=5")])
    assert origin.calls == 4


async def test_only_if_cached_miss_is_a_504_problem() -> None:
    origin = Origin()
    mw, _ = make(origin)
    h = await get(mw, headers=[("cache-control", "only-if-cached")])
    assert h.status == 504 and origin.calls == 0
    assert h.header("content-type") == "application/problem+json"
    assert h.json()["status"] == 504 and h.json()["type"] == "not-cached"
    head = await get(mw, method="HEAD", headers=[("cache-control", "only-if-cached")])
    assert head.status == 504 and head.body == b""
    await get(mw)
    hit = await get(mw, headers=[("cache-control", "only-if-cached")])
    assert hit.status == 200 and origin.calls == 1


# --- conditional requests ---------------------------------------------------------------------------


async def test_client_conditionals_answered_from_cache() -> None:
    lm = http_date(T0 - 3600)
    origin = Origin(headers=[("cache-control", "max-age=60"), ("etag", 'W/"v1"'), ("last-modified", lm)])
    mw, _ = make(origin)
    await get(mw)
    inm = await get(mw, headers=[("if-none-match", '"x", "v1"')])  # weak comparison
    assert inm.status == 304 and inm.body == b"" and inm.header("etag") == 'W/"v1"'
    assert inm.header("cache-control") == "max-age=60" and inm.header("age") == "0"
    assert inm.header("content-type") is None
    star = await get(mw, headers=[("if-none-match", "*")])
    assert star.status == 304
    other = await get(mw, headers=[("if-none-match", '"v2"')])
    assert other.status == 200 and other.body == b"hello"
    ims = await get(mw, headers=[("if-modified-since", http_date(T0))])
    assert ims.status == 304
    older = await get(mw, headers=[("if-modified-since", http_date(T0 - 7200))])
    assert older.status == 200
    assert origin.calls == 1


async def test_stale_entry_revalidated_with_304_updates_headers() -> None:
    origin = Origin(headers=[("cache-control", "max-age=10"), ("etag", '"v1"'), ("x-version", "1")])
    mw, clock = make(origin)
    await get(mw)
    clock.advance(15)
    origin.status, origin.chunks = 304, ()
    origin.headers = [("cache-control", "max-age=100"), ("etag", '"v1"'), ("x-version", "2")]
    reval = await get(mw, headers=[("if-none-match", '"zzz"')])
    assert origin.request_header("if-none-match") == '"v1"'  # our validator, not the client's
    assert (reval.status, reval.body) == (200, b"hello")
    assert reval.header("x-version") == "2" and reval.header("cache-control") == "max-age=100"
    assert status_of(reval) == "asgi-resilience; hit; fwd=stale; fwd-status=304; ttl=100"
    clock.advance(50)
    hit = await get(mw)
    assert origin.calls == 2 and hit.header("x-version") == "2" and hit.header("age") == "50"


async def test_revalidation_with_last_modified_only_and_a_new_full_response() -> None:
    lm = http_date(T0 - 10)
    origin = Origin(headers=[("cache-control", "max-age=10"), ("last-modified", lm)])
    mw, clock = make(origin)
    await get(mw)
    clock.advance(11)
    origin.chunks = [b"new"]
    fresh = await get(mw)
    assert origin.request_header("if-modified-since") == lm and origin.request_header("if-none-match") is None
    assert fresh.body == b"new" and status_of(fresh) == "asgi-resilience; fwd=stale; stored"
    assert (await get(mw)).body == b"new"


async def test_no_cache_response_is_stored_but_always_revalidated() -> None:
    origin = Origin(headers=[("cache-control", "no-cache"), ("etag", '"a"')])
    mw, _ = make(origin)
    await get(mw)
    origin.status, origin.chunks = 304, ()
    second = await get(mw)
    assert origin.calls == 2 and second.status == 200 and second.body == b"hello"


async def test_head_is_served_from_a_get_entry() -> None:
    origin = Origin(chunks=[b"payload"])
    mw, _ = make(origin)
    await get(mw)
    head = await get(mw, method="HEAD")
    assert head.status == 200 and head.body == b"" and head.header("content-length") == "7"
    assert origin.calls == 1 and status_of(head).startswith("asgi-resilience; hit")
    # a HEAD miss is forwarded as HEAD and stores nothing
    mw2, _ = make(Origin())
    first = await get(mw2, method="HEAD")
    assert origin.calls == 1 and status_of(first) == "asgi-resilience; fwd=miss"


# --- invalidation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_unsafe_methods_invalidate_uri_location_and_content_location(method: str) -> None:
    def respond(scope: Scope) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        if scope["method"] == "GET":
            return 200, [("cache-control", "max-age=60")], [scope["path"].encode()]
        return 201, [("location", "/items/2"), ("content-location", "http://testserver/items/3")], [b""]

    origin = Origin(respond=respond)
    mw, _ = make(origin)
    for path in ("/items", "/items/2", "/items/3", "/items/4"):
        await get(mw, path)
    assert origin.calls == 4
    posted = await get(mw, "/items", method=method)
    assert status_of(posted) == "asgi-resilience; fwd=bypass"
    for path in ("/items", "/items/2", "/items/3", "/items/4"):
        await get(mw, path)
    assert origin.calls == 5 + 3  # /items/4 still cached


async def test_failed_unsafe_method_and_foreign_location_do_not_invalidate() -> None:
    def respond(scope: Scope) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        if scope["method"] == "GET":
            return 200, [("cache-control", "max-age=60")], [b"x"]
        if scope["path"] == "/fail":
            return 500, [], [b""]
        return 200, [("location", "http://elsewhere.example/a"), ("content-location", "no-slash")], [b""]

    origin = Origin(respond=respond)
    mw, _ = make(origin)
    await get(mw, "/fail")
    await get(mw, "/a")
    await get(mw, "/fail", method="POST")
    await get(mw, "/b", method="POST")
    await get(mw, "/fail")
    await get(mw, "/a")
    assert origin.calls == 4


async def test_purge_by_url_tag_and_clear() -> None:
    def respond(scope: Scope) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        return 200, [("cache-control", "max-age=60"), ("cache-tag", f"all,{scope['path'][1:]}")], [b"x"]

    origin = Origin(respond=respond)
    shared = Cache(clock=ManualClock(T0), telemetry=OFF)
    mw = CacheMiddleware(origin, cache=shared, telemetry=OFF)
    for path in ("/a", "/b", "/c?x=1&y=2"):
        await get(mw, path)
    assert await shared.purge("http://testserver/a") == 1
    assert await shared.purge("/c?y=2&x=1") == 1
    assert await mw.purge("/nothing") == 0
    await get(mw, "/a")
    await get(mw, "/b")
    assert origin.calls == 4
    assert await mw.purge_tags("b", "unknown") == 1
    await get(mw, "/b")
    assert origin.calls == 5
    await mw.clear()
    await get(mw, "/a")
    assert origin.calls == 6
    with pytest.raises(ValueError, match="purge"):
        await shared.purge("relative")
    with pytest.raises(ValueError, match="tags"):
        await shared.purge_tags("")
    assert await shared.purge_tags() == 0


async def test_soft_purge_marks_stale_and_still_serves_on_error() -> None:
    origin = Origin(headers=[("cache-control", "max-age=60, stale-if-error=300"), ("surrogate-key", "p")])
    mw, _ = make(origin)
    await get(mw)
    assert await mw.purge_tags("p", soft=True) == 1
    origin.status, origin.chunks = 503, [b"down"]
    stale = await get(mw)
    assert origin.calls == 2 and stale.status == 200 and stale.body == b"hello"
    assert status_of(stale).startswith("asgi-resilience; hit; fwd=stale; fwd-status=503")
    origin.status, origin.chunks = 200, [b"new"]
    assert (await get(mw)).body == b"new"
    assert (await get(mw)).body == b"new" and origin.calls == 3


# --- stale-while-revalidate / stale-if-error -------------------------------------------------------


async def test_stale_while_revalidate_serves_stale_and_refreshes_once() -> None:
    origin = Origin(headers=[("cache-control", "max-age=10, stale-while-revalidate=30")], chunks=[b"v1"])
    mw, clock = make(origin)
    await get(mw)
    clock.advance(15)
    origin.chunks = [b"v2"]
    stale = await get(mw)
    assert stale.body == b"v1" and status_of(stale) == "asgi-resilience; hit; fwd=stale; ttl=-5"
    assert origin.calls == 2  # the refresh ran after the stale response went out
    fresh = await get(mw)
    assert fresh.body == b"v2" and status_of(fresh).startswith("asgi-resilience; hit; ttl=")
    clock.advance(50)  # beyond the SWR window: a plain miss
    assert "fwd=stale" in status_of(await get(mw)) and origin.calls == 3


async def test_stale_while_revalidate_one_refresh_per_key_under_concurrency() -> None:
    origin = Origin(headers=[("cache-control", "max-age=10, stale-while-revalidate=60")])
    mw, clock = make(origin)
    await get(mw)
    clock.advance(20)
    origin.delay = 0.05
    results: list[ASGIHarness] = []

    async def one() -> None:
        results.append(await get(mw))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    assert origin.calls == 2
    assert all(r.body == b"hello" for r in results)


async def test_stale_while_revalidate_from_rule_grace_and_default() -> None:
    origin = Origin(headers=[("cache-control", "max-age=10")])
    mw, clock = make(origin, stale_while_revalidate=30)
    await get(mw)
    clock.advance(20)
    assert "fwd=stale" in status_of(await get(mw)) and origin.calls == 2
    ruled = Origin(headers=[])
    mw2, clock2 = make(ruled, rules=[CacheRule("/*", ttl=10, stale_while_revalidate=30)])
    await get(mw2)
    clock2.advance(20)
    assert status_of(await get(mw2)).startswith("asgi-resilience; hit; fwd=stale")


async def test_must_revalidate_disables_stale_serving() -> None:
    origin = Origin(headers=[("cache-control", "max-age=10, must-revalidate, stale-if-error=60")])
    mw, clock = make(origin, stale_while_revalidate=60)
    await get(mw)
    clock.advance(20)
    origin.status = 500
    h = await get(mw)
    assert h.status == 500


async def test_stale_if_error_on_5xx_exception_and_missing_response() -> None:
    origin = Origin(headers=[("cache-control", "max-age=10, stale-if-error=60")])
    mw, clock = make(origin)
    await get(mw)
    clock.advance(20)
    origin.status = 502
    h = await get(mw)
    assert (h.status, h.body) == (200, b"hello")
    assert status_of(h) == "asgi-resilience; hit; fwd=stale; fwd-status=502; ttl=-10"
    origin.raise_exc = RuntimeError("boom")
    h2 = await get(mw)
    assert (h2.status, h2.body) == (200, b"hello") and "detail=error" in status_of(h2)

    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    mw.app = silent
    h3 = await get(mw)
    assert h3.status == 200 and "detail=no-response" in status_of(h3)
    clock.advance(60)  # beyond the window: the error goes through
    mw.app = origin
    with pytest.raises(RuntimeError):
        await get(mw)


async def test_stale_if_error_when_timeout_middleware_answers_504() -> None:
    origin = Origin(headers=[("cache-control", "max-age=1")])
    slow = TimeoutMiddleware(origin, timeout=0.05, telemetry=OFF)
    mw, clock = make(origin, stale_if_error=120)
    mw.app = slow
    await get(mw)
    clock.advance(5)
    origin.delay = 1.0
    h = await get(mw)
    assert (h.status, h.body) == (200, b"hello")
    assert status_of(h) == "asgi-resilience; hit; fwd=stale; fwd-status=504; ttl=-4"


async def test_5xx_without_stale_entry_passes_through() -> None:
    origin = Origin(status=503, headers=[("cache-control", "max-age=60")])
    mw, _ = make(origin, stale_if_error=60)
    h = await get(mw)
    assert h.status == 503


# --- streaming and sizes ------------------------------------------------------------------------------


async def test_streaming_passes_through_unbuffered_and_over_max_body_size_is_not_stored() -> None:
    chunks = [b"a" * 10] * 5
    origin = Origin(chunks=chunks)
    mw, _ = make(origin, max_body_size=30)
    order: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def logging_send(message: Any) -> None:
            order.append(f"app:{message['type']}")
            await send(message)

        await origin(scope, receive, logging_send)

    mw.app = app
    h = ASGIHarness()

    async def recording_send(message: Any) -> None:
        order.append(f"client:{message['type']}")
        await h.send(message)

    await mw(http_scope(), h.receive, recording_send)
    # the start waits for the first chunk (a body sent whole would be answered as stored), then each
    # chunk reaches the client before the app produces the next one
    assert order == [
        "app:http.response.start",
        "app:http.response.body",
        "client:http.response.start",
        "client:http.response.body",
        *["app:http.response.body", "client:http.response.body"] * 4,
    ]
    assert [m["body"] for m in body_messages(h)] == chunks
    assert status_of(h) == "asgi-resilience; fwd=miss"  # unknown length: "stored" would be a promise
    await get(mw)
    assert origin.calls == 2  # nothing stored


async def test_content_length_over_max_body_size_is_announced_not_stored() -> None:
    origin = Origin(headers=[("cache-control", "max-age=60"), ("content-length", "100")], chunks=[b"x" * 100])
    mw, _ = make(origin, max_body_size=10)
    assert status_of(await get(mw)) == "asgi-resilience; fwd=miss"
    await get(mw)
    assert origin.calls == 2


async def test_client_disconnect_mid_stream_stores_nothing() -> None:
    origin = Origin(chunks=[b"a", b"b", b"c"])
    mw, _ = make(origin)
    h = ASGIHarness(disconnect_after=1)
    with pytest.raises(OSError):
        await h.run(mw, http_scope())
    await get(mw)
    assert origin.calls == 2


async def test_app_raising_after_start_stores_nothing_and_reraises() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"cache-control", b"max-age=60")]})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        raise RuntimeError("mid-stream")

    mw, _ = make(Origin())
    mw.app = broken
    with pytest.raises(RuntimeError):
        await get(mw)
    assert mw.cache.memory is not None and len(mw.cache.memory) == 0


async def test_pathsend_is_forwarded_and_not_stored() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"cache-control", b"max-age=60")]})
        await send({"type": "http.response.pathsend", "path": "/tmp/x"})

    mw, _ = make(Origin())
    mw.app = app
    h = await get(mw)
    assert h.types == ["http.response.start", "http.response.pathsend"]
    assert mw.cache.memory is not None and len(mw.cache.memory) == 0


# --- stampede -----------------------------------------------------------------------------------------


async def test_hundred_concurrent_misses_make_one_app_call() -> None:
    origin = Origin(delay=0.05)
    mw, _ = make(origin)
    results: list[ASGIHarness] = []

    async def one() -> None:
        results.append(await get(mw))

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(one)
    assert origin.calls == 1
    assert len(results) == 100 and all(r.status == 200 and r.body == b"hello" for r in results)
    collapsed = [r for r in results if "collapsed" in status_of(r)]
    assert len(collapsed) == 99


async def test_collapsed_waiters_call_the_app_when_the_result_is_not_shareable() -> None:
    origin = Origin(delay=0.02, headers=[("cache-control", "private")])
    mw, _ = make(origin)
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(get, mw)
    assert origin.calls == 5


async def test_lock_timeout_falls_back_to_stale_or_the_app() -> None:
    origin = Origin(headers=[("cache-control", "max-age=10, stale-if-error=60")])
    mw, clock = make(origin, lock_timeout=0.02)
    await get(mw)
    clock.advance(20)
    origin.delay = 0.2
    results: list[ASGIHarness] = []

    async def one() -> None:
        results.append(await get(mw))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        await anyio.sleep(0.01)
        tg.start_soon(one)
    assert any("detail=lock-timeout" in status_of(r) for r in results)
    cold = Origin(delay=0.1)
    mw2, _ = make(cold, lock_timeout=0.01)
    async with anyio.create_task_group() as tg:
        tg.start_soon(get, mw2)
        await anyio.sleep(0.005)
        tg.start_soon(get, mw2)
    assert cold.calls == 2


# --- decorator, rules, frameworks --------------------------------------------------------------------


async def test_decorator_and_rules_with_starlette() -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from asgi_resilience import cache

    calls = {"n": 0}

    @cache(ttl=60, tags=["products"])
    async def product(request: Any) -> PlainTextResponse:
        calls["n"] += 1
        return PlainTextResponse(f"product {calls['n']}", headers={"Surrogate-Key": "p1"})

    async def ruled(request: Any) -> PlainTextResponse:
        calls["n"] += 1
        return PlainTextResponse("ruled")

    async def never(request: Any) -> PlainTextResponse:
        calls["n"] += 1
        return PlainTextResponse("never")

    app = Starlette(routes=[Route("/product", product), Route("/ruled", ruled), Route("/never/x", never)])
    app.add_middleware(
        CacheMiddleware, rules=[CacheRule("/ruled", ttl=5), CacheRule("/never/*", bypass=True)], telemetry=OFF
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        r1 = await client.get("/product")
        r2 = await client.get("/product")
        assert r1.text == r2.text == "product 1" and "surrogate-key" not in r2.headers
        assert r2.headers["cache-status"].startswith("asgi-resilience; hit")
        await client.get("/ruled")
        await client.get("/ruled")
        assert calls["n"] == 2
        await client.get("/never/x")
        r = await client.get("/never/x")
        assert r.headers["cache-status"] == "asgi-resilience; fwd=bypass" and calls["n"] == 4
        mw = app.middleware_stack
        while not isinstance(mw, CacheMiddleware):
            mw = mw.app  # type: ignore[union-attr]
        assert await mw.purge_tags("products") == 1
        assert (await client.get("/product")).text == "product 5"


async def test_non_http_scopes_pass_through_and_lifespan_closes_owned_cache() -> None:
    seen: list[str] = []
    closed_at_startup: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    closed_at_startup.append(mw.cache._closed)
                if message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    mw = CacheMiddleware(app, telemetry=OFF)
    await mw(http_scope(type="websocket"), _never, _drop)
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> Any:
        return messages.pop(0)

    await mw({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, _drop)
    assert seen == ["websocket", "lifespan"] and mw.cache._closed
    messages.extend([{"type": "lifespan.startup"}])

    async def startup_only() -> Any:
        if messages:
            return messages.pop(0)
        return {"type": "lifespan.shutdown"}

    await mw({"type": "lifespan", "asgi": {"version": "3.0"}}, startup_only, _drop)
    assert mw.cache._closed and closed_at_startup == [False, False]  # usable again after a second startup


async def _never() -> Any:
    await anyio.sleep_forever()


async def _drop(message: Any) -> None:
    return None


async def test_options_requests_bypass() -> None:
    origin = Origin()
    mw, _ = make(origin)
    h = await get(mw, method="OPTIONS")
    assert status_of(h) == "asgi-resilience; fwd=bypass"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_body_size": -1}, "max_body_size"),
        ({"stale_while_revalidate": -1}, "stale_while_revalidate"),
        ({"lock_timeout": float("nan")}, "lock_timeout"),
        ({"cookie_policy": "maybe"}, "cookie_policy"),
        ({"heuristic_fraction": 2}, "heuristic_fraction"),
        ({"rules": ["/x"]}, "CacheRule"),
        ({"cache": object()}, "Cache instance"),
        ({"cache": Cache(telemetry=OFF), "l1_entries": 5}, "not both"),
        ({"backend": "ftp://x"}, "backend"),
        ({"backend": 42}, "backend"),
        ({"l1_entries": -1}, "l1_entries"),
        ({"backend_timeout": 0}, "backend_timeout"),
    ],
)
def test_configuration_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        CacheMiddleware(Origin(), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ttl": -1}, "ttl"),
        ({"tags": ["a b"]}, "tags"),
        ({"path": "products"}, "start with"),
        ({"path": 3}, "string"),
    ],
)
def test_rule_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        CacheRule(**kwargs)


async def test_metrics_and_snapshot() -> None:
    from asgi_resilience import Telemetry

    tel = Telemetry()
    origin = Origin()
    mw = CacheMiddleware(origin, clock=ManualClock(T0), telemetry=tel)
    await get(mw)
    await get(mw)
    await get(mw, "/elsewhere", method="POST")
    totals = {dict(k)["result"]: v for k, v in tel.instrument("asgi_resilience.cache.requests").totals.items()}
    assert totals == {"miss": 1, "stored": 1, "hit": 1, "bypass": 1}
    snap = tel.snapshot()["components"]["cache"]
    assert snap["backend"] == "memory" and snap["memory_entries"] == 1


async def test_aiocache_backend_instance(caplog: pytest.LogCaptureFixture) -> None:
    from aiocache import SimpleMemoryCache

    backend = SimpleMemoryCache()
    origin = Origin(headers=[("cache-control", "max-age=60"), ("surrogate-key", "t")])
    mw, _ = make(origin, backend=backend)
    await get(mw)
    assert status_of(await get(mw)).startswith("asgi-resilience; hit")
    assert await mw.purge_tags("t", soft=True) == 1
    assert "fwd=stale" in status_of(await get(mw))
    assert await mw.purge("/") == 1
    await get(mw)
    assert origin.calls == 3
    await mw.purge_tags("t")
    await mw.clear()
    # a foreign value under our key is a miss, logged and counted, never a 500
    key = next(iter(mw.cache.store._idx.meta), None)  # type: ignore[attr-defined]
    assert key is None
    await backend.set("asgi-resilience:cache:e:http://testserver/", b"garbage")
    with caplog.at_level(logging.WARNING, logger="asgi_resilience.cache"):
        h = await get(mw)
    assert h.status == 200 and "failed during get" in caplog.text
    await mw.cache.aclose()


async def test_background_refresh_failure_keeps_the_stale_entry(caplog: pytest.LogCaptureFixture) -> None:
    origin = Origin(headers=[("cache-control", "max-age=10, stale-while-revalidate=60")])
    mw, clock = make(origin)
    await get(mw)
    clock.advance(15)
    origin.raise_exc = RuntimeError("refresh failed")
    with caplog.at_level(logging.WARNING, logger="asgi_resilience.cache"):
        stale = await get(mw, headers=[("if-none-match", '"client"')])
    assert stale.status == 200 and "background revalidation" in caplog.text
    assert origin.request_header("if-none-match") is None  # the client's conditional is not forwarded
    origin.raise_exc = None
    await get(mw)  # still stale: served, and this refresh succeeds
    assert status_of(await get(mw)).startswith("asgi-resilience; hit; ttl=")


async def test_background_refresh_gives_the_app_a_disconnect_after_the_response() -> None:
    received: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        received.append((await receive())["type"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"cache-control", b"max-age=10")]})
        await send({"type": "http.response.body", "body": b"x"})
        received.append((await receive())["type"])

    mw, clock = make(Origin(), stale_while_revalidate=60)
    mw.app = app
    await get(mw)
    clock.advance(20)
    await get(mw)
    assert received[-2:] == ["http.request", "http.disconnect"]


async def test_host_falls_back_to_the_server_address() -> None:
    origin = Origin()
    mw, _ = make(origin)
    scope = http_scope()
    scope["headers"] = []
    await ASGIHarness().run(mw, scope)
    assert mw.cache.peek("http://testserver:80/") is not None
    scope = http_scope(server=None)
    scope["headers"] = []
    await ASGIHarness().run(mw, scope)
    assert mw.cache.peek("http:///") is not None


def test_memory_backend_runs_on_trio() -> None:
    async def main() -> None:
        origin = Origin(delay=0.01)
        mw, _ = make(origin)
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(get, mw)
        assert origin.calls == 1
        assert status_of(await get(mw)).startswith("asgi-resilience; hit")

    anyio.run(main, backend="trio")


async def test_head_request_on_a_stale_entry_refreshes_with_a_get() -> None:
    origin = Origin(headers=[("cache-control", "max-age=10, stale-while-revalidate=60")], chunks=[b"v1"])
    mw, clock = make(origin)
    await get(mw)
    clock.advance(20)
    origin.chunks = [b"v2"]
    head = await get(mw, method="HEAD")
    assert head.body == b"" and "fwd=stale" in status_of(head)
    assert origin.seen[-1]["method"] == "GET"
    fresh = await get(mw)
    assert fresh.body == b"v2" and status_of(fresh).startswith("asgi-resilience; hit; ttl=")


async def test_store_write_happens_after_the_final_body_was_sent() -> None:
    origin = Origin(chunks=[b"a", b"b"])
    mw, _ = make(origin)
    h = ASGIHarness()
    seen_at_write: list[list[str]] = []
    real_set = mw.cache.set

    async def spying_set(*args: Any, **kwargs: Any) -> None:
        seen_at_write.append(list(h.types))
        await real_set(*args, **kwargs)

    mw.cache.set = spying_set  # type: ignore[method-assign]
    await h.run(mw, http_scope())
    assert h.complete
    assert seen_at_write == [["http.response.start", "http.response.body", "http.response.body"]]


async def test_decorator_on_fastapi_included_router() -> None:
    import httpx
    from fastapi import APIRouter, FastAPI

    from asgi_resilience import cache

    calls = {"n": 0}
    router = APIRouter(prefix="/api")

    @router.get("/items/{item_id}")
    @cache(ttl=30, tags="items")
    async def item(item_id: int) -> dict[str, int]:
        calls["n"] += 1
        return {"id": item_id, "call": calls["n"]}

    app = FastAPI()
    app.include_router(router)
    app.add_middleware(CacheMiddleware, telemetry=OFF)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        first = (await client.get("/api/items/1")).json()
        second = await client.get("/api/items/1")
        assert second.json() == first == {"id": 1, "call": 1}
        assert second.headers["cache-status"].startswith("asgi-resilience; hit")
        assert (await client.get("/api/items/2")).json() == {"id": 2, "call": 2}


async def test_debug_log_names_the_rule_that_refused_storing(caplog: pytest.LogCaptureFixture) -> None:
    mw, _ = make(Origin(headers=[("cache-control", "private, max-age=60")]))
    with caplog.at_level(logging.DEBUG, logger="asgi_resilience.cache"):
        await get(mw, "/me")
    assert "response to /me not stored: private" in caplog.text
