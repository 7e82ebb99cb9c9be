"""Helpers for the cache tests: a scripted origin app that counts its calls."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from asgi_resilience import Telemetry
from asgi_resilience.testing import ASGIHarness, http_scope
from asgi_resilience.types import Message, Receive, Scope, Send

T0 = 1_700_000_000.0
# Disabled telemetry of our own: ``telemetry=False`` would register our instruments on the shared NOOP
# object, which tests/observability inspects.
OFF = Telemetry(enabled=False)


@dataclass
class Origin:
    """An ASGI app whose response is set per test; records every request it served."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=lambda: [("cache-control", "max-age=60")])
    chunks: Sequence[bytes] = (b"hello",)
    delay: float = 0.0
    raise_exc: BaseException | None = None
    respond: Callable[[Scope], tuple[int, list[tuple[str, str]], Sequence[bytes]]] | None = None
    calls: int = 0
    seen: list[Scope] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        self.seen.append(scope)
        if self.delay:
            await anyio.sleep(self.delay)
        if self.raise_exc is not None:
            raise self.raise_exc
        status, headers, chunks = (
            self.respond(scope) if self.respond is not None else (self.status, self.headers, self.chunks)
        )
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})
        if not chunks:
            await send({"type": "http.response.body", "body": b""})

    def request_header(self, name: str, index: int = -1) -> str | None:
        for key, value in self.seen[index]["headers"]:
            if key == name.encode():
                return str(value.decode("latin-1"))
        return None


async def get(app: Any, path: str = "/", method: str = "GET", **kwargs: Any) -> ASGIHarness:
    query = b""
    if "?" in path:
        path, q = path.split("?", 1)
        query = q.encode()
    return await ASGIHarness().run(app, http_scope(method, path, query_string=query, **kwargs))


def status_of(h: ASGIHarness) -> str:
    return h.header("cache-status") or ""


def body_messages(h: ASGIHarness) -> list[Message]:
    return [m for m in h.messages if m["type"] == "http.response.body"]
