"""Response caching: a shared HTTP cache (RFC 9111) as pure ASGI middleware.

* :class:`CacheMiddleware`: the adapter (stores, serves, revalidates, collapses, serves stale);
* :class:`Cache`: the storage an app can hold to ``purge(url)``, ``purge_tags(*tags)``, ``clear()``;
* :class:`CacheRule` and the endpoint decorator :func:`cache`: freshness for apps that set no headers.

The package attribute ``cache`` is the decorator function (there is no ``cache`` submodule).
"""

from __future__ import annotations

from asgi_resilience.caching._cache import Cache
from asgi_resilience.caching._middleware import CacheMiddleware, cache
from asgi_resilience.caching._policy import CacheRule

__all__ = ["Cache", "CacheMiddleware", "CacheRule", "cache"]
