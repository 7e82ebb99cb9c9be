"""The exception tree of asgi-resilience (see the package docstring of ``asgi_resilience.errors``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import httpx

__all__ = [
    "CircuitOpenError",
    "ConfigurationError",
    "DeadlineExceeded",
    "DependencyUnavailable",
    "Overloaded",
    "RateLimitExceeded",
    "ResilienceError",
    "RetriesExhausted",
    "StorageError",
    "TimeLimitExceeded",
]


class ResilienceError(Exception):
    """Root of every exception asgi-resilience raises.

    Each class says how it maps to HTTP, so that :class:`ProblemDetailsMiddleware` (or any user
    handler) can render it without a lookup table:

    Attributes:
        status: the HTTP status the error maps to.
        type: a stable problem ``type`` slug (RFC 9457 section 3.1.1), ``None`` for ``about:blank``.
        title: a short, stable, human-readable summary of the problem type.
        retryable: whether retrying the same request later can succeed.
        retry_after: seconds after which a retry may succeed, sent as ``Retry-After``.
        expose: whether ``str(exc)`` is safe to show to clients as the problem ``detail``.
    """

    status: int = 500
    type: str | None = None
    title: str = "Internal Server Error"
    retryable: bool = False
    expose: bool = False

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message or self.title)
        if retry_after is not None and (not math.isfinite(retry_after) or retry_after < 0):
            raise ValueError(f"retry_after must be a finite number of seconds >= 0, got {retry_after!r}")
        self.retry_after: float | None = retry_after

    @property
    def extensions(self) -> Mapping[str, Any]:
        """RFC 9457 extension members this error adds to its problem document."""
        return {}

    @property
    def headers(self) -> Mapping[str, str]:
        """Response headers this error asks for (``Retry-After`` from :attr:`retry_after`)."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(math.ceil(self.retry_after))}


class ConfigurationError(ResilienceError, ValueError):
    """An option is invalid. Raised at construction time, never per request.

    The message says which option is wrong and what to change.
    """


class StorageError(ResilienceError):
    """A storage backend (such as Redis) failed or timed out. The original error is ``__cause__``."""

    status = 503
    type = "storage-unavailable"
    title = "Service Unavailable"
    retryable = True


class RateLimitExceeded(ResilienceError):
    """A request exceeded a rate limit (RFC 6585 section 4: 429 Too Many Requests)."""

    status = 429
    type = "rate-limited"
    title = "Too Many Requests"
    retryable = True
    expose = True

    def __init__(
        self,
        message: str = "Rate limit exceeded",
        *,
        retry_after: float | None = None,
        violated_policies: list[str] | tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.violated_policies: tuple[str, ...] = tuple(violated_policies)

    @property
    def extensions(self) -> Mapping[str, Any]:
        return {"violated_policies": list(self.violated_policies)}


class Overloaded(ResilienceError):
    """The server sheds load: too many requests in flight or queued (503)."""

    status = 503
    type = "overloaded"
    title = "Service Unavailable"
    retryable = True
    expose = True


class DeadlineExceeded(ResilienceError):
    """The request's deadline passed before a response could be produced (504)."""

    status = 504
    type = "timeout"
    title = "Gateway Timeout"
    retryable = True
    expose = True


class TimeLimitExceeded(DeadlineExceeded, TimeoutError):
    """A call protected by ``time_limit`` ran out of time (504; also a ``TimeoutError``)."""


class DependencyUnavailable(ResilienceError):
    """A dependency is down and the call fails closed (``fail_closed``): 503, the cause chained."""

    status = 503
    type = "dependency-unavailable"
    title = "Service Unavailable"
    retryable = True
    expose = True


class CircuitOpenError(ResilienceError, httpx.TransportError):
    """A circuit breaker is open for ``origin``; the call was refused without touching the network.

    Also an ``httpx.TransportError``, so code that handles httpx failures handles this one too.
    """

    status = 503
    type = "circuit-open"
    title = "Service Unavailable"
    retryable = True
    expose = True

    def __init__(
        self,
        message: str = "Circuit breaker is open",
        *,
        retry_after: float | None = None,
        origin: str | None = None,
        request: httpx.Request | None = None,
    ) -> None:
        ResilienceError.__init__(self, message, retry_after=retry_after)
        self._request = request
        self.origin = origin

    @classmethod
    def _quick(cls, message: str, retry_after: float, origin: str) -> CircuitOpenError:
        """The same error built without the ``__init__`` chain (about a third of the cost), for
        an open breaker's refusal; ``retry_after`` is the breaker's own, finite and >= 0."""
        error = cls.__new__(cls, message)
        error.retry_after = retry_after
        error.origin = origin
        error._request = None
        return error


class RetriesExhausted(ResilienceError, httpx.TransportError):
    """Every allowed attempt of an outbound call failed; the last error is ``__cause__`` (502)."""

    status = 502
    type = "retries-exhausted"
    title = "Bad Gateway"
    retryable = True
    expose = True

    def __init__(
        self,
        message: str = "All retry attempts failed",
        *,
        attempts: int = 0,
        response: httpx.Response | None = None,
        request: httpx.Request | None = None,
    ) -> None:
        ResilienceError.__init__(self, message)
        self._request = request
        self.attempts = attempts
        self.response = response
