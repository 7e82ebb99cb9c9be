"""Former home of the transports' core, now split by job (kept so this import path still works).

``_http`` (request/response plumbing), ``_hooks`` (hooks and logging), ``_tee`` (request body
replay), ``_body`` (response body deadlines), ``_retrying`` (the retry driver), ``_breaking`` (the
breaker driver); the registries and the metric table live in :mod:`asgi_resilience.policies`.
"""

from __future__ import annotations

from asgi_resilience.client._http import AttemptRecord, RetryEvent
from asgi_resilience.policies._registry import BREAKERS, BUDGETS

__all__ = ["BREAKERS", "BUDGETS", "AttemptRecord", "RetryEvent"]
