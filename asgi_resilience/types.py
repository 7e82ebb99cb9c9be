"""ASGI types, so that no module needs a framework import to speak ASGI.

Every framework types the ASGI callable differently: Starlette with ``MutableMapping[str, Any]``,
Litestar and asgiref with ``TypedDict`` unions, Django with ``dict[str, Any]``. No precise type fits
them all in both directions (a middleware is called *by* the framework and calls the framework), so
the scope and message types here are deliberately loose: any framework's app is an :data:`ASGIApp`,
and every middleware of this package is an ASGI app in every framework's own typing (Starlette's
``Middleware(...)``, Litestar's ``DefineMiddleware(...)``, a plain ``app = RateLimitMiddleware(app)``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send"]

Scope = Any
"""An ASGI connection scope: a ``MutableMapping[str, Any]`` at run time (typed loosely, see above)."""
Message = Any
"""An ASGI event: a ``MutableMapping[str, Any]`` at run time."""
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]


class ASGIApp(Protocol):
    """Any ASGI 3 application: ``await app(scope, receive, send)``.

    Starlette, FastAPI, Litestar, Quart, Django's ``get_asgi_application()``, the MCP SDK's Starlette
    apps, a plain ``async def app(scope, receive, send)`` and every middleware here satisfy it.
    """

    def __call__(self, scope: Any, receive: Any, send: Any, /) -> Awaitable[None]: ...
