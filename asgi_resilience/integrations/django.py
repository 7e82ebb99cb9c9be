"""Django (ASGI): exceptions raised in views become RFC 9457 problem responses.

::

    # settings.py
    MIDDLEWARE = [..., "asgi_resilience.integrations.django.ProblemDetailsMiddleware"]

    # asgi.py
    from asgi_resilience import resilient

    from asgi_resilience.integrations.django import get_asgi_application

    application = resilient(get_asgi_application(), rate_limit="100/minute", timeout=10.0)

``get_asgi_application`` here is Django's, with one difference: a request cancelled from outside (a
timeout of the stack) cancels the view, as a client disconnect does. Django's own handler runs the
view in a task of its own that an outer cancellation leaves running (and its request body file
open); this one tells Django the client went away instead, so Django cancels the view and cleans up.

Django answers exceptions itself (its 404/403/500 pages), inside the handler, so an outer
``ProblemDetailsMiddleware`` never sees them. This Django middleware renders, as
``application/problem+json``: :class:`~asgi_resilience.Problem` and every
:class:`~asgi_resilience.ResilienceError`, ``Http404`` (404), ``PermissionDenied`` (403),
``SuspiciousOperation``/``BadRequest`` (400), ``ValidationError`` (400, one problem with an ``errors``
list) and anything else (a 500 that leaks nothing unless ``DEBUG``). A request that matched no URL
gets a problem 404 instead of Django's HTML page. Put it last in ``MIDDLEWARE`` (closest to the
views) so the other middlewares still see, and can decorate, the error response.

Behind the stack, the stack's ``ProblemDetailsMiddleware`` options (``mapping``, ``type_base``...)
apply; otherwise the defaults, with ``debug`` following ``settings.DEBUG``.

Per-view options need no other integration: ``@cache(ttl=30)``, ``@timeout(2.0)`` and
``@rate_limit("5/minute")`` on a view function (or a class-based view's class) are found by the
middlewares through Django's URL resolver, before the request reaches Django.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import django
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler as _DjangoASGIHandler
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase

from asgi_resilience.errors._problem import ProblemDetails, render
from asgi_resilience.problems import ProblemDetailsMiddleware as _ASGIProblemDetailsMiddleware
from asgi_resilience.problems._middleware import SCOPE_KEY

__all__ = ["ASGIHandler", "ProblemDetailsMiddleware", "get_asgi_application"]

_CANCEL_GRACE = 1.0  # seconds a cancelled view gets to finish its cleanup


class ASGIHandler(_DjangoASGIHandler):
    """Django's ASGI handler; an outer cancellation (a timeout) becomes a client disconnect for Django.

    It also answers the ASGI lifespan protocol (Django has no startup or shutdown of its own), so the
    stack's lifespan shutdown (closing the Redis client it created) runs under any server.
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await super().__call__(scope, receive, send)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        gone = asyncio.Event()

        async def receive_or_gone() -> Any:
            if gone.is_set():
                return {"type": "http.disconnect"}
            message = asyncio.ensure_future(receive())
            cancelled = asyncio.ensure_future(gone.wait())
            try:
                await asyncio.wait({message, cancelled}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                cancelled.cancel()
                if not message.done():
                    message.cancel()
            if message.done() and not message.cancelled():
                return message.result()
            return {"type": "http.disconnect"}

        task = asyncio.ensure_future(super().handle(scope, receive_or_gone, send))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            gone.set()  # Django's disconnect listener cancels the view and closes the request body
            with anyio.move_on_after(_CANCEL_GRACE, shield=True):
                await asyncio.wait({task})
            if not task.done():
                task.cancel()
            raise


def get_asgi_application() -> ASGIHandler:
    """Django's ``get_asgi_application()``, returning the cancellation-aware :class:`ASGIHandler`."""
    django.setup(set_prefix=False)
    return ASGIHandler()


async def _unused_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    raise RuntimeError("the Django middleware's ProblemDetailsMiddleware only resolves problems")


class ProblemDetailsMiddleware:
    """Django middleware (async): view exceptions and unmatched URLs as problem+json responses.

    .. versionadded:: 0.1.0
    """

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]]) -> None:
        if not iscoroutinefunction(get_response):  # pragma: no cover - Django adapts it (async_capable)
            raise TypeError("ProblemDetailsMiddleware runs under ASGI only (async get_response)")
        self.get_response = get_response
        self._fallback = _ASGIProblemDetailsMiddleware(_unused_app, debug=bool(settings.DEBUG))
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = await self.get_response(request)
        if (
            response.status_code == 404
            and getattr(request, "resolver_match", None) is None
            and not response.get("Content-Type", "").startswith("application/problem+json")
        ):
            return await self._problem(request, Http404())  # no URL matched: Django's HTML 404 page
        return response

    async def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse:
        return await self._problem(request, exception)

    async def _problem(self, request: HttpRequest, exception: Exception) -> HttpResponse:
        scope: dict[str, Any] = getattr(request, "scope", None) or {"type": "http", "headers": []}
        resolver: _ASGIProblemDetailsMiddleware = scope.get(SCOPE_KEY) or self._fallback
        problem = await resolver.resolve(exception, scope)
        return _response(problem, resolver.type_base)


def _response(problem: ProblemDetails, type_base: str | None) -> HttpResponse:
    body, headers = render(problem, type_base=type_base)
    response = HttpResponse(body, status=problem.status, content_type="application/problem+json")
    for name, value in headers:
        key = name.decode("latin-1")
        if key.lower() not in {"content-type", "content-length"}:
            response[key] = value.decode("latin-1")
    return response
