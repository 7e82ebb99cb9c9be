"""Import path kept for compatibility: the breaker engine lives in :mod:`asgi_resilience.policies`."""

from __future__ import annotations

from asgi_resilience.policies._breaker import (
    Admission,
    BreakerPolicy,
    BreakerRegistry,
    BreakerTransition,
    CircuitBreaker,
    Result,
    State,
)

__all__ = ["Admission", "BreakerPolicy", "BreakerRegistry", "BreakerTransition", "CircuitBreaker", "Result", "State"]
