"""One call of the app for a cacheable request: forward its response, tee it into an entry, store it.

:class:`Exchange` is the ``send`` the app writes to. It asks :func:`~._spec.on_response` what the
response head means and then only moves bytes:

* ``StoreWhole`` (known length): the body is collected (it is at most ``max_body_size``), the
  entry is built and handed to collapsed waiters at once, then the client is answered from it:
  the same generated ``ETag`` as later hits, ``Range``/conditionals answered, ``Cache-Status:
  stored``. A slow client holds nobody but itself.
* ``StoreStreamed`` (unknown length): each chunk goes to the client before the app makes the next;
  the copy is stored if the body ends within ``max_body_size`` (``Cache-Status`` cannot promise it).
* ``Forward``: passed through untouched (bar hop-by-hop framing and tag fields).
* ``UseUpdated`` / ``StaleOnError``: the app's response is dropped and the stored one served.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from typing_extensions import assert_never

from asgi_resilience._clock import Clock
from asgi_resilience.caching._cache import Cache
from asgi_resilience.caching._collapse import Collapser, Flight
from asgi_resilience.caching._policy import (
    CacheRule,
    Entry,
    RequestDirectives,
    StoreDecision,
    VaryMarker,
    build_entry,
    cache_status,
    freshness,
    response_tags,
    revalidation_headers,
    update_from_304,
    variant_key,
    vary_values,
)
from asgi_resilience.caching._respond import render, send_response
from asgi_resilience.caching._spec import (
    Forward,
    RequestFacts,
    ResponseStep,
    StaleOnError,
    StorePolicy,
    StoreStreamed,
    StoreWhole,
    UseUpdated,
    grace_allows,
    on_response,
)
from asgi_resilience.observability import Telemetry
from asgi_resilience.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CacheRequest", "Exchange", "Shared", "host_tag", "serve", "store_entry"]

logger = logging.getLogger("asgi_resilience.cache")
_FRAMING = frozenset({b"transfer-encoding", b"content-length"})
# a miss is forwarded without Range, so that the full response can be stored; the cache cuts the
# client's range from it
_RANGE = frozenset({b"range", b"if-range"})
_MISS_ATTRIBUTES = {"asgi_resilience.cache.result": "miss"}
# the Cache-Status of a response the app answered, built once
_FORWARDED = {
    (fwd, stored): cache_status(fwd=fwd, stored=stored)
    for fwd in ("miss", "stale", "request")
    for stored in (False, True)
}


@dataclass
class Shared:
    """What every exchange of one middleware uses, fixed at construction."""

    cache: Cache
    clock: Clock
    policy: StorePolicy
    collapser: Collapser
    count: Callable[[str], None]
    telemetry: Telemetry
    hidden: frozenset[bytes]  # never sent to the client (tags; targeted fields when stripped)
    hide_on_hit: frozenset[bytes]


@dataclass(slots=True)
class CacheRequest:
    """Per-request facts of a GET/HEAD the cache handles (never stored on the middleware)."""

    scope: Scope
    method: str
    headers: list[tuple[bytes, bytes]]
    key: str
    index: str
    host: str
    rule: CacheRule | None
    facts: RequestFacts
    marker: VaryMarker | None = None
    entry_key: str | None = None

    @property
    def directives(self) -> RequestDirectives:
        return self.facts.directives

    @property
    def flight_key(self) -> str:
        return self.entry_key or self.key

    @property
    def host_tag(self) -> str:
        return host_tag(self.host, self.index)


def host_tag(host: str, index: str) -> str:
    """The internal tag of one host's copies of a URL (user tags never contain spaces)."""
    return f"uri {host}{index}"


async def serve(
    shared: Shared,
    req: CacheRequest,
    send: Send,
    entry: Entry,
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    collapsed: bool = False,
    detail: str | None = None,
) -> None:
    """Send a stored response, with ``Age`` and ``Cache-Status``."""
    f = freshness(entry, shared.clock())
    status_value = cache_status(hit=hit, fwd=fwd, fwd_status=fwd_status, ttl=f.ttl, collapsed=collapsed, detail=detail)
    extra = [(b"age", str(min(int(f.age), 2**31)).encode()), (b"cache-status", status_value)]
    hide = shared.hide_on_hit
    fields = [(k, v) for k, v in entry.headers if k not in hide] if hide else None
    status, headers, body = render(entry, req.headers, req.method, ranged=req.facts.ranged, headers=fields)
    await send_response(send, status, [*headers, *extra], body)


async def store_entry(shared: Shared, req: CacheRequest, entry: Entry) -> None:
    """Write ``entry`` (after the response went out): under a Vary marker when it varies.

    The request's host is an extra internal tag, so that unsafe methods invalidate this host's
    copies of the URL only (RFC 9111 section 4.4).
    """
    cache = shared.cache
    ttl = entry.storage_ttl()
    tags = (*entry.tags, req.host_tag)
    if entry.vary:
        names = tuple(n for n, _ in entry.vary)
        marker = req.marker
        if marker is None or marker.names != names:
            current = await cache.get(req.key)
            marker = current if isinstance(current, VaryMarker) and current.names == names else None
        if marker is None:
            marker = VaryMarker(names=names, nonce=secrets.token_hex(4))
        await cache.set(req.key, marker, max(ttl, 3600.0), index=req.index, tags=(req.host_tag,))
        key = variant_key(req.key, marker.nonce, entry.vary)
    else:
        key = req.key
    await cache.set(key, entry, ttl, index=req.index, tags=tags)


def _lower_names(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The fields with lower-case ``bytes`` names and values: the app's own list when it already is.

    (ASGI frameworks send lower-case names; the list is only read, never changed, here.)
    """
    if type(headers) is list:
        for k, v in headers:
            if type(k) is not bytes or type(v) is not bytes or not k.islower():
                break
        else:
            return headers
    return [(bytes(k).lower(), bytes(v)) for k, v in headers]


def client_headers(headers: list[tuple[bytes, bytes]], hidden: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """The app's response fields as the client gets them on a miss (a new list).

    ``Transfer-Encoding`` is hop-by-hop: the server in front of us frames the body itself, and a
    ``Content-Length`` sent next to it cannot be trusted (RFC 9112 section 6.3), so both go.
    """
    for k, _ in headers:
        if k in hidden or k == b"transfer-encoding":
            break
    else:
        return list(headers)  # the common case: nothing to drop
    chunked = any(k == b"transfer-encoding" for k, _ in headers)
    drop = hidden | _FRAMING if chunked else hidden
    return [(k, v) for k, v in headers if k not in drop]


@dataclass(slots=True)
class Exchange:
    """The ``send`` an app call writes to; see the module docstring for what each step does.

    ``stale``: the entry being revalidated; ``flight``: the waiters to release; ``as_sent``: forward
    the client's ``Range`` and conditionals (a hit-for-pass key: the app answers them itself);
    ``silent``: a background refresh, not counted.
    """

    shared: Shared
    req: CacheRequest
    client: Send
    stale: Entry | None = None
    flight: Flight | None = None
    as_sent: bool = False
    silent: bool = False
    scope: Scope = field(init=False)
    facts: RequestFacts = field(init=False)
    validated: bool = False
    request_time: float = 0.0
    response_time: float = 0.0
    step: ResponseStep | None = None
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    out: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] | None = None
    size: int = 0
    holding: bool = False  # StoreWhole: nothing sent to the client until the entry exists
    client_started: bool = False
    finished: bool = False
    entry: Entry | None = None
    stored: bool = False
    start: Message = field(default_factory=dict)  # the app's own start message (keeps "trailers")

    def __post_init__(self) -> None:
        req = self.req
        self.scope, self.facts = req.scope, req.facts
        if self.stale is not None and not self.as_sent:
            # our validators replace the client's conditionals, and the whole response is asked for
            headers, self.validated = revalidation_headers(req.headers, self.stale)
            self.scope = {**req.scope, "headers": [(k, v) for k, v in headers if k != b"range"]}
            self.facts = req.facts._replace(ranged=False, conditional=False)
        elif req.facts.ranged and not self.as_sent and not req.facts.has_auth:
            # (a request with Authorization is rarely storable: the app answers its range itself)
            self.scope = {**req.scope, "headers": [(k, v) for k, v in req.headers if k not in _RANGE]}
            self.facts = req.facts._replace(ranged=False)
        self.request_time = self.response_time = self.shared.clock()

    @property
    def fwd(self) -> str:
        return "request" if self.facts.directives.no_cache else ("stale" if self.stale is not None else "miss")

    def _count(self, result: str) -> None:
        if not self.silent:
            self.shared.count(result)

    async def run(self, app: ASGIApp, receive: Receive) -> None:
        """Call the app; afterwards serve an updated/stale entry or store the new one."""
        try:
            await app(self.scope, receive, self.send)
        except Exception:
            stale = self.stale
            if stale is not None and not self.client_started and grace_allows(stale, self.shared.clock(), error=True):
                self._count("stale")
                await serve(self.shared, self.req, self.client, stale, hit=True, fwd="stale", detail="error")
                return
            raise
        await self._finish()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._start(message)
        elif kind == "http.response.body":
            await self._body(message)
        else:  # pathsend, trailers, ...: nothing we can store
            await self._flush(capture=False)
            await self.client(message)

    async def _start(self, message: Message) -> None:
        shared, req = self.shared, self.req
        self.response_time = shared.clock()
        self.start = message
        self.status = int(message["status"])
        self.headers = _lower_names(message.get("headers", []))
        step = self.step = on_response(
            self.facts,
            self.status,
            self.headers,
            request_time=self.request_time,
            response_time=self.response_time,
            rule=req.rule,
            policy=shared.policy,
            stale=self.stale,
            validated=self.validated,
            trailers=bool(message.get("trailers", False)),
        )
        if isinstance(step, (UseUpdated, StaleOnError)):
            return  # the stored response answers, after the app is done
        if not self.silent:  # a server span may end with the response, before the miss is counted
            shared.telemetry.span_attributes(_MISS_ATTRIBUTES)
        self.out = client_headers(self.headers, shared.hidden)
        if isinstance(step, Forward):
            if step.reason and logger.isEnabledFor(logging.DEBUG):
                logger.debug("response to %s not stored: %s", req.index, step.reason)
            if step.mark_pass:
                shared.collapser.mark_passing(req.flight_key)
            shared.collapser.publish(self.flight, None)  # waiters call the app themselves, now
            await self._send_start(stored=False)
            await shared.collapser.release_lease(self.flight)
            return
        if isinstance(step, StoreWhole):
            self.chunks, self.holding = [], True
            return
        if isinstance(step, StoreStreamed):
            # hold the start until the first body message: a body sent whole is answered (and
            # reported stored) like one of known length; otherwise the start and chunks stream on
            self.chunks, self.holding = [], True
            return
        assert_never(step)

    async def _send_start(self, *, stored: bool) -> None:
        self.client_started = True
        fwd = self.fwd
        value = _FORWARDED.get((fwd, stored))
        if value is None:
            value = cache_status(fwd=fwd, stored=stored)
        out = self.out  # a list of our own (client_headers), sent once
        out.append((b"cache-status", value))
        await self.client({**self.start, "headers": out})

    async def _body(self, message: Message) -> None:
        more = bool(message.get("more_body", False))
        if isinstance(self.step, (UseUpdated, StaleOnError)):
            self.finished = self.finished or not more
            return
        if self.chunks is not None:
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.size > self.shared.policy.max_body_size:
                await self._flush(capture=False)  # larger than allowed: stream it, store nothing
            else:
                self.chunks.append(chunk)
        if self.holding:
            if not more:
                await self._answer_whole()
            elif isinstance(self.step, StoreStreamed):
                await self._flush(capture=True)  # a stream: its length stays unknown to the client
            return
        await self.client(message)
        if not more:
            self.finished = True
            step = self.step
            if self.chunks is not None and isinstance(step, StoreStreamed):
                self.entry = self._build(step.decision)
                self.flight_publish()
                await self._store()

    async def _flush(self, *, capture: bool) -> None:
        """Stop holding: send the held start and the body so far; ``capture``: keep teeing the rest."""
        chunks = self.chunks
        if not capture:
            self.chunks = None
        if not self.holding:
            return
        self.holding = False
        if not capture:
            self.shared.collapser.publish(self.flight, None)  # nothing will be stored: waiters go now
        await self._send_start(stored=False)
        for chunk in chunks or ():
            await self.client({"type": "http.response.body", "body": chunk, "more_body": True})

    def flight_publish(self) -> None:
        self.shared.collapser.publish(self.flight, self.entry)

    async def _answer_whole(self) -> None:
        step = self.step
        if not isinstance(step, (StoreWhole, StoreStreamed)):  # pragma: no cover - only these hold
            return
        self.holding = False
        self.finished = True
        entry = self.entry = self._build(step.decision)
        self.flight_publish()  # waiters are served from the entry now, not after our client read it
        out = [(k, v) for k, v in self.out if k not in _FRAMING]
        out.append((b"content-length", str(len(entry.body)).encode()))
        if entry.etag_generated and entry.etag is not None:
            out.append((b"etag", entry.etag))
        req = self.req
        status, headers, body = render(entry, req.headers, req.method, ranged=req.facts.ranged, headers=out)
        self.client_started = True
        await send_response(
            self.client, status, [*headers, (b"cache-status", cache_status(fwd=self.fwd, stored=True))], body
        )
        await self._store()

    async def _store(self) -> None:
        """Store the new entry once, right after the final body was sent: the response is never delayed
        by the write, and the write does not wait for the app to return (a framework may do more work
        after its response, and a keep-alive client's next request may come in meanwhile)."""
        if self.stored or self.entry is None:
            return
        self.stored = True
        shared, req = self.shared, self.req
        shared.collapser.stored(req.flight_key)
        self._count("stored")
        await store_entry(shared, req, self.entry)

    def _build(self, decision: StoreDecision) -> Entry:
        req = self.req
        body = b"".join(self.chunks or ())
        # the stored length is the stored body's, whatever the app declared
        headers = [(k, v) for k, v in self.headers if k != b"content-length"]
        if self.status not in (204, 304):
            headers.append((b"content-length", str(len(body)).encode()))
        rule_tags = req.rule.tags if req.rule is not None else ()
        return build_entry(
            decision,
            status=self.status,
            headers=headers,
            body=body,
            request_time=self.request_time,
            response_time=self.response_time,
            vary=vary_values(decision.vary, req.headers) if decision.vary else (),
            tags=tuple(dict.fromkeys([*rule_tags, *response_tags(self.headers)])),
            index=req.index,
        )

    async def _finish(self) -> None:
        shared, req, stale, step = self.shared, self.req, self.stale, self.step
        if isinstance(step, UseUpdated) and stale is not None:
            updated = update_from_304(
                stale, self.headers, self.request_time, self.response_time, req.rule, targeted=shared.policy.targeted
            )
            self._count("hit")
            await serve(shared, req, self.client, updated, hit=True, fwd="stale", fwd_status=304)
            shared.collapser.publish(self.flight, updated)
            await store_entry(shared, req, updated)
            return
        if isinstance(step, StaleOnError) and stale is not None:
            self._count("stale")
            await serve(shared, req, self.client, stale, hit=True, fwd="stale", fwd_status=self.status)
            return
        if step is None and stale is not None and grace_allows(stale, shared.clock(), error=True):
            self._count("stale")
            await serve(shared, req, self.client, stale, hit=True, fwd="stale", detail="no-response")
            return
        if self.holding:  # the app returned without finishing its body: send what there is
            await self._flush(capture=False)
        self._count("miss")
        if self.finished:
            await self._store()
