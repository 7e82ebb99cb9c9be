"""Import path kept for compatibility: the retry engine lives in :mod:`asgi_resilience.policies`."""

from __future__ import annotations

from asgi_resilience.policies._budget import BudgetRegistry, BudgetState, RetryBudget
from asgi_resilience.policies._retry import (
    IDEMPOTENT_METHODS,
    Decision,
    Outcome,
    Phase,
    RetryPolicy,
    parse_retry_after,
)

__all__ = [
    "IDEMPOTENT_METHODS",
    "BudgetRegistry",
    "BudgetState",
    "Decision",
    "Outcome",
    "Phase",
    "RetryBudget",
    "RetryPolicy",
    "parse_retry_after",
]
