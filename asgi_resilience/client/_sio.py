"""What the sync transports do differently from the async ones (the twin is ``_aio.py``)."""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any

import httpx

from asgi_resilience.client._hooks import Hook, call_hook
from asgi_resilience.errors import ConfigurationError

if TYPE_CHECKING:
    from asgi_resilience.client._retrying import Call

__all__ = ["Slots", "run_hook", "send", "send_hedged"]


def send(transport: httpx.BaseTransport, request: httpx.Request, limit: float | None) -> httpx.Response:
    """Send one attempt. Threads cannot be cancelled: the httpx timeouts (capped by the deadline) bound it."""
    return transport.handle_request(request)


def send_hedged(
    transport: httpx.BaseTransport, request: httpx.Request, limit: float | None, call: Call
) -> httpx.Response:
    """Never reached: the sync transports refuse ``hedge=`` (threads cannot cancel the losing attempts)."""
    raise ConfigurationError("hedging needs an async transport")


def run_hook(hook: Hook, event: Any) -> None:
    call_hook(hook, event)


class Slots:
    """``max_concurrent`` slots of a transport."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._semaphore = threading.BoundedSemaphore(size)

    def acquire(self, wait: float) -> bool:
        return self._semaphore.acquire(timeout=None if wait == math.inf else wait)

    def release(self) -> None:
        self._semaphore.release()
