"""Endpoint decorators (``@rate_limit``, ``@cache``, ``@timeout``) and finding them before routing.

A decorator only records options on the endpoint (function, class or mounted ASGI app) and returns it
unchanged, so FastAPI still sees the original signature and any decorator order works. A middleware
runs before the router, so :class:`EndpointOptions` resolves the route itself, with the framework's
own matcher, and reads the options of the endpoint that will serve the request:

* Starlette/FastAPI: the routing table found at ``scope["app"]`` (``Route``, ``APIRoute`` from
  ``include_router``, ``Mount``-ed sub-apps and routers), each route's own ``matches``;
* Litestar: the app's ``asgi_router.handle_routing`` (the route handler and its function; a
  decorator above ``@get`` records its options in the handler's ``opt``);
* Django (``get_asgi_application()``): the URL resolver (the view function, or the class of a
  class-based view).

Results are cached per method and path, and one lookup serves every layer of a request: the first
layer that looks keeps what it found (every concern's options on the endpoint) in the scope under
:data:`SCOPE_KEY`, and the layers below read it from there as long as the request still names the same
app, method and path. An app whose routes cannot be read this way (Quart, Flask-like
``view_functions``) gets a warning, once, if any of its endpoints carries options that would be
ignored.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, TypeVar

from asgi_resilience.errors import ConfigurationError
from asgi_resilience.types import Scope

__all__ = ["ATTRIBUTE", "SCOPE_KEY", "EndpointOptions", "find_router", "mark_endpoint", "marks_of"]

ATTRIBUTE = "__asgi_resilience__"
SCOPE_KEY = "asgi_resilience.endpoint"
"""Scope key of the endpoint lookup the first layer made for a request (private to this package):
``(scope["app"], router, type, method, root_path, path, options by concern)``."""
T = TypeVar("T")
_MISSING = object()
_MAX_DEPTH = 8
_CACHE_SIZE = 4096
_NONE: dict[str, Any] = {}  # no endpoint options (shared, never written to)


def mark_endpoint(endpoint: T, concern: str, options: Any) -> T:
    """Record ``options`` for ``concern`` on ``endpoint`` and return the endpoint itself."""
    marks = marks_of(endpoint)
    if marks is None:
        marks = {}
        try:
            setattr(endpoint, ATTRIBUTE, marks)
        except (AttributeError, TypeError) as exc:
            opt = getattr(endpoint, "opt", None)
            if not isinstance(opt, dict):
                raise ConfigurationError(
                    f"cannot attach {concern} options to {endpoint!r}; decorate a function, a class or an ASGI app "
                    "object"
                ) from exc
            marks = opt.setdefault(ATTRIBUTE, {})  # a Litestar route handler (slots): its own ``opt`` mapping
    marks[concern] = options
    return endpoint


def marks_of(endpoint: object) -> dict[str, Any] | None:
    """The options every concern recorded on ``endpoint`` (an attribute, or a Litestar handler's ``opt``)."""
    marks = getattr(endpoint, ATTRIBUTE, None)
    if isinstance(marks, dict):
        return marks
    opt = getattr(endpoint, "opt", None)
    if isinstance(opt, dict):
        marks = opt.get(ATTRIBUTE)
        if isinstance(marks, dict):
            return marks
    return None


def _kind(app: object) -> str | None:
    """Which router ``app`` is: "litestar", "starlette", "django", "unreadable" or None (not a router)."""
    if callable(getattr(getattr(app, "asgi_router", None), "handle_routing", None)):
        return "litestar"
    if hasattr(app, "routes"):
        return "starlette"
    if type(app).__module__.startswith(("django.", "asgi_resilience.integrations.django")) and hasattr(
        app, "get_response_async"
    ):
        return "django"
    if isinstance(getattr(app, "view_functions", None), dict):
        return "unreadable"  # Quart, Flask-like apps: werkzeug routing we do not evaluate
    return None


def find_router(app: object) -> object | None:
    """The app with a routing table (Starlette, FastAPI, Litestar, Django...) below ``app``, through middlewares."""
    for _ in range(16):
        if app is None or _kind(app) is not None:
            return app
        app = getattr(app, "app", None)
    return None


class EndpointOptions:
    """Finds the options a decorator put on the endpoint that will serve a request (one per middleware).

    ``app`` is what the middleware wraps: when the middleware sits *outside* a Starlette/FastAPI app
    (``resilient(app)``, a plain wrapper), Starlette has not set ``scope["app"]`` yet, so the routing
    table is found by walking down the wrapped middlewares once, at construction.
    """

    __slots__ = ("_cache", "_checked", "_kinds", "_router", "concern")

    def __init__(self, concern: str, app: object = None) -> None:
        self.concern = concern
        self._cache: dict[tuple[Any, ...], Any] = {}
        self._router = find_router(app) if app is not None else None
        self._kinds: dict[int, tuple[object, str | None]] = {}
        self._checked = False

    def lookup(self, scope: Scope) -> Any | None:
        """The options for this concern on the matched endpoint, or None (also for apps without routes)."""
        get = scope.get
        scope_app = get("app")
        path = get("path")
        method = get("method")
        root_path = get("root_path", "")
        kind = scope["type"]
        shared = get(SCOPE_KEY)
        if (
            shared is not None
            and shared[0] is scope_app
            and shared[1] is self._router
            and shared[5] is path
            and shared[3] is method
            and shared[4] is root_path
            and shared[2] is kind
        ):
            return shared[6].get(self.concern)  # another layer looked this request up already
        found = self._marks(scope, scope_app, (kind, method, root_path, path))
        scope[SCOPE_KEY] = (scope_app, self._router, kind, method, root_path, path, found)
        return found.get(self.concern)

    def _marks(self, scope: Scope, app: Any, request: tuple[Any, ...]) -> dict[str, Any]:
        """Every concern's options on the endpoint serving ``scope`` (cached per app, method and path)."""
        kind = self._kind_of(app) if app is not None else None
        if kind is None or kind == "unreadable":
            app = self._router
            kind = self._kind_of(app) if app is not None else None
        if not self._checked:
            self.check(app)
        if kind is None or kind == "unreadable":
            return _NONE
        key = (id(app), *request)
        found: dict[str, Any] | None = self._cache.get(key)
        if found is None:
            if kind == "starlette":
                found = self._search(getattr(app, "routes", ()), scope, 0)
            elif kind == "litestar":
                found = _merged(_litestar_endpoints(app, scope))
            else:
                found = _merged(_django_endpoints(scope))
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = found
        return found

    def check(self, app: object = None) -> None:
        """Warn once if endpoints of ``app`` carry options for this concern that cannot be honoured."""
        self._checked = True
        router = find_router(app) if app is not None else self._router
        if router is None or self._kind_of(router) != "unreadable":
            return
        views = getattr(router, "view_functions", {})
        ignored = sorted(str(name) for name, view in views.items() if self._options_of(view) is not None)
        if ignored:
            warnings.warn(
                f"@{self.concern} options on {', '.join(ignored[:5])} are ignored: asgi-resilience cannot read "
                f"the routes of {type(router).__name__} before it routes a request; configure the middleware's "
                "rules= for these paths instead",
                RuntimeWarning,
                stacklevel=2,
            )

    @property
    def checked(self) -> bool:
        """Whether :meth:`check` ran (it warns at most once)."""
        return self._checked

    def _kind_of(self, app: object) -> str | None:
        found = self._kinds.get(id(app))
        if found is not None and found[0] is app:
            return found[1]
        kind = _kind(app)
        if len(self._kinds) >= 16:
            self._kinds.clear()
        self._kinds[id(app)] = (app, kind)  # the app itself is kept, so that its id is never reused here
        return kind

    def _search(self, routes: Any, scope: Scope, depth: int) -> dict[str, Any]:
        """Every concern's options on the route chain serving ``scope``: an outer endpoint's (a mounted
        app's) options for a concern win over those of the endpoints inside it."""
        if depth > _MAX_DEPTH:
            return _NONE
        from starlette.routing import Match

        partial: Any = _MISSING
        for route in routes:
            try:
                match, child, endpoint, inner = _match(route, scope)
            except Exception:
                continue  # a route that cannot judge this scope does not serve it
            if match == Match.NONE:
                continue
            if match == Match.FULL:
                below = self._search(inner, {**scope, **child}, depth + 1) if inner is not None else _NONE
                return _merged([endpoint], below)
            if partial is _MISSING:
                partial = endpoint  # Starlette serves a PARTIAL match (wrong method) only if nothing matches fully
        return _NONE if partial is _MISSING else _merged([partial])

    def _options_of(self, endpoint: Any) -> Any | None:
        if endpoint is None:
            return None
        marks = marks_of(endpoint)
        return None if marks is None else marks.get(self.concern)


def _merged(endpoints: list[Any], below: dict[str, Any] = _NONE) -> dict[str, Any]:
    """The options of ``endpoints`` by concern (an earlier endpoint's win) over those of ``below``."""
    merged: dict[str, Any] | None = None
    for endpoint in reversed(endpoints):
        marks = marks_of(endpoint) if endpoint is not None else None
        if marks:
            if merged is None:
                merged = dict(below)
            merged.update((concern, options) for concern, options in marks.items() if options is not None)
    return below if merged is None else merged


def _litestar_endpoints(app: Any, scope: Scope) -> list[Any]:
    """The route handler serving ``scope`` in a Litestar app, and its function (Litestar's own router)."""
    path: str = scope.get("path", "/")
    root_path: str = scope.get("root_path", "")
    if root_path:
        path = path.split(root_path, maxsplit=1)[-1]  # as Litestar's ASGIRouter does
    if path != "/":  # Litestar's normalize_path
        path = "/" + path.strip("/")
        path = re.sub("//+", "/", path)
    try:
        handler = app.asgi_router.handle_routing(path=path, method=scope.get("method"))[1]
    except Exception:  # NotFound, MethodNotAllowed: the app answers it, no endpoint options apply
        return []
    return [handler, getattr(handler, "fn", None)]


def _django_endpoints(scope: Scope) -> list[Any]:
    """The view serving ``scope`` in a Django project (its URL resolver; the class of a class-based view)."""
    from django.urls import Resolver404, get_resolver

    path: str = scope.get("path", "/")
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :] or "/"
    try:
        match = get_resolver().resolve(path)
    except Resolver404:
        return []
    return [match.func, getattr(match.func, "view_class", None)]


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
