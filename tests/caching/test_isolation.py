"""Property: a response produced for one set of credentials is never served to another.

Hypothesis generates the response's caching headers (Cache-Control variants, Vary, Set-Cookie) and a
sequence of requests from different users (Authorization, Cookie, or anonymous, with extra request
headers). The origin writes the caller's identity into the body, so a leak is visible: a cached body
served to a different identity is only allowed when the app explicitly declared the response
shareable across those credentials.
"""

from __future__ import annotations

from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_resilience import CacheMiddleware
from asgi_resilience.testing import ASGIHarness, ManualClock, http_scope

from .conftest import OFF, T0

USERS = ["alice", "bob", "carol"]

cache_controls = st.sampled_from(
    [
        "max-age=60",
        "public, max-age=60",
        "private, max-age=60",
        "no-store",
        "s-maxage=60",
        "max-age=60, must-revalidate",
        "no-cache",
        "",
    ]
)
varies = st.sampled_from(["", "", "", "Authorization", "Cookie", "Accept-Language", "Accept-Language, Cookie", "*"])
credential_kinds = st.sampled_from(["authorization", "authorization", "cookie", "both", "anonymous"])
request_strategy = st.tuples(st.sampled_from(USERS), credential_kinds, st.sampled_from(["en", "fr"]))


def identity(headers: dict[bytes, bytes]) -> bytes:
    return b"auth=" + headers.get(b"authorization", b"-") + b";cookie=" + headers.get(b"cookie", b"-")


def credentials(user: str, kind: str) -> list[tuple[str, str]]:
    out = []
    if kind in ("authorization", "both"):
        out.append(("authorization", f"Bearer {user}"))
    if kind in ("cookie", "both"):
        out.append(("cookie", f"sid={user}"))
    return out


def shared_across_auth(cc: str) -> bool:
    return any(d in cc for d in ("public", "s-maxage", "must-revalidate"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cc=cache_controls,
    vary=varies,
    set_cookie=st.booleans(),
    etag=st.booleans(),
    requests=st.lists(request_strategy, min_size=3, max_size=6),
    cookie_policy=st.sampled_from(["vary", "bypass"]),
)
def test_no_response_crosses_credentials(
    cc: str, vary: str, set_cookie: bool, etag: bool, requests: list[tuple[str, str, str]], cookie_policy: str
) -> None:
    async def origin(scope: Any, receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])
        raw = []
        if cc:
            raw.append((b"cache-control", cc.encode()))
        if vary:
            raw.append((b"vary", vary.encode()))
        if set_cookie:
            raw.append((b"set-cookie", b"sid=" + headers.get(b"cookie", b"new")))
        if etag:
            raw.append((b"etag", b'"' + identity(headers).replace(b'"', b"") + b'"'))
        if b"if-none-match" in headers and etag and headers[b"if-none-match"] == dict(raw).get(b"etag"):
            await send({"type": "http.response.start", "status": 304, "headers": raw})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": identity(headers)})

    mw = CacheMiddleware(origin, clock=ManualClock(T0), cookie_policy=cookie_policy, telemetry=OFF)  # type: ignore[arg-type]

    async def run() -> None:
        for user, kind, lang in requests:
            headers = [*credentials(user, kind), ("accept-language", lang)]
            h = await ASGIHarness().run(mw, http_scope(headers=headers))
            mine = identity({k.encode(): v.encode() for k, v in headers})
            if h.body == mine:
                continue
            # a body produced for other credentials: only an explicitly shared response may get here
            status = h.header("cache-status") or ""
            assert "hit" in status or "collapsed" in status, (h.body, mine, status)
            other_auth = h.body.split(b";")[0] != mine.split(b";")[0]
            other_cookie = h.body.split(b";")[1] != mine.split(b";")[1]
            # Authorization: only a response the app marked shareable (public, s-maxage, must-revalidate)
            assert not other_auth or (shared_across_auth(cc) and "Authorization" not in vary), (cc, vary, h.body, mine)
            # Cookie: each cookie gets its own entries ("vary") or skips the cache ("bypass")
            assert not other_cookie, (cookie_policy, h.body, mine)
            own_cookie = "sid=" + dict(headers).get("cookie", "new")
            assert h.header("set-cookie") in (None, own_cookie)

    anyio.run(run)


def test_anonymous_request_never_gets_an_authorized_private_body() -> None:
    """The concrete regression behind the property: /users/me with max-age but no public."""

    async def me(scope: Any, receive: Any, send: Any) -> None:
        auth = dict(scope["headers"]).get(b"authorization", b"anonymous")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"cache-control", b"max-age=600")]})
        await send({"type": "http.response.body", "body": auth})

    mw = CacheMiddleware(me, clock=ManualClock(T0), telemetry=OFF)

    async def run() -> None:
        a = await ASGIHarness().run(mw, http_scope(headers=[("authorization", "Bearer alice")]))
        anon = await ASGIHarness().run(mw, http_scope())
        b = await ASGIHarness().run(mw, http_scope(headers=[("authorization", "Bearer bob")]))
        assert (a.body, anon.body, b.body) == (b"Bearer alice", b"anonymous", b"Bearer bob")

    anyio.run(run)


header_names = st.sampled_from(
    [
        "cache-control",
        "pragma",
        "if-none-match",
        "if-modified-since",
        "authorization",
        "cookie",
        "accept",
        "host",
        "range",
        "x-anything",
    ]
)
header_values = st.one_of(
    st.sampled_from(
        [
            "max-age=abc",
            "max-stale",
            "max-age=99999999999999999999",
            "only-if-cached",
            "no-cache,,=,",
            '"unterminated',
            "*",
            "W/",
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=30),
)
response_names = st.sampled_from(
    ["cache-control", "expires", "date", "age", "vary", "etag", "last-modified", "content-length", "surrogate-key"]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(st.lists(st.tuples(header_names, header_values), max_size=4), min_size=1, max_size=4),
    response=st.lists(st.tuples(response_names, header_values), max_size=5),
    status=st.sampled_from([200, 203, 304, 404, 500]),
    query=st.binary(max_size=20),
)
def test_malformed_headers_never_crash_and_always_answer_once(
    requests: list[list[tuple[str, str]]], response: list[tuple[str, str]], status: int, query: bytes
) -> None:
    raw_response = [(k.encode(), v.encode("latin-1")) for k, v in response]

    async def origin(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": raw_response})
        await send({"type": "http.response.body", "body": b"body"})

    clock = ManualClock(T0)
    mw = CacheMiddleware(origin, clock=clock, telemetry=OFF)

    async def run() -> None:
        for headers in requests:
            h = await ASGIHarness().run(mw, http_scope(headers=headers, query_string=query))
            assert h.start_count == 1 and h.complete
            assert (h.header("cache-status") or "").startswith("asgi-resilience")
            assert h.status in (status, 200, 304, 504)
            clock.advance(7)

    anyio.run(run)
