"""Framework glue that cannot be generic ASGI, one module per framework (each imports its framework).

* :mod:`asgi_resilience.integrations.litestar`: ``ResiliencePlugin``, exceptions raised in Litestar
  handlers become problem+json through Litestar's own exception handlers.
* :mod:`asgi_resilience.integrations.django`: ``ProblemDetailsMiddleware`` for ``settings.MIDDLEWARE``,
  Django's ``Http404``/``PermissionDenied``/``ValidationError`` and every error become problem+json.
* :mod:`asgi_resilience.integrations.mcp`: MCP servers (Streamable HTTP) behind the stack.

Endpoint decorators (``@cache``, ``@timeout``, ``@rate_limit``) need no integration: the middlewares
read Starlette, FastAPI, Litestar and Django routes themselves.
"""

from __future__ import annotations

__all__: list[str] = []
