"""Answering from a stored response: a client's conditional (304), ``Range`` (206/416), HEAD, or the whole."""

from __future__ import annotations

from collections.abc import Sequence

from asgi_resilience.caching._policy import Entry, client_conditional_matches, not_modified_headers
from asgi_resilience.caching._ranges import render_range
from asgi_resilience.types import Send

__all__ = ["render", "send_response"]

RawHeaders = Sequence[tuple[bytes, bytes]]


def render(
    entry: Entry,
    request_headers: RawHeaders,
    method: str,
    *,
    ranged: bool = False,
    headers: RawHeaders | None = None,
) -> tuple[int, RawHeaders, bytes]:
    """Status, fields and body answering a GET/HEAD from ``entry`` (RFC 9110 section 13.2.2 order).

    ``ranged``: the request carries ``Range``; ``headers``: the fields to send instead of the stored
    ones (a miss sends the app's own). A matching ``If-None-Match``/``If-Modified-Since`` wins over
    ``Range``; HEAD gets no body.
    """
    fields = entry.headers if headers is None else headers
    if client_conditional_matches(request_headers, entry):
        return 304, not_modified_headers(entry), b""
    if ranged and method == "GET" and entry.status == 200:
        answer = render_range(200, fields, entry.body, request_headers)
        if answer is not None:
            return answer
    return entry.status, fields, b"" if method == "HEAD" else entry.body


async def send_response(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
