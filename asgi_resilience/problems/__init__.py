"""RFC 9457 problem details for any ASGI app: exceptions become ``application/problem+json``.

:class:`ProblemDetailsMiddleware` maps every :class:`~asgi_resilience.ResilienceError`, every
:class:`~asgi_resilience.Problem` and the exceptions you name to problem responses; anything else is
a 500 that leaks nothing unless ``debug=True``.
"""

from __future__ import annotations

from asgi_resilience.problems._middleware import ProblemDetailsMiddleware, ProblemHandler
from asgi_resilience.problems._openapi import PROBLEM_SCHEMA, add_problem_openapi

__all__ = ["PROBLEM_SCHEMA", "ProblemDetailsMiddleware", "ProblemHandler", "add_problem_openapi"]
