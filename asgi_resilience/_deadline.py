"""The deadline of the request being served, published through a context variable.

TimeoutMiddleware sets it; ``current_deadline()`` and ``remaining_time()`` read it anywhere in the
same task (and in tasks started from it), and the httpx transports cap outbound calls with it so a
call made while serving a request never outlives that request.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["current_deadline", "deadline_scope", "remaining_time"]

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("asgi_resilience_deadline", default=None)


def current_deadline() -> float | None:
    """The absolute deadline (``time.monotonic()`` clock) of the current request, or None."""
    return _DEADLINE.get()


def remaining_time() -> float | None:
    """Seconds left before the current request's deadline (never negative), or None outside one."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


@contextmanager
def deadline_scope(deadline: float | None) -> Iterator[float | None]:
    """Publish ``deadline`` (absolute, monotonic) for the block; a nested scope can only shorten it."""
    outer = _DEADLINE.get()
    effective = deadline if outer is None else (outer if deadline is None else min(outer, deadline))
    token = _DEADLINE.set(effective)
    try:
        yield effective
    finally:
        _DEADLINE.reset(token)
