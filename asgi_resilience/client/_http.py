"""Request and response plumbing: turning httpx requests and outcomes into the policies' inputs.

The per-origin key, how far a failed request got (:class:`Phase`), whether an outcome counts
against the origin's breaker, and the records and events a call reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx

from asgi_resilience.errors import CircuitOpenError
from asgi_resilience.policies._breaker import BreakerPolicy, Result
from asgi_resilience.policies._retry import Phase

__all__ = ["AttemptRecord", "RetryEvent", "breaker_result", "origin_of", "phase_of"]

_ORIGINS: dict[tuple[str, str, int | None], str] = {}


class AttemptRecord(NamedTuple):
    """One attempt of a call, listed in ``response.extensions["resilience"]``.

    Attributes:
        attempt: 1 for the first attempt.
        outcome: ``success``, ``failure`` (a retryable status, a 5xx or a network error),
            ``timeout`` or ``rejected`` (refused by an open circuit breaker).
        duration: seconds until the response headers (or the error).
        delay: seconds waited before the next attempt (0 for the last one).
        status: the response status, None after an error.
        error: the exception class name, None after a response.

    Items are also readable as ``record["outcome"]``.
    """

    attempt: int
    outcome: str
    duration: float
    delay: float
    status: int | None = None
    error: str | None = None

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            if key not in self._fields:
                raise KeyError(key)
            return getattr(self, key)
        return tuple.__getitem__(self, key)


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Passed to ``on_retry`` (``kind="retry"``) and ``on_give_up`` (``kind="give_up"``) hooks.

    ``reason`` is what failed (``"status 503"``, ``"ConnectError"``) for a retry, and why the call
    stopped for a give-up: ``attempts``, ``budget``, ``deadline``, ``retry_after`` or ``body``.
    ``origin`` is ``scheme://host:port``; the URL's query string is never included.
    """

    kind: str
    origin: str
    method: str
    path: str
    attempt: int
    delay: float
    reason: str
    status: int | None = None
    error: BaseException | None = None


def origin_of(url: httpx.URL) -> str:
    """``scheme://host:port`` (default port filled in), the key of breakers and budgets."""
    scheme = url.scheme
    host = url.host
    port = url.port
    key = (scheme, host, port)
    found = _ORIGINS.get(key)
    if found is None:
        bracketed = f"[{host}]" if ":" in host else host
        found = f"{scheme}://{bracketed}:{port or (443 if scheme == 'https' else 80)}"
        if len(_ORIGINS) >= 4096:
            _ORIGINS.clear()
        _ORIGINS[key] = found
    return found


def phase_of(exc: BaseException) -> Phase:
    """How far the request got before ``exc`` (outbound.md C1)."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return Phase.NOT_SENT
    if isinstance(exc, CircuitOpenError):
        return Phase.FATAL  # our own refusal: retrying at once cannot succeed
    if isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
        return Phase.SENT
    return Phase.FATAL


def breaker_result(exc: BaseException | None, status: int | None, policy: BreakerPolicy) -> Result:
    """Whether an outcome counts against the origin (transport errors and 5xx, by default)."""
    if exc is None:
        return policy.classify_status(status) if status is not None else Result.SUCCESS
    if isinstance(exc, (httpx.PoolTimeout, CircuitOpenError, httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
        return Result.IGNORED  # local overload or our own mistake, not the origin's health
    if isinstance(exc, httpx.TransportError):
        return Result.FAILURE
    return Result.IGNORED  # cancellation, GeneratorExit, bugs in user code
