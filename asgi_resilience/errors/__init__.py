"""Errors: the exception tree and RFC 9457 problem details (the bottom layer: it imports nothing of ours).

The middleware that renders them is :class:`~asgi_resilience.problems.ProblemDetailsMiddleware`.

Every exception asgi-resilience raises derives from :class:`ResilienceError`::

    Exception
    └── ResilienceError            status, type slug, title, retryable, retry_after
        ├── ConfigurationError     (also ValueError) a bad option, raised at construction
        ├── StorageError           503 storage-unavailable: a backend such as Redis failed
        ├── RateLimitExceeded      429 rate-limited, carries violated_policies
        ├── Overloaded             503 overloaded: load shed by a concurrency limit or a bulkhead
        ├── DeadlineExceeded       504 timeout: the request ran out of time
        │   └── TimeLimitExceeded  (also TimeoutError) a call under time_limit ran out of time
        ├── DependencyUnavailable  503 dependency-unavailable: a fail_closed call's dependency is down
        ├── CircuitOpenError       503 circuit-open (also httpx.TransportError), carries origin
        ├── RetriesExhausted       502 retries-exhausted (also httpx.TransportError)
        └── Problem                any 4xx/5xx an app raises to answer with an exact problem
"""

from __future__ import annotations

from asgi_resilience.errors._exceptions import (
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceeded,
    DependencyUnavailable,
    Overloaded,
    RateLimitExceeded,
    ResilienceError,
    RetriesExhausted,
    StorageError,
    TimeLimitExceeded,
)
from asgi_resilience.errors._problem import PROBLEM_MEDIA_TYPE, Problem, ProblemDetails

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "CircuitOpenError",
    "ConfigurationError",
    "DeadlineExceeded",
    "DependencyUnavailable",
    "Overloaded",
    "Problem",
    "ProblemDetails",
    "RateLimitExceeded",
    "ResilienceError",
    "RetriesExhausted",
    "StorageError",
    "TimeLimitExceeded",
]
