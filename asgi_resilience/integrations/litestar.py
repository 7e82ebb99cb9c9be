"""Litestar: exceptions raised in route handlers become RFC 9457 problem responses.

::

    from litestar import Litestar
    from asgi_resilience import resilient
    from asgi_resilience.integrations.litestar import ResiliencePlugin

    app = resilient(Litestar(route_handlers=[...], plugins=[ResiliencePlugin()]), timeout=2.0)

Litestar answers exceptions raised in its handlers itself, inside the app, so an outer
``ProblemDetailsMiddleware`` never sees them. The plugin registers one exception handler (for
``Exception``, through ``on_app_init``) that renders :class:`~asgi_resilience.Problem`, every
:class:`~asgi_resilience.ResilienceError`, Litestar's ``HTTPException`` (``NotFoundException``...) and
``ValidationException`` (one problem with an ``errors`` list) and anything else (a 500 that leaks
nothing) as ``application/problem+json``. The response still passes through Litestar's own
middlewares (CORS...). Handlers you register for a more specific exception class or a status code
keep precedence, as Litestar's lookup gives them.

Behind the stack, the stack's ``ProblemDetailsMiddleware`` options (``mapping``, ``debug``,
``type_base``, ``request_id``...) apply; without it, the options given to the plugin do.

Endpoint options (``@cache``, ``@timeout``, ``@rate_limit`` above or below ``@get``) need no plugin:
the middlewares find the route handler through Litestar's own router.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar import Request, Response
from litestar.config.app import AppConfig
from litestar.plugins import InitPlugin
from litestar.response.base import ASGIResponse

from asgi_resilience._asgi import send_problem
from asgi_resilience.problems import ProblemDetailsMiddleware, ProblemHandler
from asgi_resilience.problems._middleware import SCOPE_KEY

__all__ = ["ResiliencePlugin"]


async def _unused_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    raise RuntimeError("the plugin's ProblemDetailsMiddleware only resolves problems")


class _ProblemASGIResponse(ASGIResponse):
    """Resolves the problem when sent (problem handlers may be async; Litestar's exception handlers are not)."""

    def __init__(self, exc: Exception, resolver: ProblemDetailsMiddleware) -> None:
        super().__init__(status_code=500)
        self._exc = exc
        self._resolver = resolver

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        resolver: ProblemDetailsMiddleware = scope.get(SCOPE_KEY) or self._resolver
        problem = await resolver.resolve(self._exc, scope)
        await send_problem(send, problem, type_base=resolver.type_base, head=scope.get("method") == "HEAD")


class _ProblemResponse(Response[bytes]):
    def __init__(self, exc: Exception, resolver: ProblemDetailsMiddleware) -> None:
        super().__init__(content=b"", status_code=500)
        self._exc = exc
        self._resolver = resolver

    def to_asgi_response(self, app: Any, request: Any, **kwargs: Any) -> ASGIResponse:
        return _ProblemASGIResponse(self._exc, self._resolver)


class ResiliencePlugin(InitPlugin):
    """Register asgi-resilience's problem rendering as the Litestar app's exception handler.

    Args:
        mapping: ``{ExceptionClass: status | handler}`` for apps that are not behind the stack's
            ``ProblemDetailsMiddleware`` (behind it, that middleware's options apply).
        debug: put exception messages and tracebacks in problem bodies (never in production).
        type_base: an absolute URI that turns problem type slugs into absolute URIs.
        request_id_header: a request header copied into the ``request_id`` extension, or None.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_resolver",)

    def __init__(
        self,
        *,
        mapping: Mapping[type[BaseException], int | ProblemHandler] | None = None,
        debug: bool = False,
        type_base: str | None = None,
        request_id_header: str | None = "X-Request-ID",
    ) -> None:
        self._resolver = ProblemDetailsMiddleware(
            _unused_app,
            mapping=mapping,
            debug=debug,
            type_base=type_base,
            request_id_header=request_id_header,
        )

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        handlers = dict(app_config.exception_handlers or {})
        if Exception not in handlers and 500 not in handlers:
            handlers[Exception] = self._handler
        app_config.exception_handlers = handlers
        return app_config

    def _handler(self, request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        return _ProblemResponse(exc, self._resolver)

    _handler.__asgi_resilience__ = True  # type: ignore[attr-defined]  # found by ProblemDetailsMiddleware
