"""Range requests answered by the cache (RFC 9110 section 14, RFC 9111 sections 3.3-3.4).

A cache stores complete responses only: a ``Range`` miss goes to the app without ``Range`` so the
whole 200 can be stored, and every range is cut from it, never from a 206.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import anyio
import pytest

from asgi_resilience import CacheMiddleware
from asgi_resilience.caching._ranges import parse_ranges
from asgi_resilience.testing import ASGIHarness, ManualClock
from asgi_resilience.types import Scope

from .conftest import OFF, T0, Origin, get, status_of

BODY = b"0123456789"


def make(origin: Origin, **kwargs: Any) -> CacheMiddleware:
    return CacheMiddleware(origin, clock=ManualClock(T0), telemetry=OFF, **kwargs)


def ranged_origin(**kwargs: Any) -> Origin:
    """An origin that honours Range itself (so a 206 from it would be easy to store by mistake)."""

    def respond(scope: Scope) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        headers = [("cache-control", "max-age=60"), ("etag", '"v1"'), ("content-type", "text/plain")]
        asked = dict(scope["headers"]).get(b"range")
        if asked == b"bytes=0-1":
            return 206, [*headers, ("content-range", "bytes 0-1/10")], [BODY[:2]]
        return 200, headers, [BODY]

    return Origin(respond=respond, **kwargs)


async def stored(**kwargs: Any) -> tuple[CacheMiddleware, Origin]:
    origin = ranged_origin()
    mw = make(origin, **kwargs)
    await get(mw)
    return mw, origin


def test_parse_ranges_follows_the_grammar() -> None:
    assert parse_ranges(b"bytes=0-1", 10) == [(0, 1)]
    assert parse_ranges(b"Bytes = 2-", 10) is None  # no whitespace around "=" in ranges-specifier
    assert parse_ranges(b"BYTES=2-", 10) == [(2, 9)]  # the unit is case-insensitive
    assert parse_ranges(b"bytes=-3", 10) == [(7, 9)]
    assert parse_ranges(b"bytes=-30", 10) == [(0, 9)]  # a suffix longer than the body: all of it
    assert parse_ranges(b"bytes=5-100", 10) == [(5, 9)]
    assert parse_ranges(b"bytes=0-1, ,4-5", 10) == [(0, 1), (4, 5)]  # empty list elements are allowed
    assert parse_ranges(b"bytes=4-5,0-1", 10) == [(4, 5), (0, 1)]  # disjoint: the client's order
    assert parse_ranges(b"bytes=0-4,3-6,8-8", 10) == [(0, 6), (8, 8)]  # overlapping: coalesced
    assert parse_ranges(b"bytes=10-,20-30", 10) is not None and not isinstance(parse_ranges(b"bytes=10-", 10), list)
    for ignored in (b"bytes=5-1", b"bytes=a-b", b"items=0-1", b"bytes=", b"bytes=-", b"0-1", b"bytes=1-2-3"):
        assert parse_ranges(ignored, 10) is None, ignored
    assert parse_ranges(b"bytes=-0", 10) is not None and not isinstance(parse_ranges(b"bytes=-0", 10), list)
    assert parse_ranges(b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(65)), 100) is None


async def test_single_range_from_a_stored_200() -> None:
    mw, origin = await stored()
    for value, part, content_range in (
        ("bytes=2-4", b"234", "bytes 2-4/10"),
        ("bytes=-2", b"89", "bytes 8-9/10"),
        ("bytes=7-", b"789", "bytes 7-9/10"),
        ("bytes=0-1", b"01", "bytes 0-1/10"),
    ):
        h = await get(mw, headers=[("range", value)])
        assert (h.status, h.body) == (206, part), value
        assert h.header("content-range") == content_range and h.header("content-length") == str(len(part))
        assert h.header("content-type") == "text/plain" and h.header("etag") == '"v1"'
        assert status_of(h).startswith("asgi-resilience; hit")
    assert origin.calls == 1


async def test_multiple_ranges_are_multipart_byteranges() -> None:
    mw, _ = await stored()
    h = await get(mw, headers=[("range", "bytes=0-0, 5-6")])
    assert h.status == 206
    content_type = h.header("content-type") or ""
    assert content_type.startswith("multipart/byteranges; boundary=")
    boundary = content_type.split("boundary=", 1)[1].encode()
    assert h.header("content-length") == str(len(h.body)) and h.header("content-range") is None
    parts = h.body.split(b"--" + boundary)
    assert parts[0] == b"" and parts[-1] == b"--\r\n"
    assert parts[1] == b"\r\ncontent-type: text/plain\r\ncontent-range: bytes 0-0/10\r\n\r\n0\r\n"
    assert parts[2] == b"\r\ncontent-type: text/plain\r\ncontent-range: bytes 5-6/10\r\n\r\n56\r\n"


async def test_unsatisfiable_range_is_416_with_the_length() -> None:
    mw, origin = await stored()
    h = await get(mw, headers=[("range", "bytes=10-20")])
    assert h.status == 416 and h.header("content-range") == "bytes */10" and h.body == b""
    assert origin.calls == 1


@pytest.mark.parametrize("value", ["bytes=5-1", "items=0-1", "bytes=x-y"])
async def test_invalid_or_foreign_ranges_get_the_whole_response(value: str) -> None:
    mw, _ = await stored()
    h = await get(mw, headers=[("range", value)])
    assert (h.status, h.body) == (200, BODY) and h.header("content-range") is None


async def test_if_range_with_the_stored_strong_etag_or_date() -> None:
    lm = formatdate(T0 - 3600, usegmt=True)
    origin = Origin(headers=[("cache-control", "max-age=60"), ("etag", '"v1"'), ("last-modified", lm)], chunks=[BODY])
    mw = make(origin)
    await get(mw)
    same = await get(mw, headers=[("range", "bytes=0-1"), ("if-range", '"v1"')])
    assert (same.status, same.body) == (206, b"01")
    changed = await get(mw, headers=[("range", "bytes=0-1"), ("if-range", '"v0"')])
    assert (changed.status, changed.body) == (200, BODY)
    weak = await get(mw, headers=[("range", "bytes=0-1"), ("if-range", 'W/"v1"')])  # never a strong match
    assert weak.status == 200
    dated = await get(mw, headers=[("range", "bytes=0-1"), ("if-range", lm)])
    assert dated.status == 206
    older = await get(mw, headers=[("range", "bytes=0-1"), ("if-range", formatdate(T0 - 7200, usegmt=True))])
    assert older.status == 200
    assert origin.calls == 1


async def test_a_matching_if_none_match_wins_over_range() -> None:
    mw, _ = await stored()
    h = await get(mw, headers=[("range", "bytes=0-1"), ("if-none-match", '"v1"')])
    assert h.status == 304


async def test_head_ignores_range() -> None:
    mw, _ = await stored()
    h = await get(mw, method="HEAD", headers=[("range", "bytes=0-1")])
    assert h.status == 200 and h.body == b"" and h.header("content-length") == "10"


async def test_a_range_miss_fetches_and_stores_the_whole_response() -> None:
    origin = ranged_origin()
    mw = make(origin)
    first = await get(mw, headers=[("range", "bytes=0-1"), ("if-range", '"v1"')])
    assert origin.request_header("range") is None and origin.request_header("if-range") is None
    assert (first.status, first.body) == (206, b"01") and "stored" in status_of(first)
    whole = await get(mw)
    assert (whole.status, whole.body) == (200, BODY) and status_of(whole).startswith("asgi-resilience; hit")
    assert origin.calls == 1


async def test_a_206_is_never_served_to_a_request_without_range() -> None:
    origin = ranged_origin(delay=0.05)
    mw = make(origin)
    results: dict[str, ASGIHarness] = {}

    async def one(name: str, headers: list[tuple[str, str]]) -> None:
        results[name] = await get(mw, headers=headers)

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "ranged", [("range", "bytes=0-1")])
        await anyio.sleep(0.01)
        tg.start_soon(one, "plain", [])  # collapsed behind the Range request
    assert (results["ranged"].status, results["ranged"].body) == (206, b"01")
    assert (results["plain"].status, results["plain"].body) == (200, BODY)
    assert origin.calls == 1


async def test_a_hit_for_pass_url_forwards_range_to_the_app() -> None:
    """A URL known not to be storable: the app answers the range itself."""

    def respond(scope: Scope) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        if dict(scope["headers"]).get(b"range") == b"bytes=0-1":
            return 206, [("cache-control", "no-store"), ("content-range", "bytes 0-1/10")], [BODY[:2]]
        return 200, [("cache-control", "no-store")], [BODY]

    origin = Origin(respond=respond)
    mw = make(origin)
    await get(mw)  # an eligible request: the URL becomes hit-for-pass
    h = await get(mw, headers=[("range", "bytes=0-1")])
    assert origin.request_header("range") == "bytes=0-1" and (h.status, h.body) == (206, b"01")
