"""Outbound resilience for httpx: retries, circuit breakers, budgets and one end-to-end deadline.

Wrapping transports (sync and async twins) over a sans-io core::

    import httpx
    from asgi_resilience.client import AsyncResilientTransport, BreakerPolicy, RetryPolicy

    client = httpx.AsyncClient(transport=AsyncResilientTransport(retry=RetryPolicy(attempts=3)))

or, keeping ``limits``/``http2``/``verify``/``proxy`` working, ``async_resilient_client(http2=True)``.
"""

from __future__ import annotations

from asgi_resilience.client._clients import async_resilient_client, resilient_client
from asgi_resilience.client._http import AttemptRecord, RetryEvent
from asgi_resilience.client._transports import (
    AsyncCircuitBreakerTransport,
    AsyncResilientTransport,
    AsyncRetryTransport,
    CircuitBreakerTransport,
    ResilientTransport,
    RetryTransport,
)
from asgi_resilience.policies._breaker import BreakerPolicy, BreakerTransition
from asgi_resilience.policies._budget import RetryBudget
from asgi_resilience.policies._hedge import HedgePolicy
from asgi_resilience.policies._retry import RetryPolicy

__all__ = [
    "AsyncCircuitBreakerTransport",
    "AsyncResilientTransport",
    "AsyncRetryTransport",
    "AttemptRecord",
    "BreakerPolicy",
    "BreakerTransition",
    "CircuitBreakerTransport",
    "HedgePolicy",
    "ResilientTransport",
    "RetryBudget",
    "RetryEvent",
    "RetryPolicy",
    "RetryTransport",
    "async_resilient_client",
    "resilient_client",
]
