"""The deadline counts from when the request entered our outermost layer, not from TimeoutMiddleware."""

from __future__ import annotations

import anyio

from asgi_resilience import ProblemDetailsMiddleware, TimeoutMiddleware, remaining_time
from asgi_resilience._asgi import ARRIVAL
from asgi_resilience.testing import ASGIHarness, http_scope
from asgi_resilience.types import ASGIApp, Receive, Scope, Send


def delayed(app: ASGIApp, seconds: float) -> ASGIApp:
    """An outer layer that takes time before passing the request on (a Redis call, a collapsed miss)."""

    async def layer(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(seconds)
        await app(scope, receive, send)

    return layer


async def test_time_spent_in_outer_layers_counts_against_the_timeout() -> None:
    seen: list[float | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(remaining_time())
        await anyio.sleep(0.25)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    stack = ProblemDetailsMiddleware(delayed(TimeoutMiddleware(app, timeout=0.4), 0.2))
    h = await ASGIHarness().run(stack, http_scope())
    assert h.status == 504  # 0.2 s outside + 0.25 s inside > 0.4 s
    assert seen[0] is not None and seen[0] < 0.25  # the handler saw what was really left

    # without an outer layer marking the arrival the same app fits in its 0.4 s
    h = await ASGIHarness().run(delayed(TimeoutMiddleware(app, timeout=0.4), 0.2), http_scope())
    assert h.status == 200


async def test_a_request_that_arrives_already_late_is_answered_at_once() -> None:
    called: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(True)
        await anyio.sleep(1)

    scope = http_scope()
    scope[ARRIVAL] = 0.0  # entered the stack long ago
    with anyio.fail_after(1):
        h = await ASGIHarness().run(TimeoutMiddleware(app, timeout=0.5), scope)
    assert h.status == 504
