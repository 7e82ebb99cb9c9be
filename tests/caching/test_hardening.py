"""What hostile clients found in the cache, each pinned by a test that failed before the fix.

Hit-for-pass only from eligible requests, collapsed waiters released once the entry exists,
query normalisation that keeps repeated names in order, invalidation per host (RFC 9111 section
4.4), ``Cache-Status: stored`` only when it is true (RFC 9211 section 2.6); plus the generated
``ETag`` on the first response and negative caching by choice (``statuses=``).
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from asgi_resilience import CacheMiddleware, CacheRule, ConfigurationError
from asgi_resilience.testing import ASGIHarness, ManualClock, http_scope
from asgi_resilience.types import Message, Scope

from .conftest import OFF, T0, Origin, get, status_of


def make(origin: Any, **kwargs: Any) -> CacheMiddleware:
    return CacheMiddleware(origin, clock=ManualClock(T0), telemetry=OFF, **kwargs)


async def crowd(mw: CacheMiddleware, anonymous: int, authorized: int = 0) -> list[ASGIHarness]:
    results: list[ASGIHarness] = []

    async def one(headers: list[tuple[str, str]]) -> None:
        results.append(await get(mw, headers=headers))

    async with anyio.create_task_group() as tg:
        for i in range(authorized):
            tg.start_soon(one, [("authorization", f"Bearer bogus-{i}")])
        for _ in range(anonymous):
            tg.start_soon(one, [])
    return results


# --- hit-for-pass only from eligible requests -----------------------------------------------------------


async def test_authorization_requests_never_make_a_url_hit_for_pass() -> None:
    """Varnish passes Authorization requests before lookup: they never create hit-for-pass objects."""
    origin = Origin(delay=0.02)
    mw = make(origin)
    await get(mw, headers=[("authorization", "Bearer bogus")])  # cold URL, unstorable answer
    assert mw._passing == {}
    results = await crowd(mw, anonymous=100, authorized=4)
    assert all(h.status == 200 for h in results)
    assert origin.calls == 1 + 4 + 1  # the first request, the 4 authorized ones, one for the 100 anonymous


async def test_a_fresh_entry_is_never_skipped_after_an_authorization_request() -> None:
    origin = Origin()
    mw = make(origin)
    await get(mw)
    for i in range(4):
        await get(mw, headers=[("authorization", f"Bearer {i}")])
    hits = [await get(mw) for _ in range(10)]
    assert all(status_of(h).startswith("asgi-resilience; hit") for h in hits)
    assert origin.calls == 5


async def test_a_fresh_entry_is_never_skipped_after_an_unstorable_revalidation() -> None:
    """A no-cache request whose answer may not be stored leaves the fresh stored entry in use."""
    origin = Origin()
    mw = make(origin)
    await get(mw)
    origin.headers = [("cache-control", "no-store")]
    await get(mw, headers=[("cache-control", "no-cache")])
    assert origin.calls == 2 and mw._passing == {}
    assert status_of(await get(mw)).startswith("asgi-resilience; hit")


async def test_range_and_conditional_requests_on_a_cold_url_never_make_it_hit_for_pass() -> None:
    """The Range request fetches the whole (storable) response; the conditional one is not eligible."""
    origin = Origin(headers=[("cache-control", "max-age=60"), ("etag", '"a"')])
    mw = make(origin)
    await get(mw, "/r", headers=[("range", "bytes=0-1")])
    await get(mw, "/c", headers=[("if-none-match", '"a"')])
    assert mw._passing == {}
    assert status_of(await get(mw, "/r")).startswith("asgi-resilience; hit")
    assert status_of(await get(mw, "/c")).startswith("asgi-resilience; hit")
    assert origin.calls == 2


async def test_an_eligible_unstorable_response_still_makes_hit_for_pass() -> None:
    origin = Origin(headers=[("cache-control", "private")])
    mw = make(origin)
    await get(mw)
    assert len(mw._passing) == 1


# --- collapsed waiters and a slow first client -------------------------------------------------------------


class SlowClient:
    """A client that reads the response start, then nothing until ``release`` is set."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.started = anyio.Event()
        self.messages: list[Message] = []

    async def receive(self) -> Message:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            self.started.set()
            await self.release.wait()
        self.messages.append(message)


async def test_a_slow_first_client_does_not_hold_collapsed_waiters() -> None:
    origin = Origin(headers=[("cache-control", "max-age=60"), ("content-length", "5")], delay=0.02)
    mw = make(origin)
    slow = SlowClient()
    done: list[ASGIHarness] = []
    all_done = anyio.Event()

    async def waiter() -> None:
        done.append(await get(mw))
        if len(done) == 10:
            all_done.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(mw, http_scope(), slow.receive, slow.send)
            await anyio.sleep(0.005)
            for _ in range(10):
                tg.start_soon(waiter)
            await slow.started.wait()
            with anyio.fail_after(1):
                await all_done.wait()  # every waiter is answered while the first client reads nothing
            slow.release.set()
    assert origin.calls == 1 and all(h.body == b"hello" for h in done)
    assert all("collapsed" in status_of(h) for h in done)


# --- query normalisation ----------------------------------------------------------------------------------


async def test_repeated_query_names_keep_their_order_in_the_key() -> None:
    """``?id=evil&id=good`` and ``?id=good&id=evil`` differ for an app that reads the last value."""
    origin = Origin(respond=lambda s: (200, [("cache-control", "max-age=60")], [s["query_string"].split(b"=")[-1]]))
    mw = make(origin)
    assert (await get(mw, "/p?id=evil&id=good")).body == b"good"
    assert (await get(mw, "/p?id=good&id=evil")).body == b"evil"
    assert (await get(mw, "/p?z=1&id=good&id=evil")).body == b"evil"
    assert status_of(await get(mw, "/p?id=good&z=1&id=evil")).startswith("asgi-resilience; hit")  # names sorted
    assert origin.calls == 3


# --- invalidation is per host -----------------------------------------------------------------------------


async def test_unsafe_methods_invalidate_only_their_own_host() -> None:
    """RFC 9111 section 4.4: the target URI, which includes the host."""

    def respond(scope: Scope) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        if scope["method"] == "GET":
            return 200, [("cache-control", "max-age=60")], [dict(scope["headers"])[b"host"]]
        return 200, [("location", "/pricing/eu")], [b""]

    origin = Origin(respond=respond)
    mw = make(origin)
    for host in ("shop.example", "attacker.example"):
        for path in ("/pricing", "/pricing/eu"):
            await get(mw, path, headers=[("host", host)])
    assert origin.calls == 4
    await get(mw, "/pricing", method="POST", headers=[("host", "attacker.example")])
    for path in ("/pricing", "/pricing/eu"):
        hit = await get(mw, path, headers=[("host", "shop.example")])
        assert status_of(hit).startswith("asgi-resilience; hit") and hit.body == b"shop.example"
        assert "hit" not in status_of(await get(mw, path, headers=[("host", "attacker.example")]))
    assert origin.calls == 5 + 2


# --- Cache-Status says "stored" only when it is true -----------------------------------------------------


async def test_stored_is_not_claimed_for_a_stream_later_too_large() -> None:
    origin = Origin(chunks=[b"a" * 10] * 5)
    mw = make(origin, max_body_size=30)
    first = await get(mw)
    assert "stored" not in status_of(first) and first.body == b"a" * 50
    assert mw.cache.memory is not None and len(mw.cache.memory) == 0


async def test_stored_is_said_when_the_whole_body_was_in_hand() -> None:
    origin = Origin(headers=[("cache-control", "max-age=60"), ("content-length", "10")], chunks=[b"a" * 5] * 2)
    mw = make(origin)
    first = await get(mw)
    assert status_of(first) == "asgi-resilience; fwd=miss; stored" and first.body == b"a" * 10
    assert status_of(await get(mw)).startswith("asgi-resilience; hit")


async def test_a_larger_body_than_announced_is_streamed_and_not_stored() -> None:
    origin = Origin(headers=[("cache-control", "max-age=60"), ("content-length", "10")], chunks=[b"a" * 10] * 3)
    mw = make(origin, max_body_size=20)
    first = await get(mw)
    assert first.body == b"a" * 30 and "stored" not in status_of(first)
    await get(mw)
    assert origin.calls == 2


# --- the generated ETag is on the miss too ----------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [[("cache-control", "max-age=60")], [("cache-control", "max-age=60"), ("content-length", "5")]]
)
async def test_the_miss_carries_the_etag_later_hits_carry(headers: list[tuple[str, str]]) -> None:
    origin = Origin(headers=headers)
    mw = make(origin)
    miss = await get(mw)
    hit = await get(mw)
    assert miss.header("etag") is not None and miss.header("etag") == hit.header("etag")
    conditional = await get(mw, headers=[("if-none-match", miss.header("etag") or "")])
    assert conditional.status == 304 and origin.calls == 1


async def test_an_app_etag_is_never_replaced() -> None:
    origin = Origin(headers=[("cache-control", "max-age=60"), ("etag", '"app"')])
    mw = make(origin)
    assert (await get(mw)).header_values("etag") == ['"app"']
    assert (await get(mw)).header_values("etag") == ['"app"']


# --- negative caching by choice ------------------------------------------------------------------------


async def test_rule_statuses_choose_what_is_stored() -> None:
    def respond(scope: Scope) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        return (404 if scope["path"] == "/missing" else 200), [], [b"x"]

    default = Origin(respond=respond)
    mw = make(default, rules=[CacheRule("/*", ttl=60)])
    for _ in range(2):
        await get(mw, "/missing")
    assert default.calls == 1  # RFC default: 404 is heuristically cacheable

    chosen = Origin(respond=respond)
    mw2 = make(chosen, rules=[CacheRule("/*", ttl=60, statuses={200})])
    for _ in range(2):
        await get(mw2, "/missing")
        await get(mw2, "/found")
    assert chosen.calls == 3  # the 404 twice, the 200 once


async def test_statuses_also_bind_explicit_freshness_and_extend_the_rule_ttl() -> None:
    explicit = Origin(status=410, headers=[("cache-control", "max-age=60")])
    mw = make(explicit, rules=[CacheRule("/*", statuses=[200])])
    await get(mw)
    await get(mw)
    assert explicit.calls == 2
    teapot = Origin(status=503, headers=[])
    mw2 = make(teapot, rules=[CacheRule("/*", ttl=5, statuses=[200, 503])])
    await get(mw2)
    await get(mw2)
    assert teapot.calls == 1


async def test_decorator_statuses_with_starlette() -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    from asgi_resilience import cache

    calls = {"n": 0}

    @cache(ttl=60, statuses={200})
    async def item(request: Any) -> Any:
        calls["n"] += 1
        raise HTTPException(404)

    app = Starlette(routes=[Route("/item", item)])
    app.add_middleware(CacheMiddleware, telemetry=OFF)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/item")).status_code == 404
        assert (await client.get("/item")).status_code == 404
    assert calls["n"] == 2


@pytest.mark.parametrize("statuses", [[206], [304], [199], [600], ["200"], 200, [True]])
def test_statuses_are_validated(statuses: Any) -> None:
    with pytest.raises(ConfigurationError, match="statuses"):
        CacheRule(statuses=statuses)


async def test_a_cold_conditional_request_keeps_its_304_from_the_app() -> None:
    """An endpoint that is never stored still answers its clients' revalidations with 304."""

    def respond(scope: Scope) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        if dict(scope["headers"]).get(b"if-none-match") == b'"v1"':
            return 304, [("etag", '"v1"'), ("cache-control", "private")], []
        return 200, [("etag", '"v1"'), ("cache-control", "private")], [b"me"]

    origin = Origin(respond=respond)
    mw = make(origin)
    h = await get(mw, "/me", headers=[("authorization", "Bearer a"), ("if-none-match", '"v1"')])
    assert h.status == 304 and origin.request_header("if-none-match") == '"v1"'
    anonymous = await get(mw, "/me", headers=[("if-none-match", '"v1"')])
    assert anonymous.status == 304 and mw._passing == {}  # a 304 says nothing about the URL


async def test_unsafe_methods_invalidate_every_variant_of_their_host() -> None:
    def respond(scope: Scope) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        if scope["method"] == "GET":
            return 200, [("cache-control", "max-age=60"), ("vary", "accept")], [dict(scope["headers"])[b"accept"]]
        return 204, [], []

    origin = Origin(respond=respond)
    mw = make(origin)
    for accept in ("text/html", "application/json"):
        await get(mw, "/doc", headers=[("accept", accept)])
    await get(mw, "/doc", method="DELETE")
    for accept in ("text/html", "application/json"):
        assert "hit" not in status_of(await get(mw, "/doc", headers=[("accept", accept)]))
    assert origin.calls == 5


async def test_a_response_with_trailers_keeps_its_trailers_flag() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        headers = [(b"cache-control", b"max-age=60"), (b"trailer", b"x-checksum")]
        await send({"type": "http.response.start", "status": 200, "headers": headers, "trailers": True})
        await send({"type": "http.response.body", "body": b"data"})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"1")], "more_trailers": False})

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    mw = make(Origin())
    mw.app = app
    await mw(http_scope(), receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0].get("trailers") is True
    assert [m["type"] for m in sent][1:] == ["http.response.body", "http.response.trailers"]
    assert mw.cache.memory is not None and len(mw.cache.memory) == 0


async def test_a_range_miss_of_an_unstorable_url_lets_later_ranges_through() -> None:
    """The whole response to a Range miss says the URL is not storable: later ranges go to the app."""

    def respond(scope: Scope) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        if dict(scope["headers"]).get(b"range") == b"bytes=0-1":
            return 206, [("content-range", "bytes 0-1/100")], [b"xx"]
        return 200, [("cache-control", "max-age=60"), ("content-length", "100")], [b"x" * 100]

    origin = Origin(respond=respond)
    mw = make(origin, max_body_size=10)
    first = await get(mw, headers=[("range", "bytes=0-1")])
    assert first.status == 200 and origin.request_header("range") is None  # too large to store
    second = await get(mw, headers=[("range", "bytes=0-1")])
    assert (second.status, second.body) == (206, b"xx") and origin.request_header("range") == "bytes=0-1"
