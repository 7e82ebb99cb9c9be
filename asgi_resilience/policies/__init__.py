"""Resilience for any call: circuit breaker, retry, time limit, bulkhead, fallback and hedging.

Decorators (async and sync functions, signatures kept) and context managers over the same
sans-io engines as the httpx transports::

    from asgi_resilience.policies import bulkhead, circuit_breaker, pipeline, retry, time_limit

    llm = pipeline(time_limit(30), retry(attempts=3, on=LLMError), circuit_breaker("llm"), bulkhead("llm", 10))

    @llm
    async def call_llm(prompt: str) -> str: ...

Named breakers and bulkheads are process-wide (``circuit_breaker("llm")`` is the same breaker
anywhere) and configurable in one place (:func:`configure_policies` or environment variables
``ASGI_RESILIENCE__<KIND>__<NAME>__<OPTION>``).
"""

from __future__ import annotations

from asgi_resilience.policies._base import Policy
from asgi_resilience.policies._breaker import BreakerPolicy, BreakerTransition
from asgi_resilience.policies._breaking import Breaker, circuit_breaker
from asgi_resilience.policies._budget import RetryBudget
from asgi_resilience.policies._bulkhead import Bulkhead, bulkhead
from asgi_resilience.policies._fallback import Fallback, fail_closed, fail_open, fallback, last_good
from asgi_resilience.policies._hedge import Hedge, HedgePolicy, hedge
from asgi_resilience.policies._named import ENV_PREFIX, configure_policies
from asgi_resilience.policies._pipeline import Pipeline, pipeline
from asgi_resilience.policies._registry import reset_registries
from asgi_resilience.policies._retry import RetryPolicy
from asgi_resilience.policies._retrying import Retrying, retry
from asgi_resilience.policies._time_limit import TimeLimit, time_limit

__all__ = [
    "ENV_PREFIX",
    "Breaker",
    "BreakerPolicy",
    "BreakerTransition",
    "Bulkhead",
    "Fallback",
    "Hedge",
    "HedgePolicy",
    "Pipeline",
    "Policy",
    "RetryBudget",
    "RetryPolicy",
    "Retrying",
    "TimeLimit",
    "bulkhead",
    "circuit_breaker",
    "configure_policies",
    "fail_closed",
    "fail_open",
    "fallback",
    "hedge",
    "last_good",
    "pipeline",
    "reset_policies",
    "retry",
    "time_limit",
]


def reset_policies() -> None:
    """Forget every named policy, its state and configuration (for tests)."""
    from asgi_resilience.policies._named import reset_configuration

    reset_registries()
    reset_configuration()
