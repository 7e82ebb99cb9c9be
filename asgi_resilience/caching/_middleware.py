"""``CacheMiddleware``: the ASGI adapter that drives the RFC 9111 state machine over a :class:`Cache`.

The decisions are :mod:`._spec`'s (``on_request`` here, ``on_response`` in :mod:`._exchange`);
this module routes a request to the step they name and does the I/O: lookups, collapsing
(:mod:`._collapse`), background refreshes and invalidation.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import anyio
from typing_extensions import assert_never

from asgi_resilience._asgi import get_header, mark_arrival, send_problem
from asgi_resilience._clock import Clock
from asgi_resilience._durations import seconds
from asgi_resilience._routing import EndpointOptions, mark_endpoint
from asgi_resilience.caching._cache import L1_MAX_BYTES, MAX_BYTES, Cache
from asgi_resilience.caching._collapse import Collapser, Flight
from asgi_resilience.caching._exchange import CacheRequest, Exchange, Shared, host_tag, serve
from asgi_resilience.caching._policy import (
    CacheRule,
    CookiePolicy,
    Entry,
    VaryMarker,
    cache_status,
    freshness,
    index_of,
    invalidation_targets,
    normalize_query,
    primary_key,
    request_directives,
    variant_key,
    vary_values,
)
from asgi_resilience.caching._spec import (
    FreshHit,
    Miss,
    NotCached,
    Pass,
    RequestFacts,
    Revalidate,
    StaleHit,
    StorePolicy,
    grace_allows,
    on_request,
)
from asgi_resilience.errors import ConfigurationError, ProblemDetails
from asgi_resilience.observability import Telemetry, resolve_telemetry
from asgi_resilience.observability._telemetry import Series
from asgi_resilience.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CacheMiddleware", "cache"]

logger = logging.getLogger("asgi_resilience.cache")
F = TypeVar("F")
_SAFE_UNCACHED = frozenset({"OPTIONS", "TRACE"})
_STRIPPED_FROM_CLIENT = frozenset({b"surrogate-key", b"cache-tag"})
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIRECTIVES, _COOKIE, _HOST, _AUTHORIZATION, _RANGE, _CONDITIONAL = range(6)
_REQUEST_FIELDS = {
    b"cache-control": _DIRECTIVES,
    b"pragma": _DIRECTIVES,
    b"cookie": _COOKIE,
    b"host": _HOST,
    b"authorization": _AUTHORIZATION,
    b"range": _RANGE,
    b"if-none-match": _CONDITIONAL,
    b"if-modified-since": _CONDITIONAL,
    b"if-match": _CONDITIONAL,
    b"if-unmodified-since": _CONDITIONAL,
}
_NO_DIRECTIVES = request_directives(())
_BYPASS = cache_status(fwd="bypass")
_NOT_CACHED = ProblemDetails(
    status=504,
    type="not-cached",
    title="Gateway Timeout",
    detail="The request asked for only-if-cached and no usable stored response exists.",
)


def cache(
    *,
    ttl: float | None = None,
    tags: Sequence[str] | str = (),
    stale_while_revalidate: float | None = None,
    stale_if_error: float | None = None,
    vary: Sequence[str] | str = (),
    allow_set_cookie: bool = False,
    statuses: Collection[int] | None = None,
) -> Callable[[F], F]:
    """Endpoint decorator: cache this endpoint's responses for ``ttl`` seconds when it sets no freshness.

    ``@cache(ttl=60, tags=["products"])``. Needs a :class:`CacheMiddleware` in the stack; the
    options take precedence over ``rules=``. ``no-store``/``private`` from the endpoint still win.
    ``statuses``: the statuses stored (``{200}`` keeps 404/410 answers out); see :class:`CacheRule`.
    """
    rule = CacheRule(
        "*",
        ttl=ttl,
        tags=tuple(tags) if not isinstance(tags, str) else (tags,),
        stale_while_revalidate=stale_while_revalidate,
        stale_if_error=stale_if_error,
        vary=tuple(vary) if not isinstance(vary, str) else (vary,),
        allow_set_cookie=allow_set_cookie,
        statuses=statuses,
    )

    def decorate(endpoint: F) -> F:
        return mark_endpoint(endpoint, "cache", rule)

    return decorate


class CacheMiddleware:
    """A shared HTTP cache (RFC 9111) in front of an ASGI app.

    ``app.add_middleware(CacheMiddleware, backend="redis://localhost:6379/0", l1_entries=10_000)``

    Options (keyword-only): ``cache`` (a shared :class:`Cache`; otherwise one is built from
    ``backend``, ``l1_entries``, ``max_entries``, ``max_bytes``, ``l1_max_bytes``, ``backend_timeout``),
    ``max_body_size`` (larger responses stream
    through unstored), ``rules`` (:class:`CacheRule` per path pattern, first match wins),
    ``stale_while_revalidate`` / ``stale_if_error`` (grace seconds when the app sends neither),
    ``cookie_policy`` (``"vary"``: requests with a Cookie get their own entries; ``"bypass"``: they
    skip the cache; ``"ignore"``: RFC behaviour), ``normalize_query`` (sort query parameters),
    ``lock_timeout`` (longest wait of a collapsed request), ``clock`` and ``telemetry``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        cache: Cache | None = None,
        backend: str | Any = "memory://",
        max_body_size: int = 1_048_576,
        l1_entries: int = 0,
        max_entries: int = 10_000,
        max_bytes: int = MAX_BYTES,
        l1_max_bytes: int = L1_MAX_BYTES,
        rules: Sequence[CacheRule] = (),
        stale_while_revalidate: float = 0.0,
        stale_if_error: float = 0.0,
        backend_timeout: float = 0.25,
        cookie_policy: CookiePolicy = "vary",
        normalize_query: bool = True,
        lock_timeout: float = 5.0,
        heuristic_fraction: float = 0.1,
        targeted_fields: Sequence[str] = ("CDN-Cache-Control",),
        strip_targeted_fields: bool = False,
        clock: Clock | None = None,
        telemetry: Telemetry | bool = True,
    ) -> None:
        self.app = app
        if not isinstance(max_body_size, int) or max_body_size < 0:
            raise ConfigurationError(f"max_body_size must be an int >= 0 (bytes), got {max_body_size!r}")
        stale_while_revalidate = seconds(stale_while_revalidate, "stale_while_revalidate", allow_zero=True)
        stale_if_error = seconds(stale_if_error, "stale_if_error", allow_zero=True)
        lock_timeout = seconds(lock_timeout, "lock_timeout", allow_zero=True)
        if cookie_policy not in ("vary", "bypass", "ignore"):
            raise ConfigurationError(f"cookie_policy must be 'vary', 'bypass' or 'ignore', got {cookie_policy!r}")
        if not 0 <= heuristic_fraction <= 1:
            raise ConfigurationError(f"heuristic_fraction must be within [0, 1], got {heuristic_fraction!r}")
        if isinstance(targeted_fields, str):
            targeted_fields = (targeted_fields,)
        for name in targeted_fields:
            if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
                raise ConfigurationError(
                    f"targeted_fields must be HTTP field names such as 'CDN-Cache-Control', got {name!r}"
                )
        rules = list(rules)
        for rule in rules:
            if not isinstance(rule, CacheRule):
                raise ConfigurationError(f"rules must be CacheRule objects, got {rule!r}")
        if cache is not None:
            if not isinstance(cache, Cache):
                raise ConfigurationError(f"cache must be a Cache instance, got {cache!r}")
            if (backend, l1_entries, max_entries, max_bytes, l1_max_bytes) != (
                "memory://",
                0,
                10_000,
                MAX_BYTES,
                L1_MAX_BYTES,
            ):
                raise ConfigurationError(
                    "pass either cache= or backend=/l1_entries=/max_entries=/max_bytes=/l1_max_bytes=, not both"
                )
            self.cache = cache
            self._owns_cache = False
        else:
            self.cache = Cache(
                backend,
                l1_entries=l1_entries,
                max_entries=max_entries,
                max_bytes=max_bytes,
                l1_max_bytes=l1_max_bytes,
                backend_timeout=backend_timeout,
                clock=clock if clock is not None else time.time,
                telemetry=telemetry,
            )
            self._owns_cache = True
        self._clock = self.cache.clock
        self.max_body_size = max_body_size
        self.rules = tuple(rules)
        self.default_swr = float(stale_while_revalidate)
        self.default_sie = float(stale_if_error)
        self.cookie_policy = cookie_policy
        self.normalize_query = normalize_query
        self.lock_timeout = float(lock_timeout)
        self.heuristic_fraction = float(heuristic_fraction)
        self.targeted_fields = tuple(name.lower() for name in targeted_fields)
        self._targeted = tuple(name.encode("ascii") for name in self.targeted_fields)
        self._endpoints = EndpointOptions("cache", app)
        self._refreshing: set[str] = set()
        self._collapser = Collapser(self.cache, self._clock, self.lock_timeout)
        self._flights = self._collapser.flights
        # "hit-for-pass" (as Varnish calls it): keys whose last response could not be stored
        self._passing = self._collapser.passing
        tel = self._telemetry = resolve_telemetry(telemetry)
        self._requests = tel.instrument("asgi_resilience.cache.requests")
        self._series: dict[str, Series] = {}
        tel.register_snapshot("cache", self._snapshot)
        hidden = _STRIPPED_FROM_CLIENT | (frozenset(self._targeted) if strip_targeted_fields else frozenset())
        self._shared = Shared(
            cache=self.cache,
            clock=self._clock,
            policy=StorePolicy(
                default_swr=self.default_swr,
                default_sie=self.default_sie,
                heuristic_fraction=self.heuristic_fraction,
                targeted=self._targeted,
                max_body_size=max_body_size,
            ),
            collapser=self._collapser,
            count=self._count,
            telemetry=tel,
            hidden=hidden,
            hide_on_hit=frozenset(self._targeted) if strip_targeted_fields else frozenset(),
        )

    # --- purge API (also on the shared Cache) -------------------------------------------------------------

    async def purge(self, url: str) -> int:
        return await self.cache.purge(url)

    async def purge_tags(self, *tags: str, soft: bool = False) -> int:
        return await self.cache.purge_tags(*tags, soft=soft)

    async def clear(self) -> None:
        await self.cache.clear()

    def _snapshot(self) -> dict[str, Any]:
        return {**self.cache.snapshot(), "in_flight": len(self._flights), "refreshing": len(self._refreshing)}

    def _count(self, result: str) -> None:
        series = self._series.get(result)
        if series is None:  # one bound series per result: no attribute dict per request
            series = self._series[result] = self._requests.bind({"result": result})
        series.add(1)
        if result != "stored":  # the request's result on its server span (a miss also when it starts)
            self._telemetry.span_attributes({"asgi_resilience.cache.result": result})

    def _is_passing(self, key: str) -> bool:
        return self._collapser.is_passing(key)

    # --- ASGI ------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan" and self._owns_cache:
            await self.app(scope, self._lifespan_receive(receive), send)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        mark_arrival(scope)
        method = scope["method"]
        if method in ("GET", "HEAD"):
            await self._cacheable(scope, receive, send, method)
        elif method in _SAFE_UNCACHED:
            await self._bypass(scope, receive, send)
        else:
            await self._unsafe(scope, receive, send)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.cache._closed = False  # an app can be started again (TestClient used twice)
            elif message["type"] == "lifespan.shutdown":
                await self.cache.aclose()
            return message

        return wrapped

    async def _bypass(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._count("bypass")

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = _with_status(message, _BYPASS)
            await send(message)

        await self.app(scope, receive, wrapped)

    async def _unsafe(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward; if the app succeeded, invalidate this host's target URI, Location and Content-Location."""
        seen: list[Message] = []

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.append(message)
                message = _with_status(message, _BYPASS)
            await send(message)

        self._count("bypass")
        await self.app(scope, receive, wrapped)
        if seen and 200 <= int(seen[0]["status"]) < 400:
            host = _host(scope)
            query = normalize_query(scope.get("query_string", b"").decode("latin-1"))
            targets = invalidation_targets(host, scope["path"], query, list(seen[0].get("headers", [])))
            await self.cache.purge_tags(*(host_tag(host, target) for target in targets))

    def _rule_for(self, scope: Scope) -> CacheRule | None:
        found = self._endpoints.lookup(scope)
        if isinstance(found, CacheRule):
            return found
        path = scope["path"]
        for rule in self.rules:
            if rule.matches(path):
                return rule
        return None

    def _request(self, scope: Scope, method: str) -> CacheRequest | None:
        """The request's key and facts, or None when it bypasses the cache."""
        rule = self._rule_for(scope)
        if rule is not None and rule.bypass:
            return None
        headers = list(scope.get("headers", ()))
        # one pass over the (lower-case) request fields for everything the cache reads from them
        cookie: bytes | None = None
        host: bytes | None = None
        directives_sent = has_auth = ranged = conditional = False
        for name, value in headers:
            kind = _REQUEST_FIELDS.get(name)
            if kind is None:
                continue
            if kind == _DIRECTIVES:
                directives_sent = True
            elif kind == _COOKIE:
                if cookie is None:
                    cookie = value
            elif kind == _HOST:
                if host is None:
                    host = value
            elif kind == _AUTHORIZATION:
                has_auth = True
            elif kind == _RANGE:
                ranged = method == "GET"
            else:
                conditional = True
        directives = request_directives(headers) if directives_sent else _NO_DIRECTIVES
        if directives.no_store or (cookie and self.cookie_policy == "bypass"):
            return None
        raw_query = scope.get("query_string", b"")
        if raw_query:
            raw = raw_query.decode("latin-1")
            normalized = normalize_query(raw)
            query = normalized if self.normalize_query else raw
        else:
            normalized = query = ""
        if host:
            host_name = host.decode("latin-1").strip().lower()
        else:
            server = scope.get("server")
            host_name = f"{server[0]}:{server[1]}" if server else ""
        path = scope["path"]
        facts = RequestFacts(method, directives, has_auth, ranged, conditional)
        return CacheRequest(
            scope=scope,
            method=method,
            headers=headers,
            key=primary_key(
                scope.get("scheme", "http"),
                host_name,
                path,
                query,
                cookie=cookie if self.cookie_policy == "vary" else None,
            ),
            index=index_of(path, normalized),
            host=host_name,
            rule=rule,
            facts=facts,
        )

    async def _cacheable(self, scope: Scope, receive: Receive, send: Send, method: str) -> None:
        req = self._request(scope, method)
        if req is None:
            await self._bypass(scope, receive, send)
            return
        passing = self._collapser.is_passing(req.key)
        # a hit-for-pass key is not looked up in a shared backend (no round trip), only in memory
        entry = self._peek(req) if passing else await self._lookup(req)
        step = on_request(entry, req.facts, self._clock(), passing=passing)
        if isinstance(step, FreshHit):
            self._count("hit")
            await serve(self._shared, req, send, step.entry, hit=True)
        elif isinstance(step, StaleHit):
            self._count("stale")
            await serve(self._shared, req, send, step.entry, hit=True, fwd="stale")
            await self._refresh(req, step.entry)
        elif isinstance(step, NotCached):
            self._count("miss")
            extra = [(b"cache-status", cache_status(fwd="miss"))]
            await send_problem(send, _NOT_CACHED, extra_headers=extra, head=method == "HEAD")
        elif isinstance(step, Pass):
            await Exchange(self._shared, req, send, as_sent=True).run(self.app, receive)
        elif isinstance(step, Revalidate):
            await self._collapse(req, receive, send, step.entry)
        elif isinstance(step, Miss):
            await self._collapse(req, receive, send, None)
        else:
            assert_never(step)

    # --- lookups ---------------------------------------------------------------------------------------

    def _peek(self, req: CacheRequest) -> Entry | None:
        """The entry from memory only (the memory backend or the L1), never a backend round trip."""
        req.entry_key = req.key
        value = self.cache.peek(req.key)
        if isinstance(value, VaryMarker):
            req.marker = value
            req.entry_key = variant_key(req.key, value.nonce, vary_values(value.names, req.headers))
            value = self.cache.peek(req.entry_key)
        return value if isinstance(value, Entry) else None

    async def _lookup(self, req: CacheRequest) -> Entry | None:
        value = self.cache.peek(req.key)
        if value is None:
            value = await self.cache.get(req.key)
        if isinstance(value, VaryMarker):
            req.marker = value
            req.entry_key = variant_key(req.key, value.nonce, vary_values(value.names, req.headers))
            value = self.cache.peek(req.entry_key)
            if value is None:
                value = await self.cache.get(req.entry_key)
        else:
            req.entry_key = req.key
        return value if isinstance(value, Entry) else None

    async def _fetch_shared(self, req: CacheRequest) -> Entry | None:
        """A fresh entry for the request's key it may be served, read from the backend (not L1)."""
        value = await self.cache.get(req.key)
        if isinstance(value, VaryMarker):
            value = await self.cache.get(variant_key(req.key, value.nonce, vary_values(value.names, req.headers)))
        if isinstance(value, Entry) and self._shareable(value, req) and freshness(value, self._clock()).fresh:
            return value
        return None

    def _shareable(self, entry: Entry, req: CacheRequest) -> bool:
        if req.facts.has_auth and not entry.shared_auth:
            return False
        return not entry.vary or vary_values(tuple(n for n, _ in entry.vary), req.headers) == entry.vary

    # --- collapsing and refreshing ---------------------------------------------------------------------

    async def _collapse(self, req: CacheRequest, receive: Receive, send: Send, stale: Entry | None) -> None:
        """Single flight: the first miss of a key calls the app, concurrent ones wait for its entry.

        Requests with ``Authorization`` neither lead nor wait: their responses are rarely shareable.
        """
        collapser, key = self._collapser, req.flight_key
        if req.facts.has_auth or collapser.is_passing(key):  # a variant key can be hit-for-pass too
            await Exchange(self._shared, req, send, stale=stale).run(self.app, receive)
            return
        joined = await collapser.join(key)
        if joined is not None:
            shared, timed_out = joined
            if shared is not None and self._shareable(shared, req):
                self._count("hit")
                await serve(self._shared, req, send, shared, fwd="miss", collapsed=True)
            elif timed_out and stale is not None and grace_allows(stale, self._clock()):
                self._count("stale")
                await serve(self._shared, req, send, stale, hit=True, fwd="stale", detail="lock-timeout")
            else:
                await Exchange(self._shared, req, send, stale=stale).run(self.app, receive)
            return
        flight = collapser.begin(key)
        leader: Flight | None = flight
        try:
            if self.cache.store.shared and req.method == "GET" and not await collapser.acquire_lease(flight):
                outcome = await collapser.await_other_process(key, lambda: self._fetch_shared(req))
                if isinstance(outcome, Entry):
                    flight.entry = outcome
                    self._count("hit")
                    await serve(self._shared, req, send, outcome, fwd="miss", collapsed=True)
                    return
                if outcome == "pass":
                    collapser.end(flight)  # the other process's response was not storable
                    leader = None
            await Exchange(self._shared, req, send, stale=stale, flight=leader).run(self.app, receive)
        finally:
            await collapser.release_lease(flight)
            collapser.end(flight)

    async def _refresh(self, req: CacheRequest, stale: Entry) -> None:
        """stale-while-revalidate: after the stale response went out, revalidate once per key."""
        key = req.flight_key
        if key in self._refreshing or key in self._flights:
            return
        self._refreshing.add(key)
        done = anyio.Event()
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()  # like a client that leaves once the response is complete
            return {"type": "http.disconnect"}

        async def discard(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                done.set()

        flight = self._collapser.begin(key)
        # a HEAD's refresh fetches the storable GET; the client's conditionals and Range stay out
        scope = {**req.scope, "method": "GET"}
        facts = RequestFacts(method="GET", directives=req.facts.directives)
        refresh = replace(req, scope=scope, method="GET", facts=facts)
        try:
            if self.cache.store.shared and not await self._collapser.acquire_lease(flight):
                return  # one refresh across workers too: the same lease as a miss
            await Exchange(self._shared, refresh, discard, stale=stale, flight=flight, silent=True).run(
                self.app, receive
            )
        except Exception as exc:
            logger.warning("background revalidation of a stale cache entry failed: %s", type(exc).__name__)
        finally:
            await self._collapser.release_lease(flight)
            self._refreshing.discard(key)
            self._collapser.end(flight)


def _with_status(message: Message, value: bytes) -> Message:
    return {**message, "headers": [*message.get("headers", []), (b"cache-status", value)]}


def _host(scope: Scope) -> str:
    host = get_header(scope, b"host")
    if host:
        return host.decode("latin-1").strip().lower()
    server = scope.get("server")
    if server:
        return f"{server[0]}:{server[1]}"
    return ""
