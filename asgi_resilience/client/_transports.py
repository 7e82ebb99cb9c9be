"""The httpx transports, both flavours: the async source and its generated synchronous twin."""

from __future__ import annotations

from asgi_resilience.client._async_transports import (
    AsyncCircuitBreakerTransport,
    AsyncResilientTransport,
    AsyncRetryTransport,
)
from asgi_resilience.client._sync_transports import CircuitBreakerTransport, ResilientTransport, RetryTransport

__all__ = [
    "AsyncCircuitBreakerTransport",
    "AsyncResilientTransport",
    "AsyncRetryTransport",
    "CircuitBreakerTransport",
    "ResilientTransport",
    "RetryTransport",
]
