"""Rate limiting: :class:`RateLimitMiddleware`, :class:`Rule` and the ``@rate_limit`` decorator.

Layers: ``_policy`` (sans-io rules and one pure decision function per strategy), ``_storage``
(in-process memory and Redis through one Lua script per request) and ``_middleware`` (the ASGI
adapter: keys, headers, 429s, store-failure policy).
"""

from __future__ import annotations

from asgi_resilience.ratelimit._middleware import RateLimitMiddleware, rate_limit
from asgi_resilience.ratelimit._policy import Decision, Rule
from asgi_resilience.ratelimit._storage import MemoryStorage, RateLimitStorage, RedisStorage

__all__ = ["Decision", "MemoryStorage", "RateLimitMiddleware", "RateLimitStorage", "RedisStorage", "Rule", "rate_limit"]
