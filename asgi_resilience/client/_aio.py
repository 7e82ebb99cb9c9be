"""What the async transports do differently from the sync ones (the twin is ``_sio.py``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from asgi_resilience.client._hooks import Hook, await_hook, call_hook

if TYPE_CHECKING:
    from asgi_resilience.client._retrying import Call

__all__ = ["Slots", "run_hook", "send", "send_hedged"]


async def send(transport: httpx.AsyncBaseTransport, request: httpx.Request, limit: float | None) -> httpx.Response:
    """Send one attempt; ``limit`` (seconds) cancels it when the phases together could outlast the deadline."""
    if limit is None:
        return await transport.handle_async_request(request)
    try:
        # the httpx timeouts bound each phase; this bounds their sum by the deadline
        with anyio.fail_after(limit):
            return await transport.handle_async_request(request)
    except TimeoutError:
        raise httpx.ReadTimeout("the call's total deadline passed", request=request) from None


async def send_hedged(
    transport: httpx.AsyncBaseTransport, request: httpx.Request, limit: float | None, call: Call
) -> httpx.Response:
    """Send one attempt as a race of hedged copies (the policies' hedge engine); ``limit`` bounds the race."""
    hedger = call.hedger
    assert hedger is not None  # only called for a hedged call

    async def attempt() -> httpx.Response:
        return await transport.handle_async_request(request)

    async def discard(response: httpx.Response) -> None:
        await response.aclose()

    if limit is None:
        return await hedger.race(attempt, budget=call.budget, accept=call.accepts, discard=discard)
    try:
        with anyio.fail_after(limit):
            return await hedger.race(attempt, budget=call.budget, accept=call.accepts, discard=discard)
    except TimeoutError:
        raise httpx.ReadTimeout("the call's total deadline passed", request=request) from None


async def run_hook(hook: Hook, event: Any) -> None:
    pending = call_hook(hook, event)
    if pending is not None:
        await await_hook(pending)


class Slots:
    """``max_concurrent`` slots of a transport; the semaphore is created in the event loop on first use."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._semaphore: anyio.Semaphore | None = None

    async def acquire(self, wait: float) -> bool:
        if self._semaphore is None:
            self._semaphore = anyio.Semaphore(self.size)
        with anyio.move_on_after(wait if wait != math.inf else None):
            await self._semaphore.acquire()
            return True
        return False

    def release(self) -> None:
        assert self._semaphore is not None  # released only after a successful acquire
        self._semaphore.release()
