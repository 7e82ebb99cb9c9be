"""The demo: ``python -m asgi_resilience.demo [--redis URL] [--port N]``.

A small API wrapped by the full stack (problem details, rate limiting, caching, timeout, load
shedding) on in-memory defaults (Redis with ``--redis``), a simulated flaky upstream called through the
resilient httpx transport, and the live dashboard mounted at ``/_resilience``.
"""

from __future__ import annotations

from asgi_resilience.demo._app import Demo, build_demo

__all__ = ["Demo", "build_demo"]
