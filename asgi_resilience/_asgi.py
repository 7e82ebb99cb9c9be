"""The one shared ASGI toolkit every middleware uses instead of its own copy.

* :class:`SendTracker`: wraps ``send``, records whether the response started and finished, and
  lets a middleware change headers on ``http.response.start`` without buffering the body;
* header helpers that work on raw ASGI header lists;
* :func:`send_problem` / :func:`send_error`: RFC 9457 responses with one rendering path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from asgi_resilience.errors._exceptions import ResilienceError
from asgi_resilience.errors._problem import ProblemDetails, from_error, render
from asgi_resilience.types import Message, Scope, Send

__all__ = [
    "ARRIVAL",
    "RawHeaders",
    "SendTracker",
    "append_headers",
    "get_header",
    "mark_arrival",
    "send_error",
    "send_problem",
]

RawHeaders = list[tuple[bytes, bytes]]

ARRIVAL = "asgi_resilience.arrival"
"""Scope key: ``time.monotonic()`` when the request entered the first of our layers.

The layers that sit outside TimeoutMiddleware in the stack (problems, rate limit, cache) set it with
``scope.setdefault``; TimeoutMiddleware counts the deadline from it, so time a request spent in an
outer layer (a Redis round trip, waiting for a collapsed cache miss) counts against its timeout.
"""


class SendTracker:
    """A ``send`` wrapper that tracks the response and can edit its start message.

    One instance per request (never share it between requests). ``on_start`` is called with the
    ``http.response.start`` message before it is sent and may change it in place, which is the only
    moment response headers can still change.
    """

    __slots__ = ("_on_start", "_send", "finished", "started", "status")

    def __init__(self, send: Send, on_start: Callable[[Message], None] | None = None) -> None:
        self._send = send
        self._on_start = on_start
        self.started = False
        self.finished = False
        self.status: int | None = None

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self._on_start is not None:
                self._on_start(message)
            self.started = True
            self.status = message["status"]
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)


def mark_arrival(scope: Scope) -> None:
    """Record when the request entered our first layer (see :data:`ARRIVAL`); later layers keep it."""
    if ARRIVAL not in scope:
        scope[ARRIVAL] = time.monotonic()


def get_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header ``name`` (lower-case bytes), or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def append_headers(message: Message, headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Add raw headers to an ``http.response.start`` message.

    The message's header list is copied first: the app may reuse it (a cached response object, a
    tuple), and mutating a list we do not own would leak headers into other responses.
    """
    current: Any = message.get("headers", ())
    message["headers"] = [*current, *headers]


async def send_problem(
    send: Send,
    problem: ProblemDetails,
    *,
    type_base: str | None = None,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
    head: bool = False,
) -> None:
    """Send ``problem`` as a complete ``application/problem+json`` response."""
    body, headers = render(problem, type_base=type_base)
    headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body, "more_body": False})


async def send_error(
    send: Send,
    exc: ResilienceError,
    *,
    type_base: str | None = None,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
    head: bool = False,
) -> None:
    """Send one of our exceptions (429, 503, 504, ...) as its problem response."""
    await send_problem(send, from_error(exc), type_base=type_base, extra_headers=extra_headers, head=head)
