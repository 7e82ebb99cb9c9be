"""Timeouts, deadlines and load shedding.

* :class:`TimeoutMiddleware`: a per-request deadline (504 before the response starts, never a
  second start after), per-path rules and the ``@timeout`` endpoint decorator.
* :func:`current_deadline` / :func:`remaining_time`: the deadline of the request being served.
* :class:`ConcurrencyLimitMiddleware`: a bulkhead with a bounded queue, partitions and an
  adaptive limit; sheds load with 503 before the app is called.
"""

from __future__ import annotations

from asgi_resilience._deadline import current_deadline, deadline_scope, remaining_time
from asgi_resilience.timeouts._adaptive import AdaptiveLimit
from asgi_resilience.timeouts._concurrency import ConcurrencyLimitMiddleware
from asgi_resilience.timeouts._headers import DEADLINE_HEADERS, client_timeout, parse_grpc_timeout, parse_timeout_ms
from asgi_resilience.timeouts._middleware import TimeoutMiddleware
from asgi_resilience.timeouts._rules import timeout

__all__ = [
    "DEADLINE_HEADERS",
    "AdaptiveLimit",
    "ConcurrencyLimitMiddleware",
    "TimeoutMiddleware",
    "client_timeout",
    "current_deadline",
    "deadline_scope",
    "parse_grpc_timeout",
    "parse_timeout_ms",
    "remaining_time",
    "timeout",
]
