"""Endpoint decorators (``@rate_limit``, ``@cache``, ``@timeout``) and finding them before routing.

A decorator only records options on the endpoint (function, class or mounted ASGI app) and returns it
unchanged, so FastAPI still sees the original signature and any decorator order works. A middleware
runs before the router, so :class:`EndpointOptions` resolves the route itself: it walks the
Starlette/FastAPI routing table found at ``scope["app"]`` (``Route``, ``APIRoute`` from
``include_router``, ``Mount``-ed sub-apps and routers) with each route's own ``matches`` and reads
the options of the endpoint that will serve the request. Results are cached per method and path.
"""

from __future__ import annotations

from typing import Any, TypeVar

from asgi_resilience.errors import ConfigurationError
from asgi_resilience.types import Scope

__all__ = ["ATTRIBUTE", "EndpointOptions", "find_router", "mark_endpoint"]

ATTRIBUTE = "__asgi_resilience__"
T = TypeVar("T")
_MISSING = object()
_MAX_DEPTH = 8
_CACHE_SIZE = 4096


def mark_endpoint(endpoint: T, concern: str, options: Any) -> T:
    """Record ``options`` for ``concern`` on ``endpoint`` and return the endpoint itself."""
    marks = getattr(endpoint, ATTRIBUTE, None)
    if marks is None:
        marks = {}
        try:
            setattr(endpoint, ATTRIBUTE, marks)
        except (AttributeError, TypeError) as exc:
            raise ConfigurationError(
                f"cannot attach {concern} options to {endpoint!r}; decorate a function, a class or an ASGI app object"
            ) from exc
    marks[concern] = options
    return endpoint


def find_router(app: object) -> object | None:
    """The app with a routing table (Starlette, FastAPI, a Router) below ``app``, through middlewares."""
    for _ in range(16):
        if app is None or hasattr(app, "routes"):
            return app
        app = getattr(app, "app", None)
    return None


class EndpointOptions:
    """Finds the options a decorator put on the endpoint that will serve a request (one per middleware).

    ``app`` is what the middleware wraps: when the middleware sits *outside* a Starlette/FastAPI app
    (``resilient(app)``, a plain wrapper), Starlette has not set ``scope["app"]`` yet, so the routing
    table is found by walking down the wrapped middlewares once, at construction.
    """

    __slots__ = ("_cache", "_router", "concern")

    def __init__(self, concern: str, app: object = None) -> None:
        self.concern = concern
        self._cache: dict[tuple[Any, ...], Any] = {}
        self._router = find_router(app) if app is not None else None

    def lookup(self, scope: Scope) -> Any | None:
        """The options for this concern on the matched endpoint, or None (also for non-Starlette apps)."""
        app = scope.get("app")
        routes = getattr(app, "routes", None)
        if routes is None:
            app = self._router
            routes = getattr(app, "routes", None)
            if routes is None:
                return None
        key = (id(app), scope["type"], scope.get("method"), scope.get("root_path", ""), scope.get("path"))
        found = self._cache.get(key, _MISSING)
        if found is _MISSING:
            found = self._search(routes, scope, 0)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = found
        return found

    def _search(self, routes: Any, scope: Scope, depth: int) -> Any | None:
        if depth > _MAX_DEPTH:
            return None
        try:
            from starlette.routing import Match
        except ImportError:  # pragma: no cover - starlette is a dependency
            return None
        partial: Any = _MISSING
        for route in routes:
            try:
                match, child, endpoint, inner = _match(route, scope)
            except Exception:
                continue  # a route that cannot judge this scope does not serve it
            if match == Match.NONE:
                continue
            options = self._options_of(endpoint)
            if match == Match.FULL:
                if options is not None:
                    return options
                if inner is not None:
                    return self._search(inner, {**scope, **child}, depth + 1)
                return None
            if partial is _MISSING:
                partial = options  # Starlette serves a PARTIAL match (wrong method) only if nothing matches fully
        return None if partial is _MISSING else partial

    def _options_of(self, endpoint: Any) -> Any | None:
        if endpoint is None:
            return None
        marks = getattr(endpoint, ATTRIBUTE, None)
        if isinstance(marks, dict):
            return marks.get(self.concern)
        return None


def _match(route: Any, scope: Scope) -> tuple[Any, dict[str, Any], Any, Any]:
    """(match, child scope, endpoint, routes to search below) for one route of any supported router."""
    if hasattr(route, "_match") and hasattr(route, "original_router"):
        # FastAPI >= 0.13x keeps included routers as lazy ``_IncludedRouter`` objects; its matcher
        # writes bookkeeping into the scope, so it gets a copy.
        match, child, inner_route, context = route._match(dict(scope))
        endpoint = getattr(context, "endpoint", None) or getattr(inner_route, "endpoint", None)
        nested = [inner_route] if inner_route is not None and hasattr(inner_route, "original_router") else None
        return match, child, endpoint, nested
    match, child = route.matches(scope)
    return match, child, child.get("endpoint"), getattr(route, "routes", None) or None
