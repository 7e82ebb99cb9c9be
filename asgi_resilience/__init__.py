"""asgi-resilience: keep ASGI apps and httpx clients alive under overload and failure.

Pure ASGI middlewares (rate limiting, response caching, timeouts and load shedding, exception to
RFC 9457 problem details) and httpx transports (retry, circuit breaking). Importing the package
needs no optional extra.
"""

from __future__ import annotations

from typing import Any

from asgi_resilience.errors import (
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceeded,
    Overloaded,
    Problem,
    ProblemDetails,
    ProblemDetailsMiddleware,
    RateLimitExceeded,
    ResilienceError,
    RetriesExhausted,
    StorageError,
)
from asgi_resilience.timeout import (  # the decorator `timeout` replaces the subpackage attribute
    ConcurrencyLimitMiddleware,
    TimeoutMiddleware,
    current_deadline,
    remaining_time,
    timeout,
)

__all__ = [
    "CircuitOpenError",
    "ConcurrencyLimitMiddleware",
    "ConfigurationError",
    "DeadlineExceeded",
    "Overloaded",
    "Problem",
    "ProblemDetails",
    "ProblemDetailsMiddleware",
    "RateLimitExceeded",
    "ResilienceError",
    "RetriesExhausted",
    "StorageError",
    "TimeoutMiddleware",
    "current_deadline",
    "remaining_time",
    "timeout",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        return version("asgi-resilience")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
