"""``CacheMiddleware``: the ASGI adapter that drives the RFC 9111 policy over a :class:`Cache`."""

from __future__ import annotations

import functools
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from asgi_resilience._asgi import get_header, mark_arrival, send_problem
from asgi_resilience._clock import Clock
from asgi_resilience._durations import seconds
from asgi_resilience._routing import EndpointOptions, mark_endpoint
from asgi_resilience.caching._cache import L1_MAX_BYTES, MAX_BYTES, Cache
from asgi_resilience.caching._headers import content_length
from asgi_resilience.caching._policy import (
    CacheRule,
    CookiePolicy,
    Entry,
    RequestDirectives,
    StoreDecision,
    VaryMarker,
    build_entry,
    cache_status,
    client_conditional_matches,
    decide_store,
    freshness,
    index_of,
    invalidation_targets,
    normalize_query,
    not_modified_headers,
    primary_key,
    request_directives,
    response_tags,
    revalidation_headers,
    update_from_304,
    usable_fresh,
    variant_key,
    vary_values,
)
from asgi_resilience.errors import ConfigurationError, ProblemDetails
from asgi_resilience.observability import Telemetry, resolve_telemetry
from asgi_resilience.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CacheMiddleware", "cache"]

logger = logging.getLogger("asgi_resilience.cache")
F = TypeVar("F")
_SAFE_UNCACHED = frozenset({"OPTIONS", "TRACE"})
_STRIPPED_FROM_CLIENT = frozenset({b"surrogate-key", b"cache-tag"})
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_RANGE_FIELDS = frozenset({b"range", b"if-range"})
_BYPASS = cache_status(fwd="bypass")


def cache(
    *,
    ttl: float | None = None,
    tags: Sequence[str] | str = (),
    stale_while_revalidate: float | None = None,
    stale_if_error: float | None = None,
    vary: Sequence[str] | str = (),
    allow_set_cookie: bool = False,
) -> Callable[[F], F]:
    """Endpoint decorator: cache this endpoint's responses for ``ttl`` seconds when it sets no freshness.

    ``@cache(ttl=60, tags=["products"])``. Needs a :class:`CacheMiddleware` in the stack; the
    options take precedence over ``rules=``. ``no-store``/``private`` from the endpoint still win.
    """
    rule = CacheRule(
        "*",
        ttl=ttl,
        tags=tuple(tags) if not isinstance(tags, str) else (tags,),
        stale_while_revalidate=stale_while_revalidate,
        stale_if_error=stale_if_error,
        vary=tuple(vary) if not isinstance(vary, str) else (vary,),
        allow_set_cookie=allow_set_cookie,
    )

    def decorate(endpoint: F) -> F:
        return mark_endpoint(endpoint, "cache", rule)

    return decorate


_PASS_SECONDS = 10.0  # how long a key whose response was not storable skips request collapsing
_PASS_ENTRIES = 10_000


@dataclass
class _Flight:
    """One in-process computation of a key that concurrent misses wait for.

    When the response turns out not storable, the waiters are released as soon as its start arrives
    (they call the app themselves: a response that cannot be stored cannot be shared either), and
    the cross-process lease ``token`` is given back at the same moment.
    """

    key: str = ""
    done: anyio.Event = field(default_factory=anyio.Event)
    entry: Entry | None = None
    token: str | None = None


@dataclass
class _Request:
    """Per-request facts the adapter needs (never stored on the middleware)."""

    scope: Scope
    method: str
    headers: list[tuple[bytes, bytes]]
    key: str
    index: str
    rule: CacheRule | None
    directives: RequestDirectives
    has_auth: bool
    marker: VaryMarker | None = None
    entry_key: str | None = None


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
        # fields the client never sees: tags always, targeted fields when an origin shield consumes them
        self._hidden = _STRIPPED_FROM_CLIENT | (frozenset(self._targeted) if strip_targeted_fields else frozenset())
        self._hide_on_hit = frozenset(self._targeted) if strip_targeted_fields else frozenset()
        self._endpoints = EndpointOptions("cache", app)
        self._flights: dict[str, _Flight] = {}
        self._refreshing: set[str] = set()
        # "hit-for-miss" (as Varnish calls it): keys whose last response could not be stored are not
        # collapsed for a while, so that an uncacheable URL is never serialised behind one request
        self._passing: dict[str, float] = {}
        tel = self._telemetry = resolve_telemetry(telemetry)
        self._requests = tel.instrument("asgi_resilience.cache.requests")
        tel.register_snapshot("cache", self._snapshot)

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
        self._requests.add(1, {"result": result})
        if result != "stored":  # the request's result on its server span (a miss also when it starts, below)
            self._telemetry.span_attributes({"asgi_resilience.cache.result": result})

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
        """Forward; if the app succeeded, invalidate the target URI, Location and Content-Location."""
        status = 0
        headers: list[tuple[bytes, bytes]] = []

        async def wrapped(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                message = _with_status(message, _BYPASS)
            await send(message)

        self._count("bypass")
        await self.app(scope, receive, wrapped)
        if 200 <= status < 400:
            host = _host(scope)
            query = normalize_query(scope.get("query_string", b"").decode("latin-1"))
            await self.cache.purge_indexes(invalidation_targets(host, scope["path"], query, headers))

    def _rule_for(self, scope: Scope) -> CacheRule | None:
        found = self._endpoints.lookup(scope)
        if isinstance(found, CacheRule):
            return found
        path = scope["path"]
        for rule in self.rules:
            if rule.matches(path):
                return rule
        return None

    async def _cacheable(self, scope: Scope, receive: Receive, send: Send, method: str) -> None:
        rule = self._rule_for(scope)
        headers = list(scope.get("headers", []))
        directives = request_directives(headers)
        cookie = get_header(scope, b"cookie")
        if (rule is not None and rule.bypass) or directives.no_store or (cookie and self.cookie_policy == "bypass"):
            await self._bypass(scope, receive, send)
            return
        raw_query = scope.get("query_string", b"").decode("latin-1")
        query = normalize_query(raw_query) if self.normalize_query else raw_query
        key = primary_key(
            scope.get("scheme", "http"),
            _host(scope),
            scope["path"],
            query,
            cookie=cookie if self.cookie_policy == "vary" else None,
        )
        req = _Request(
            scope=scope,
            method=method,
            headers=headers,
            key=key,
            index=index_of(scope["path"], normalize_query(raw_query)),
            rule=rule,
            directives=directives,
            has_auth=get_header(scope, b"authorization") is not None,
        )
        passing = self._is_passing(req.key)
        if passing:
            # hit-for-pass: this URL's last response could not be stored, so there is nothing to look up
            # or to collapse for a few seconds (no backend round trip; a load-shedding layer below
            # rejects cheaply)
            req.entry_key = req.key
            entry = None
        else:
            entry = await self._lookup(req)
        if entry is not None and req.has_auth and not entry.shared_auth:
            entry = None  # stored for anonymous requests only (RFC 9111 section 3.5)
        now = self._clock()
        if entry is not None:
            f = freshness(entry, now)
            if usable_fresh(f, directives):
                self._count("hit")
                await self._serve(req, send, entry, hit=True)
                return
            stale_for = -f.ttl
            if (
                not f.fresh
                and not directives.no_cache
                and not entry.must_revalidate
                and entry.swr > 0
                and stale_for <= entry.swr
                and (directives.max_age is None or f.age <= directives.max_age)
            ):
                self._count("stale")
                await self._serve(req, send, entry, hit=True, fwd="stale")
                await self._refresh(req, entry)
                return
        if directives.only_if_cached:
            self._count("miss")
            problem = ProblemDetails(
                status=504,
                type="not-cached",
                title="Gateway Timeout",
                detail="The request asked for only-if-cached and no usable stored response exists.",
            )
            await send_problem(
                send, problem, extra_headers=[(b"cache-status", cache_status(fwd="miss"))], head=method == "HEAD"
            )
            return
        if passing:
            await self._forward(req, receive, send, None, None)
            return
        await self._collapse(req, receive, send, entry)

    async def _lookup(self, req: _Request) -> Entry | None:
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

    # --- serving stored responses ----------------------------------------------------------------------

    async def _serve(
        self,
        req: _Request,
        send: Send,
        entry: Entry,
        *,
        hit: bool = False,
        fwd: str | None = None,
        fwd_status: int | None = None,
        collapsed: bool = False,
        detail: str | None = None,
    ) -> None:
        f = freshness(entry, self._clock())
        status_value = cache_status(
            hit=hit, fwd=fwd, fwd_status=fwd_status, ttl=f.ttl, collapsed=collapsed, detail=detail
        )
        extra = [(b"age", str(min(int(f.age), 2**31)).encode()), (b"cache-status", status_value)]
        if req.method in ("GET", "HEAD") and client_conditional_matches(req.headers, entry):
            headers = [*not_modified_headers(entry), *extra]
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        stored = (
            entry.headers if not self._hide_on_hit else [(k, v) for k, v in entry.headers if k not in self._hide_on_hit]
        )
        await send({"type": "http.response.start", "status": entry.status, "headers": [*stored, *extra]})
        await send({"type": "http.response.body", "body": b"" if req.method == "HEAD" else entry.body})

    # --- forwarding to the app -------------------------------------------------------------------------

    async def _collapse(self, req: _Request, receive: Receive, send: Send, stale: Entry | None) -> None:
        """Single flight: the first miss of a key calls the app, concurrent ones wait for its result."""
        flight_key = req.entry_key or req.key
        if self._is_passing(flight_key):  # a variant (Vary) key whose last response was not storable
            await self._forward(req, receive, send, stale, None)
            return
        flight = self._flights.get(flight_key)
        if flight is not None:
            timed_out = True
            with anyio.move_on_after(self.lock_timeout):
                await flight.done.wait()
                timed_out = False
            shared = flight.entry
            if shared is not None and self._shareable(shared, req):
                self._count("hit")
                await self._serve(req, send, shared, fwd="miss", collapsed=True)
                return
            if timed_out and stale is not None and self._grace_allows(stale):
                self._count("stale")
                await self._serve(req, send, stale, hit=True, fwd="stale", detail="lock-timeout")
                return
            await self._forward(req, receive, send, stale, None)
            return
        flight = _Flight(key=flight_key)
        self._flights[flight_key] = flight
        try:
            if self.cache.store.shared and req.method == "GET":
                flight.token = await self.cache.call(
                    "lease", lambda: self.cache.store.acquire_lease(flight_key, self.lock_timeout), "local"
                )
                if flight.token is None:
                    outcome = await self._await_other_process(req, send, flight_key, flight)
                    if outcome == "served":
                        return
                    if outcome == "pass":
                        self._end_flight(flight)  # the other process's response was not storable
                        await self._forward(req, receive, send, stale, None)
                        return
            await self._forward(req, receive, send, stale, flight)
        finally:
            await self._release_lease(flight)
            self._end_flight(flight)

    def _end_flight(self, flight: _Flight) -> None:
        flight.done.set()
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    async def _release_lease(self, flight: _Flight) -> None:
        token, flight.token = flight.token, None
        if token is not None and token != "local":
            await self.cache.call("lease", lambda: self.cache.store.release_lease(flight.key, token), None)

    def _is_passing(self, key: str) -> bool:
        until = self._passing.get(key)
        if until is None:
            return False
        if until > self._clock():
            return True
        del self._passing[key]
        return False

    def _mark_passing(self, key: str) -> None:
        if len(self._passing) >= _PASS_ENTRIES:
            self._passing.clear()
        self._passing[key] = self._clock() + _PASS_SECONDS

    async def _await_other_process(self, req: _Request, send: Send, key: str, flight: _Flight) -> str:
        """Another process holds the lease: poll the backend for its result within ``lock_timeout``.

        ``"served"``: its stored result was served. ``"pass"``: the lease was given back without a stored
        result (the response was not storable, or its holder failed): call the app without collapsing.
        ``"timeout"``: still nothing after ``lock_timeout``.
        """
        delay = 0.005
        with anyio.move_on_after(self.lock_timeout):
            while True:
                await anyio.sleep(delay)
                # at most 50 ms between polls: one GET per poll is cheap, and a waiter that learns late
                # that it must call the app itself adds the delay to its response time
                delay = min(delay * 2, 0.05)
                value = await self._fetch_shared(req, key)
                if value is None:
                    token = await self.cache.call(
                        "lease", lambda: self.cache.store.acquire_lease(key, self.lock_timeout), None
                    )
                    if token is None:
                        continue
                    # the holder gave the lease back: it stored its result just before, or it had none
                    value = await self._fetch_shared(req, key)
                    await self.cache.call("lease", functools.partial(self.cache.store.release_lease, key, token), None)
                    if value is None:
                        if not self.cache.available:
                            continue  # that "miss" was a backend failure, not an answer: keep waiting
                        self._mark_passing(key)
                        return "pass"
                flight.entry = value
                self._count("hit")
                await self._serve(req, send, value, fwd="miss", collapsed=True)
                return "served"
        return "timeout"

    async def _fetch_shared(self, req: _Request, key: str) -> Entry | None:
        """A fresh entry for ``key`` this request may be served, read from the backend (not L1)."""
        value = await self.cache.get(key)
        if isinstance(value, VaryMarker):
            value = await self.cache.get(variant_key(req.key, value.nonce, vary_values(value.names, req.headers)))
        if isinstance(value, Entry) and self._shareable(value, req) and freshness(value, self._clock()).fresh:
            return value
        return None

    def _shareable(self, entry: Entry, req: _Request) -> bool:
        if req.has_auth and not entry.shared_auth:
            return False
        if entry.vary and vary_values(tuple(n for n, _ in entry.vary), req.headers) != entry.vary:
            return False
        return True

    def _grace_allows(self, stale: Entry, *, error: bool = False) -> bool:
        if stale.must_revalidate:
            return False
        f = freshness(stale, self._clock())
        window = stale.sie if error else max(stale.swr, stale.sie)
        return window > 0 and -f.ttl <= window

    async def _refresh(self, req: _Request, stale: Entry) -> None:
        """stale-while-revalidate: after the stale response went out, revalidate once per key."""
        key = req.entry_key or req.key
        if key in self._refreshing or key in self._flights:
            return
        self._refreshing.add(key)
        sent = False
        done = anyio.Event()

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

        flight = _Flight(key=key)
        self._flights[key] = flight
        # the client's own conditionals must not turn the refresh into a 304 we cannot store
        headers, _ = revalidation_headers(req.headers, stale)
        scope = {**req.scope, "headers": headers, "method": "GET"}  # a HEAD's refresh fetches the storable GET
        refresh = _Request(**{**req.__dict__, "scope": scope, "headers": headers, "method": "GET"})
        try:
            if self.cache.store.shared:  # one refresh across workers too: the same lease as a miss
                flight.token = await self.cache.call(
                    "lease", lambda: self.cache.store.acquire_lease(key, self.lock_timeout), "local"
                )
                if flight.token is None:
                    return
            await self._forward(refresh, receive, discard, stale, flight, silent=True)
        except Exception as exc:
            logger.warning("background revalidation of a stale cache entry failed: %s", type(exc).__name__)
        finally:
            await self._release_lease(flight)
            self._refreshing.discard(key)
            self._end_flight(flight)

    async def _forward(
        self,
        req: _Request,
        receive: Receive,
        send: Send,
        stale: Entry | None,
        flight: _Flight | None,
        *,
        silent: bool = False,
    ) -> None:
        """Call the app; tee its response into the store; revalidate ``stale``; serve it on errors.

        ``silent``: a background refresh, whose ``send`` discards everything; it is not counted.
        """
        count: Callable[[str], None] = self._count if not silent else _ignore
        scope = req.scope
        validated = False
        if stale is not None:
            headers, validated = revalidation_headers(req.headers, stale)
            if validated:
                scope = {**scope, "headers": headers}
        fwd = "request" if req.directives.no_cache else ("stale" if stale is not None else "miss")
        sie_allowed = stale is not None and self._grace_allows(stale, error=True)
        request_time = self._clock()
        response_time = request_time
        mode = "pass"  # pass | update (a 304 for our validators) | error (stale-if-error)
        started = False
        finished = False
        upstream_status = 0
        upstream_headers: list[tuple[bytes, bytes]] = []
        capture: list[bytes] | None = None
        size = 0
        decision: StoreDecision | None = None
        tags: tuple[str, ...] = ()
        entry: Entry | None = None

        async def wrapped(message: Message) -> None:
            nonlocal started, finished, mode, upstream_status, upstream_headers, capture, size
            nonlocal decision, tags, response_time, entry
            kind = message["type"]
            if kind == "http.response.start":
                started = True
                response_time = self._clock()
                upstream_status = int(message["status"])
                upstream_headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", [])]
                if validated and upstream_status == 304:
                    mode = "update"
                    return
                if sie_allowed and upstream_status >= 500:
                    mode = "error"
                    return
                decision = None
                if req.method == "GET" and not message.get("trailers", False):
                    decision = decide_store(
                        method=req.method,
                        status=upstream_status,
                        headers=upstream_headers,
                        request_time=request_time,
                        response_time=response_time,
                        has_authorization=req.has_auth,
                        rule=req.rule,
                        default_swr=self.default_swr,
                        default_sie=self.default_sie,
                        heuristic_fraction=self.heuristic_fraction,
                        targeted=self._targeted,
                    )
                will_store = decision is not None and decision.store
                if decision is not None and not decision.store and logger.isEnabledFor(logging.DEBUG):
                    logger.debug("response to %s not stored: %s", req.index, decision.reason)
                length = content_length(upstream_headers)
                if will_store and length is not None and length > self.max_body_size:
                    will_store = False
                if will_store:
                    capture = []
                    rule_tags = req.rule.tags if req.rule is not None else ()
                    tags = tuple(dict.fromkeys([*rule_tags, *response_tags(upstream_headers)]))
                out = _client_headers(upstream_headers, self._hidden)
                out.append((b"cache-status", cache_status(fwd=fwd, fwd_status=None, stored=will_store)))
                if not silent:  # a server span may end with the response, before the miss is counted
                    self._telemetry.span_attributes({"asgi_resilience.cache.result": "miss"})
                if not will_store and req.method == "GET":
                    self._mark_passing(req.entry_key or req.key)
                    if flight is not None:
                        self._end_flight(flight)  # waiters call the app themselves, now, not after our body
                await send({**message, "headers": out})
                if not will_store and flight is not None:
                    await self._release_lease(flight)
                return
            if kind == "http.response.body":
                more = bool(message.get("more_body", False))
                if mode != "pass":
                    finished = finished or not more
                    return
                if capture is not None:
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body_size:
                        capture = None
                    else:
                        capture.append(chunk)
                await send(message)
                if not more:
                    finished = True
                    if capture is not None and decision is not None:
                        entry = self._build(
                            req, decision, upstream_status, upstream_headers, capture, tags, request_time, response_time
                        )
                        if flight is not None:
                            flight.entry = entry
                return
            capture = None  # pathsend, trailers, ...: nothing we can store
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        except Exception:
            if stale is not None and sie_allowed and (not started or mode == "error"):
                count("stale")
                await self._serve(req, send, stale, hit=True, fwd="stale", detail="error")
                return
            raise
        if mode == "update" and stale is not None:
            updated = update_from_304(
                stale, upstream_headers, request_time, response_time, req.rule, targeted=self._targeted
            )
            count("hit")
            await self._serve(req, send, updated, hit=True, fwd="stale", fwd_status=304)
            if flight is not None:
                flight.entry = updated
            await self._store(req, updated)
            return
        if mode == "error" and stale is not None:
            count("stale")
            await self._serve(req, send, stale, hit=True, fwd="stale", fwd_status=upstream_status)
            return
        if not started and stale is not None and sie_allowed:
            count("stale")
            await self._serve(req, send, stale, hit=True, fwd="stale", detail="no-response")
            return
        count("miss")
        if entry is not None and finished:
            self._passing.pop(req.entry_key or req.key, None)
            count("stored")
            await self._store(req, entry)

    def _build(
        self,
        req: _Request,
        decision: StoreDecision,
        status: int,
        headers: list[tuple[bytes, bytes]],
        capture: list[bytes],
        tags: tuple[str, ...],
        request_time: float,
        response_time: float,
    ) -> Entry:
        body = b"".join(capture)
        # the stored length is the length of the stored body, whatever the app declared (a
        # Content-Length next to Transfer-Encoding is not to be trusted, RFC 9112 section 6.3)
        headers = [(k, v) for k, v in headers if k != b"content-length"]
        if status not in (204, 304) and status >= 200:
            headers.append((b"content-length", str(len(body)).encode()))
        return build_entry(
            decision,
            status=status,
            headers=headers,
            body=body,
            request_time=request_time,
            response_time=response_time,
            vary=vary_values(decision.vary, req.headers) if decision.vary else (),
            tags=tags,
            index=req.index,
        )

    async def _store(self, req: _Request, entry: Entry) -> None:
        """Write ``entry`` (after the response went out): under a Vary marker when it varies."""
        ttl = entry.storage_ttl()
        if entry.vary:
            names = tuple(n for n, _ in entry.vary)
            marker = req.marker
            if marker is None or marker.names != names:
                current = await self.cache.get(req.key)
                marker = current if isinstance(current, VaryMarker) and current.names == names else None
            if marker is None:
                marker = VaryMarker(names=names, nonce=secrets.token_hex(4))
            await self.cache.set(req.key, marker, max(ttl, 3600.0), index=req.index, tags=())
            key = variant_key(req.key, marker.nonce, entry.vary)
        else:
            key = req.key
        await self.cache.set(key, entry, ttl, index=req.index, tags=entry.tags)


def _ignore(result: str) -> None:
    return None


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


def _client_headers(headers: list[tuple[bytes, bytes]], hidden: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """The app's response fields as the client gets them on a miss.

    ``Transfer-Encoding`` is hop-by-hop: the server in front of us frames the body itself, and a
    ``Content-Length`` sent next to it cannot be trusted (RFC 9112 section 6.3), so both go.
    """
    chunked = any(k == b"transfer-encoding" for k, _ in headers)
    drop = hidden | _FRAMING if chunked else hidden
    return [(k, v) for k, v in headers if k not in drop]


_FRAMING = frozenset({b"transfer-encoding", b"content-length"})
