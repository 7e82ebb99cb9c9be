"""Resilience for any call: the engines (circuit breaker, retry, retry budget) and the policies."""

from __future__ import annotations

from asgi_resilience.policies._breaker import BreakerPolicy, BreakerTransition
from asgi_resilience.policies._budget import RetryBudget
from asgi_resilience.policies._retry import RetryPolicy

__all__ = ["BreakerPolicy", "BreakerTransition", "RetryBudget", "RetryPolicy"]
