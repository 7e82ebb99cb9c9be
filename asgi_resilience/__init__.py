"""asgi-resilience: keep ASGI apps and httpx clients alive under overload and failure.

Pure ASGI middlewares (rate limiting, response caching, timeouts and load shedding, exception to
RFC 9457 problem details) and httpx transports (retry, circuit breaking). Importing the package
needs no optional extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgi_resilience._proxy import TrustedProxies
from asgi_resilience.caching import Cache, CacheMiddleware, CacheRule, cache
from asgi_resilience.client import (
    AsyncCircuitBreakerTransport,
    AsyncResilientTransport,
    AsyncRetryTransport,
    BreakerPolicy,
    CircuitBreakerTransport,
    HedgePolicy,
    ResilientTransport,
    RetryBudget,
    RetryPolicy,
    RetryTransport,
    async_resilient_client,
    resilient_client,
)
from asgi_resilience.errors import (
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceeded,
    DependencyUnavailable,
    Overloaded,
    Problem,
    ProblemDetails,
    RateLimitExceeded,
    ResilienceError,
    RetriesExhausted,
    StorageError,
    TimeLimitExceeded,
)
from asgi_resilience.observability import Telemetry, dashboard_app
from asgi_resilience.policies import (
    bulkhead,
    circuit_breaker,
    configure_policies,
    fail_closed,
    fail_open,
    fallback,
    hedge,
    last_good,
    pipeline,
    retry,
    time_limit,
)
from asgi_resilience.problems import ProblemDetailsMiddleware, add_problem_openapi
from asgi_resilience.ratelimit import RateLimitMiddleware, Rule, rate_limit
from asgi_resilience.stack import ResilienceStack, ResilientApp, resilient
from asgi_resilience.timeouts import (
    ConcurrencyLimitMiddleware,
    TimeoutMiddleware,
    current_deadline,
    remaining_time,
    timeout,
)

__all__ = [
    "AsyncCircuitBreakerTransport",
    "AsyncResilientTransport",
    "AsyncRetryTransport",
    "BreakerPolicy",
    "Cache",
    "CacheMiddleware",
    "CacheRule",
    "CircuitBreakerTransport",
    "CircuitOpenError",
    "ConcurrencyLimitMiddleware",
    "ConfigurationError",
    "DeadlineExceeded",
    "DependencyUnavailable",
    "HedgePolicy",
    "Overloaded",
    "Problem",
    "ProblemDetails",
    "ProblemDetailsMiddleware",
    "RateLimitExceeded",
    "RateLimitMiddleware",
    "ResilienceError",
    "ResilienceStack",
    "ResilientApp",
    "ResilientTransport",
    "RetriesExhausted",
    "RetryBudget",
    "RetryPolicy",
    "RetryTransport",
    "Rule",
    "StorageError",
    "Telemetry",
    "TimeLimitExceeded",
    "TimeoutMiddleware",
    "TrustedProxies",
    "add_problem_openapi",
    "async_resilient_client",
    "bulkhead",
    "cache",
    "circuit_breaker",
    "configure_policies",
    "current_deadline",
    "dashboard_app",
    "fail_closed",
    "fail_open",
    "fallback",
    "hedge",
    "last_good",
    "pipeline",
    "rate_limit",
    "remaining_time",
    "resilient",
    "resilient_client",
    "retry",
    "time_limit",
    "timeout",
]


if TYPE_CHECKING:
    # type checkers see only __version__, so a misspelt `from asgi_resilience import X` is an error
    __version__: str
else:

    def __getattr__(name: str) -> Any:
        if name == "__version__":
            from importlib.metadata import version

            return version("asgi-resilience")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
